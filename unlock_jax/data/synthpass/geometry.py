"""Camera rays and ray/solid intersections for the synthpass ray caster (vectorised numpy).

World frame: X right, Y forward, Z up, metres. A solid is a box, a vertical
cylinder or an ellipsoid in its own local frame (centre + rotation); rays are
moved into that frame, intersected there, and normals rotated back.
"""
import numpy as np

BOX, CYLINDER, ELLIPSOID = 0, 1, 2
_EPS = 1e-4  # smallest accepted hit distance (m); the camera is never inside a solid


def pinhole_rays(width: int, height: int, focal: float) -> np.ndarray:
  """Unit ray directions [H*W,3] of a forward-looking (+Y) pinhole camera, row-major."""
  u = (np.arange(width, dtype=np.float64) + 0.5 - width / 2) / focal
  v = (np.arange(height, dtype=np.float64) + 0.5 - height / 2) / focal
  uu, vv = np.meshgrid(u, v)
  d = np.stack([uu, np.ones_like(uu), -vv], -1).reshape(-1, 3)
  return d / np.linalg.norm(d, axis=1, keepdims=True)


def equirect_rays(width: int, height: int) -> np.ndarray:
  """Unit ray directions [H*W,3] of a 360° equirectangular camera, row-major.

  Column 0 looks backwards (azimuth -180°), the centre column forwards (+Y).
  Pixels are square in angle (360°/width), so the vertical band is
  ``±180·height/width`` degrees around the horizon (±35.2° for 2048×400).
  """
  step = 2 * np.pi / width
  az = (np.arange(width, dtype=np.float64) + 0.5) * step - np.pi
  el = (height / 2 - (np.arange(height, dtype=np.float64) + 0.5)) * step
  azz, ell = np.meshgrid(az, el)
  d = np.stack([np.sin(azz) * np.cos(ell), np.cos(azz) * np.cos(ell), np.sin(ell)], -1)
  return d.reshape(-1, 3)


def rotation_z(yaw: float) -> np.ndarray:
  """Rotation matrix (local → world columns) for a yaw about +Z."""
  c, s = np.cos(yaw), np.sin(yaw)
  return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def axle_rotation(yaw: float) -> np.ndarray:
  """Rotation that lays a cylinder's local Z axis horizontally, across a vehicle of this yaw."""
  c, s = np.cos(yaw), np.sin(yaw)
  # Local z → world (c, s, 0) (the vehicle's lateral axis), local x → forward, local y → up.
  return np.array([[-s, 0.0, c], [c, 0.0, s], [0.0, 1.0, 0.0]])


def bounding_radius(kind: int, size: np.ndarray) -> float:
  """Radius of a sphere around the solid's centre that contains it."""
  size = np.asarray(size, np.float64)
  if kind == BOX:
    return float(np.linalg.norm(size))
  if kind == CYLINDER:
    return float(np.hypot(size[0], size[2]))
  return float(size.max())


def intersect(kind: int, size: np.ndarray, origin: np.ndarray, dirs: np.ndarray):
  """First hit of rays with solids of one kind, each ray in its solid's local frame.

  Args:
    kind: BOX (size = half extents), CYLINDER (size = (r, r, half height), axis
      local Z) or ELLIPSOID (size = radii).
    size: [3] or [n,3] float, per ray.
    origin: [3] or [n,3] ray origins, per ray.
    dirs: [n,3] ray directions.

  Returns:
    (t [n] with inf for misses, local normal [n,3], local hit point [n,3]).
  """
  d = np.asarray(dirs, np.float64)
  n = d.shape[0]
  o = np.broadcast_to(np.asarray(origin, np.float64), d.shape)
  sz = np.broadcast_to(np.asarray(size, np.float64), d.shape)
  normal = np.zeros((n, 3))
  rows = np.arange(n)
  if kind == BOX:
    dd = np.where(np.abs(d) < 1e-12, 1e-12, d)
    inv = 1.0 / dd
    t1 = (-sz - o) * inv
    t2 = (sz - o) * inv
    tn = np.minimum(t1, t2)
    axis = tn.argmax(1)
    tnear = tn[rows, axis]
    tfar = np.maximum(t1, t2).min(1)
    hit = (tnear <= tfar) & (tnear > _EPS)
    t = np.where(hit, tnear, np.inf)
    normal[rows, axis] = -np.sign(dd[rows, axis])
  elif kind == CYLINDER:
    r, hh = sz[:, 0], sz[:, 2]
    a = d[:, 0] ** 2 + d[:, 1] ** 2
    b = 2 * (o[:, 0] * d[:, 0] + o[:, 1] * d[:, 1])
    c = o[:, 0] ** 2 + o[:, 1] ** 2 - r * r
    disc = b * b - 4 * a * c
    ok = (disc >= 0) & (a > 1e-12)
    ts = (-b - np.sqrt(np.where(ok, disc, 0.0))) / np.where(ok, 2 * a, 1.0)
    zs = o[:, 2] + ts * d[:, 2]
    side_ok = ok & (ts > _EPS) & (np.abs(zs) <= hh)
    t = np.where(side_ok, ts, np.inf)
    is_cap = np.zeros(n, bool)
    dz = np.where(np.abs(d[:, 2]) < 1e-12, 1e-12, d[:, 2])
    for sgn in (1.0, -1.0):
      tc = (sgn * hh - o[:, 2]) / dz
      px = o[:, 0] + tc * d[:, 0]
      py = o[:, 1] + tc * d[:, 1]
      cap_ok = (tc > _EPS) & (px * px + py * py <= r * r) & (tc < t)
      t = np.where(cap_ok, tc, t)
      normal[cap_ok] = (0.0, 0.0, sgn)
      is_cap |= cap_ok
    p = o + np.where(np.isfinite(t), t, 0.0)[:, None] * d
    side = np.isfinite(t) & ~is_cap
    normal[side, :2] = p[side, :2] / r[side, None]
    return t, normal, p
  else:
    os_ = o / sz
    ds = d / sz
    a = (ds * ds).sum(1)
    b = 2 * (ds * os_).sum(1)
    c = (os_ * os_).sum(1) - 1.0
    disc = b * b - 4 * a * c
    ok = disc >= 0
    t = (-b - np.sqrt(np.where(ok, disc, 0.0))) / (2 * a)
    ok &= t > _EPS
    t = np.where(ok, t, np.inf)
    p = o + np.where(ok, t, 0.0)[:, None] * d
    nr = p / (sz * sz)
    normal = nr / np.maximum(np.linalg.norm(nr, axis=1, keepdims=True), 1e-12)
    return t, normal, p
  p = o + np.where(np.isfinite(t), t, 0.0)[:, None] * d
  return t, normal, p
