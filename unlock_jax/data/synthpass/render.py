"""Ray-cast rendering of a synthpass scene: depth buffer, exact labels, amodal masks, shading.

All work is vectorised over pixels; the Python loops run over solids (a few
hundred per scene) only to find each solid's candidate pixels (its exact
image-space bounds), then one intersection call per solid kind tests all
(solid, pixel) pairs and a sort resolves the depth buffer.
"""
import functools

import numpy as np

from unlock_jax.data.synthpass import appearance
from unlock_jax.data.synthpass import geometry as geo
from unlock_jax.data.synthpass import scene as scn

GROUND = -2
SKY = -1
MAX_DIST = 400.0
KITTI_FOCAL = 552.554261  # KITTI-360 perspective fx at 1408×376 (≈104° hfov, ≈38° vfov)


@functools.lru_cache(maxsize=8)
def camera_rays(camera: str, width: int, height: int) -> np.ndarray:
  """Cached unit ray directions [H*W,3] for a camera kind at a size (read-only)."""
  if camera == "pinhole":
    rays = geo.pinhole_rays(width, height, KITTI_FOCAL * width / 1408.0)
  elif camera == "equirect":
    rays = geo.equirect_rays(width, height)
  else:
    raise ValueError(f"unknown camera {camera!r}, expected 'pinhole' or 'equirect'")
  rays.flags.writeable = False
  return rays


def _ground_class(ground: dict, x: np.ndarray, y: np.ndarray) -> np.ndarray:
  """Road / sidewalk / terrain bands across the street, and a road band for a cross street."""
  cls = np.full(x.shape, scn.TERRAIN, np.uint8)
  cls[(x > ground["outer"][0]) & (x < ground["outer"][1])] = scn.SIDEWALK
  cls[(x > ground["curb"][0]) & (x < ground["curb"][1])] = scn.ROAD
  if ground["cross"] is not None:
    cls[(y > ground["cross"][0]) & (y < ground["cross"][1])] = scn.ROAD
  return cls


def _ground_color(ground: dict, cls: np.ndarray, p: np.ndarray) -> np.ndarray:
  """Asphalt with dashed lane markings, tiled sidewalk, mottled terrain."""
  x, y = p[:, 0], p[:, 1]
  col = np.empty((len(x), 3))
  n1 = appearance.hash_noise(p, 3.0 * ground["tex"])[:, None]
  n2 = appearance.hash_noise(p, 0.7 * ground["tex"], 5.0)[:, None]
  road = cls == scn.ROAD
  col[road] = ground["road"] * (0.9 + 0.12 * n1[road] + 0.06 * n2[road])
  rel = (x - ground["curb"][0]) / ground["lane_w"]
  lane_line = (np.abs(rel - np.round(rel)) * ground["lane_w"] < 0.09) & (
      np.round(rel) > 0) & (np.round(rel) < ground["n_lanes"]) & ((y / 3.0) % 2 < 1)
  if ground["cross"] is not None:
    lane_line &= ~((y > ground["cross"][0]) & (y < ground["cross"][1]))
  col[road & lane_line] = ground["marking"]
  side = cls == scn.SIDEWALK
  t = ground["tile"]
  grout = ((x / t) % 1 < 0.07) | ((y / t) % 1 < 0.07)
  col[side] = ground["sidewalk"] * (0.95 + 0.08 * n1[side] - 0.18 * grout[side, None])
  ter = cls == scn.TERRAIN
  col[ter] = ground["terrain"] * (0.75 + 0.35 * n1[ter] + 0.15 * n2[ter])
  return col


def _material(pr: scn.Prim, p: np.ndarray, n: np.ndarray, pal: dict) -> tuple:
  """Texture colour [n,3] at local hit points ``p`` with local normals ``n``; plus emissive mask."""
  col = np.broadcast_to(pr.color, p.shape).copy()
  emissive = np.zeros(len(p), bool)
  zg = p[:, 2] + pr.size[2]  # height above the solid's bottom
  vertical = np.abs(n[:, 2]) < 0.5
  u = np.where(np.abs(n[:, 0]) > 0.5, p[:, 1], p[:, 0])  # coordinate along a vertical face
  tex = pr.tex
  fq = float(pal["tex"])  # texture frequency: part of the domain's appearance
  if tex == "plain":
    col *= 0.94 + 0.12 * appearance.hash_noise(p, 4.0 * fq)[:, None]
  elif tex == "facade":
    sx, sz, style = pr.param
    win = vertical & ((u / sx) % 1 > 0.22) & ((u / sx) % 1 < 0.78) & ((zg / sz) % 1 > 0.3) & (
        (zg / sz) % 1 < 0.8) & (zg > 1.2)
    glass = pal["window"] * (0.8 + 0.5 * style)
    col[win] = glass * (0.8 + 0.4 * appearance.hash_noise(p[win], 1.0 / sx)[:, None])
    col[~win] *= 0.93 + 0.1 * appearance.hash_noise(p[~win], 2.0 * fq)[:, None]
  elif tex == "blocks":
    row = np.floor(zg / 0.4)
    mortar = ((zg / 0.4) % 1 < 0.1) | (((u + 0.4 * (row % 2)) / 0.8) % 1 < 0.06)
    col *= (1.0 - 0.3 * mortar)[:, None]
  elif tex == "slats":
    (pitch,) = pr.param
    gap = ((u / pitch) % 1 < 0.35) & (zg < 2 * pr.size[2] - 0.12)
    col *= (1.0 - 0.45 * gap)[:, None]
  elif tex == "foliage":
    f = appearance.hash_noise(p, 5.0 * fq)[:, None]
    col *= 0.65 + 0.6 * f
    col[:, 1] *= 1.0 + 0.15 * appearance.hash_noise(p, 2.0 * fq, 7.0)
  elif tex == "bark":
    col *= 0.8 + 0.3 * appearance.hash_noise(p * np.array([6.0, 6.0, 1.0]), 4.0 * fq)[:, None]
  elif tex == "cloth":
    col *= 0.85 + 0.2 * ((p[:, 2] * 8) % 1 < 0.5)[:, None]
  elif tex == "vehicle":
    lo, hi = pr.param
    if lo >= 0:
      zr = zg / (2 * pr.size[2])
      band = vertical & (zr > lo) & (zr < hi)
      col[band] = pal["glass"] * (0.9 + 0.3 * np.abs(n[band, 0:1]))
  elif tex == "glass":
    col *= 0.8 + 0.4 * (n[:, 2:3] > 0.5)
  elif tex == "lamps":
    # Red, amber and green discs from top to bottom; the lit one is brighter.
    for k, lamp in enumerate(((1.0, 0.1, 0.05), (1.0, 0.75, 0.05), (0.1, 1.0, 0.3))):
      zc = pr.size[2] * (0.5 - k * 0.5)
      on = vertical & (u ** 2 + (p[:, 2] - zc) ** 2 < 0.12 ** 2)
      col[on] = np.asarray(lamp) * (0.5 + 0.5 * (k == int(pr.param[0] * 3)))
      emissive |= on
  elif tex == "sign":
    border = (np.abs(u) > 0.8 * pr.size[0]) | (np.abs(p[:, 2]) > 0.8 * pr.size[2])
    col[border & vertical] = (0.95, 0.95, 0.95)
  return col, emissive


def _pixel_range(lo: float, hi: float, n: int) -> tuple:
  """Clipped half-open pixel range covering the continuous interval [lo, hi] (pixel units)."""
  return max(int(np.floor(lo)) - 1, 0), min(int(np.ceil(hi)) + 2, n)


_SIGNS = np.array([[sx, sy, sz] for sx in (-1, 1) for sy in (-1, 1) for sz in (-1, 1)], float)


def _rect(r0: int, r1: int, cols: np.ndarray, width: int):
  """Flat pixel indices of rows [r0, r1) × ``cols`` (None when empty)."""
  if r1 <= r0 or cols.size == 0:
    return None
  return (np.arange(r0, r1)[:, None] * width + cols[None, :]).ravel()


def _pinhole_rect(us, vs, width: int, height: int):
  """Pixels covering tangent-plane bounds (u = x/y, v = -z/y) of a pinhole camera."""
  f = KITTI_FOCAL * width / 1408.0
  c0, c1 = _pixel_range(min(us) * f + width / 2, max(us) * f + width / 2, width)
  r0, r1 = _pixel_range(min(vs) * f + height / 2, max(vs) * f + height / 2, height)
  return _rect(r0, r1, np.arange(c0, c1), width)


def _equirect_rect(az_lo, az_hi, el_lo, el_hi, width: int, height: int):
  """Pixels covering an azimuth × elevation box of an equirectangular camera (wrapping)."""
  step = 2 * np.pi / width
  r0, r1 = _pixel_range(height / 2 - el_hi / step - 0.5, height / 2 - el_lo / step - 0.5, height)
  c_lo = int(np.floor((az_lo + np.pi) / step - 0.5)) - 1
  c_hi = int(np.ceil((az_hi + np.pi) / step - 0.5)) + 2
  cols = np.arange(width) if c_hi - c_lo >= width else np.arange(c_lo, c_hi) % width
  return _rect(r0, r1, cols, width)


def _candidates(camera: str, width: int, height: int, pr: scn.Prim, origin: np.ndarray,
                rays: np.ndarray):
  """Flat indices of the pixels whose rays may hit a solid (None: none can).

  Upright solids are bounded by the corners of their local box (the image of
  a convex solid lies within its vertices' bounds, in tangent-plane
  coordinates for the pinhole camera and in azimuth for the equirectangular
  one; elevation uses the footprint's nearest and farthest distances).
  Others (tilted wheels) use their bounding sphere.
  """
  rel = pr.center - origin
  if pr.rot[2, 2] == 1.0:  # upright: bound the solid by its local box (cylinders: r, r, h/2)
    half = pr.size
    if camera == "pinhole":
      corners = rel + (_SIGNS * half) @ pr.rot.T
      if corners[:, 1].max() <= 0.05:
        return None
      if corners[:, 1].min() <= 0.05 and pr.rot[0, 0] == 1.0:
        # Axis-aligned and crossing the image plane: clip its box to the visible side.
        lo, hi = rel - half, rel + half
        lo[1] = 0.05
        corners = np.where(_SIGNS > 0, hi, lo)
      if corners[:, 1].min() > 0.0:
        return _pinhole_rect(corners[:, 0] / corners[:, 1], -corners[:, 2] / corners[:, 1],
                             width, height)
    else:
      corners = rel + (_SIGNS * half) @ pr.rot.T
      o_l = pr.rot.T @ -rel
      q = np.clip(o_l[:2], -half[:2], half[:2])
      d_min = float(np.hypot(*(o_l[:2] - q)))
      d_max = float(np.hypot(corners[:, 0], corners[:, 1]).max())
      z_lo, z_hi = corners[:, 2].min(), corners[:, 2].max()
      if d_min > 1e-3:
        az_c = np.arctan2(rel[0], rel[1])
        daz = (np.arctan2(corners[:, 0], corners[:, 1]) - az_c + np.pi) % (2 * np.pi) - np.pi
        el_hi = np.arctan2(z_hi, d_min if z_hi >= 0 else d_max)
        el_lo = np.arctan2(z_lo, d_min if z_lo < 0 else d_max)
        return _equirect_rect(az_c + daz.min(), az_c + daz.max(), el_lo, el_hi, width, height)
      if z_hi < 0:  # right below the camera (the ego vehicle): bottom rows only
        return _equirect_rect(-np.pi, np.pi, -np.pi / 2, np.arctan2(z_hi, d_max), width, height)
  radius = pr.radius
  x, y, z = rel
  if camera == "pinhole":
    if y + radius <= 0:
      return None
    if y - radius < 0.05:
      # Straddles the image plane: fall back to a cone test over all rays.
      dist = float(np.linalg.norm(rel))
      if dist <= radius:
        return np.arange(rays.shape[0])
      cos_lim = np.sqrt(1.0 - (radius / dist) ** 2) - 1e-3
      return np.flatnonzero(rays @ (rel / dist) >= cos_lim)
    ys = (y - radius, y + radius)
    us = [(x + sx * radius) / yy for sx in (-1, 1) for yy in ys]
    vs = [(-z + sz * radius) / yy for sz in (-1, 1) for yy in ys]
    return _pinhole_rect(us, vs, width, height)
  dh = float(np.hypot(x, y))
  dist = float(np.sqrt(dh * dh + z * z))
  if dist <= radius * 1.01 or dh <= radius * 1.01:
    return _rect(0, height, np.arange(width), width)
  az = np.arctan2(x, y)
  half = np.arcsin(radius / dh)
  ang = np.arcsin(radius / dist)
  el = np.arctan2(z, dh)
  return _equirect_rect(az - half, az + half, el - ang, el + ang, width, height)


def render(scene: scn.Scene, camera: str, width: int, height: int) -> dict:
  """Renders a scene.

  Returns:
    dict with ``image`` float [H,W,3] in [0,1] (before the sensor model),
    ``semantic`` uint8 [H,W] (255 on the ego vehicle), ``thing`` int32 [H,W]
    (thing index or -1), ``amodal`` list of bool [H,W] (one per thing, the
    thing rendered alone), ``depth`` float32 [H,W] (inf for sky).
  """
  rays = camera_rays(camera, width, height)
  npx = rays.shape[0]
  origin = np.array([0.0, 0.0, scene.cam_h])
  prims = scene.prims
  prim_thing = np.array([p.thing for p in prims] + [-1], np.int32)
  # Candidate (solid, pixel) pairs from each solid's image bounds, moved into the solid's
  # frame, then one vectorised intersection per solid kind (per-call overhead dominates
  # otherwise).
  groups = {geo.BOX: [], geo.CYLINDER: [], geo.ELLIPSOID: []}
  for k, pr in enumerate(prims):
    sel = _candidates(camera, width, height, pr, origin, rays)
    if sel is not None and sel.size:
      groups[pr.kind].append((sel, k, rays[sel] @ pr.rot, pr.rot.T @ (origin - pr.center),
                              pr.size))
  depth = np.full(npx, np.inf)
  owner = np.full(npx, SKY, np.int32)
  normal = np.zeros((npx, 3))  # local frame of the owning solid until shading
  local = np.zeros((npx, 3))
  masks = np.zeros((len(scene.thing_cls), npx), bool)
  hits = []
  for kind, grp in groups.items():
    if not grp:
      continue
    counts = [g[0].size for g in grp]
    px_k = np.concatenate([g[0] for g in grp])
    pid_k = np.repeat(np.array([g[1] for g in grp], np.int32), counts)
    d_local = np.concatenate([g[2] for g in grp])
    o_local = np.repeat(np.array([g[3] for g in grp]), counts, axis=0)
    size = np.repeat(np.array([g[4] for g in grp]), counts, axis=0)
    t, n_local, p_local = geo.intersect(kind, size, o_local, d_local)
    ok = np.isfinite(t)
    hits.append((t[ok], px_k[ok], pid_k[ok], n_local[ok], p_local[ok]))
  if hits:
    t, hp, hk, hn, hl = (np.concatenate(a) for a in zip(*hits))
    th = prim_thing[hk]
    masks[th[th >= 0], hp[th >= 0]] = True
    order = np.lexsort((t, hp))
    first = np.ones(order.size, bool)
    first[1:] = hp[order][1:] != hp[order][:-1]
    win = order[first]
    idx = hp[win]
    depth[idx] = t[win]
    owner[idx] = hk[win]
    normal[idx] = hn[win]
    local[idx] = hl[win]
  dz = rays[:, 2]
  with np.errstate(divide="ignore"):
    tg = np.where(dz < -1e-6, -scene.cam_h / np.where(dz < -1e-6, dz, -1.0), np.inf)
  tg[tg > MAX_DIST] = np.inf
  closer = tg < depth
  depth[closer] = tg[closer]
  owner[closer] = GROUND
  normal[closer] = (0.0, 0.0, 1.0)
  local[closer] = origin + tg[closer, None] * rays[closer]

  prim_cls = np.array([p.cls for p in scene.prims] + [0], np.int32)
  semantic = np.full(npx, scn.SKY, np.uint8)
  thing = np.full(npx, -1, np.int32)
  solid = owner >= 0
  semantic[solid] = prim_cls[owner[solid]]
  thing[solid] = prim_thing[owner[solid]]
  gnd = owner == GROUND
  semantic[gnd] = _ground_class(scene.ground, local[gnd, 0], local[gnd, 1])

  # Shading: group pixels by owner so every solid's texture is computed once, vectorised.
  pal, light = scene.pal, scene.light
  color = np.zeros((npx, 3))
  order = np.argsort(owner, kind="stable")
  keys = owner[order]
  starts = np.searchsorted(keys, np.arange(-2, len(scene.prims) + 1))
  emissive = np.zeros(npx, bool)
  for j in range(len(starts) - 1):
    idx = order[starts[j]:starts[j + 1]]
    if idx.size == 0:
      continue
    k = j - 2
    if k == GROUND:
      color[idx] = _ground_color(scene.ground, semantic[idx], local[idx])
    elif k == SKY:
      e = np.clip(rays[idx, 2] * 2.5, 0, 1)[:, None]
      color[idx] = (1 - e) * pal["sky_horizon"] + e * pal["sky_zenith"]
      emissive[idx] = True
    else:
      pr = scene.prims[k]
      n_local = normal[idx]
      normal[idx] = n_local @ pr.rot.T
      col, emi = _material(pr, local[idx], n_local, pal)
      color[idx] = col
      emissive[idx] = emi
  lam = np.clip(normal @ light["sun"], 0, None)
  shade = light["ambient"] + light["diffuse"] * lam
  color = np.where(emissive[:, None], color, color * shade[:, None])
  fog = 1.0 - np.exp(-np.where(np.isfinite(depth), depth, 0.0) / light["fog"])
  fog[~np.isfinite(depth)] = 0.0
  color = (1 - fog[:, None]) * color + fog[:, None] * pal["sky_horizon"]

  return dict(image=color.reshape(height, width, 3), semantic=semantic.reshape(height, width),
              thing=thing.reshape(height, width), amodal=list(masks.reshape(-1, height, width)),
              depth=depth.reshape(height, width).astype(np.float32))
