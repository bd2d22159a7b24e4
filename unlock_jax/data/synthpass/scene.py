"""Procedural street scenes for synthpass: a road with sidewalks, terrain, buildings and objects.

A scene is a list of solids (``Prim``) plus a ground description. Things
(classes 11..17) are composites of solids sharing one ``thing`` index. The
sampler deliberately builds occlusions: parked vehicles in tight rows, people
in groups, and people/two-wheelers placed just behind poles, trunks, hedges and
fences as seen from the camera.
"""
import dataclasses

import numpy as np

from unlock_jax.data.synthpass import appearance
from unlock_jax.data.synthpass import geometry as geo

VOID = 255
ROAD, SIDEWALK, BUILDING, WALL, FENCE, POLE, LIGHT, SIGN, VEGETATION, TERRAIN, SKY = range(11)
PEDESTRIAN, CYCLIST, CAR, TRUCK, BUS, VAN, TWO_WHEELER = range(11, 18)


@dataclasses.dataclass
class Prim:
  """One solid: geometry (local frame), class, owning thing (-1 for stuff) and material."""
  kind: int
  center: np.ndarray
  rot: np.ndarray
  size: np.ndarray
  cls: int
  thing: int
  color: np.ndarray
  tex: str = "plain"
  param: tuple = ()
  radius: float = 0.0

  def __post_init__(self):
    self.center = np.asarray(self.center, np.float64)
    self.size = np.asarray(self.size, np.float64)
    self.radius = geo.bounding_radius(self.kind, self.size)


@dataclasses.dataclass
class Scene:
  """Solids, thing classes, ground bands, camera height and lighting of one scene."""
  prims: list
  thing_cls: list
  ground: dict
  cam_h: float
  light: dict
  pal: dict


class _Builder:
  """Accumulates solids and 2-D footprints (to keep solids from interpenetrating)."""

  def __init__(self, rng, pal, cam):
    self.rng, self.pal, self.cam = rng, pal, cam
    self.prims, self.thing_cls, self.boxes = [], [], []
    self.near_thing = 0.0 if cam == "pinhole" else 5.0

  def free(self, x0, x1, y0, y1, margin=0.15, thing=False):
    """True when the footprint [x0,x1]×[y0,y1] overlaps nothing placed and not the ego car.

    Things also keep ``near_thing`` metres from the camera: a car parked right
    beside a 360° camera would fill a quarter of the panorama.
    """
    if x1 > -1.4 and x0 < 1.4 and y1 > -3.0 and y0 < 3.0:
      return False
    if thing and np.hypot(max(x0, 0.0, -x1), max(y0, 0.0, -y1)) < self.near_thing:
      return False
    for a0, a1, b0, b1 in self.boxes:
      if x0 < a1 + margin and x1 > a0 - margin and y0 < b1 + margin and y1 > b0 - margin:
        return False
    return True

  def claim(self, x, y, hx, hy):
    self.boxes.append((x - hx, x + hx, y - hy, y + hy))

  def add(self, kind, center, size, cls, color, tex="plain", param=(), rot=None, thing=-1):
    rot = np.eye(3) if rot is None else rot
    self.prims.append(Prim(kind, center, rot, size, cls, thing, np.asarray(color, np.float64),
                           tex, param))

  def new_thing(self, cls):
    self.thing_cls.append(cls)
    return len(self.thing_cls) - 1

  # ---- things --------------------------------------------------------------------------------
  def vehicle(self, cls, x, y, yaw):
    """Adds a car / van / truck / bus at ground point (x, y) heading ``yaw``; False if blocked."""
    rng, pal = self.rng, self.pal
    if cls == CAR:
      length, width = rng.uniform(3.9, 4.7), rng.uniform(1.7, 1.9)
    elif cls == VAN:
      length, width = rng.uniform(4.8, 5.6), rng.uniform(1.9, 2.05)
    elif cls == TRUCK:
      length, width = rng.uniform(7.5, 9.5), rng.uniform(2.35, 2.5)
    else:
      length, width = rng.uniform(10.0, 12.5), rng.uniform(2.45, 2.55)
    c, s = abs(np.cos(yaw)), abs(np.sin(yaw))
    hx, hy = (c * width + s * length) / 2, (s * width + c * length) / 2
    if not self.free(x - hx, x + hx, y - hy, y + hy, thing=True):
      return False
    self.claim(x, y, hx, hy)
    t = self.new_thing(cls)
    rot = geo.rotation_z(yaw)
    fwd = rot[:, 1]
    key = {CAR: "car", VAN: "van", TRUCK: "truck", BUS: "bus"}[cls]
    body = appearance.jitter(rng, pal[key])
    wheel_r = 0.32 if cls in (CAR, VAN) else 0.5
    if cls == CAR:
      bh = rng.uniform(0.7, 0.85)
      self.add(geo.BOX, (x, y, 0.3 + bh / 2), (width / 2, length / 2, bh / 2), cls, body,
               "vehicle", (-1.0, -1.0), rot, t)
      ch = rng.uniform(0.45, 0.6)
      cc = np.array([x, y, 0.3 + bh + ch / 2]) - 0.08 * length * fwd
      self.add(geo.BOX, cc, (width * 0.45, length * 0.27, ch / 2), cls,
               pal["glass"] * rng.uniform(0.8, 1.2), "glass", (), rot, t)
    elif cls == VAN:
      h = rng.uniform(1.9, 2.3)
      self.add(geo.BOX, (x, y, 0.3 + h / 2), (width / 2, length / 2, h / 2), cls, body,
               "vehicle", (0.55, 0.85), rot, t)
    elif cls == TRUCK:
      cab_l, cab_h = 2.2, rng.uniform(2.5, 2.9)
      cc = np.array([x, y, 0.45 + cab_h / 2]) + (length / 2 - cab_l / 2) * fwd
      self.add(geo.BOX, cc, (width / 2, cab_l / 2, cab_h / 2), cls, body, "vehicle", (0.6, 0.9),
               rot, t)
      cargo_h = rng.uniform(2.8, 3.4)
      cargo = appearance.jitter(rng, pal["truck"] * 0.6 + 0.35)
      gc = np.array([x, y, 0.9 + cargo_h / 2]) - (cab_l / 2 + 0.15) * fwd
      self.add(geo.BOX, gc, (width / 2 + 0.02, (length - cab_l - 0.3) / 2, cargo_h / 2), cls,
               cargo, "vehicle", (-1.0, -1.0), rot, t)
    else:
      h = rng.uniform(2.8, 3.1)
      self.add(geo.BOX, (x, y, 0.35 + h / 2), (width / 2, length / 2, h / 2), cls, body,
               "vehicle", (0.45, 0.85), rot, t)
    axle = geo.axle_rotation(yaw)
    for f in (-0.33, 0.33):
      wc = np.array([x, y, wheel_r]) + f * length * fwd
      self.add(geo.CYLINDER, wc, (wheel_r, wheel_r, width / 2 + 0.03), cls, pal["tyre"], "plain",
               (), axle, t)
    return True

  def two_wheeler(self, x, y, yaw, check=True):
    """A bicycle/motorbike: frame box and two thin wheels. Returns its thing index or -1."""
    rng, pal = self.rng, self.pal
    length = rng.uniform(1.6, 2.0)
    c, s = abs(np.cos(yaw)), abs(np.sin(yaw))
    hx, hy = (c * 0.3 + s * length) / 2, (s * 0.3 + c * length) / 2
    if check and not self.free(x - hx, x + hx, y - hy, y + hy, margin=0.05, thing=True):
      return -1
    if check:
      self.claim(x, y, hx, hy)
    t = self.new_thing(TWO_WHEELER)
    rot = geo.rotation_z(yaw)
    fwd = rot[:, 1]
    col = appearance.jitter(rng, pal["two_wheeler"])
    r = rng.uniform(0.3, 0.36)
    self.add(geo.BOX, (x, y, r + 0.25), (0.08, length * 0.36, 0.2), TWO_WHEELER, col, "plain",
             (), rot, t)
    hb = np.array([x, y, r + 0.6]) + 0.34 * length * fwd
    self.add(geo.BOX, hb, (0.3, 0.05, 0.2), TWO_WHEELER, col * 0.8, "plain", (), rot, t)
    axle = geo.axle_rotation(yaw)
    for f in (-0.36, 0.36):
      self.add(geo.CYLINDER, np.array([x, y, r]) + f * length * fwd, (r, r, 0.05), TWO_WHEELER,
               pal["tyre"] * 1.5, "plain", (), axle, t)
    return t

  def person(self, x, y, cls=PEDESTRIAN, base_z=0.0, check=True):
    """A pedestrian (standing) or a cyclist rider (``base_z`` = saddle offset). False if blocked."""
    rng, pal = self.rng, self.pal
    if check and not self.free(x - 0.25, x + 0.25, y - 0.25, y + 0.25, margin=0.05, thing=True):
      return False
    if check:
      self.claim(x, y, 0.25, 0.25)
    t = self.new_thing(cls)
    s = rng.uniform(0.85, 1.1) if cls == PEDESTRIAN else 1.0
    top = appearance.jitter(rng, pal["pedestrian" if cls == PEDESTRIAN else "cyclist"])
    legs = appearance.jitter(rng, pal["legs"], 0.04)
    if cls == PEDESTRIAN:
      self.add(geo.BOX, (x, y, 0.43 * s), (0.16 * s, 0.11 * s, 0.43 * s), cls, legs, "plain", (),
               geo.rotation_z(rng.uniform(0, np.pi)), t)
      z_torso = 0.86 * s
    else:
      self.add(geo.BOX, (x, y, base_z + 0.25), (0.15, 0.12, 0.3), cls, legs, "plain", (), None, t)
      z_torso = base_z + 0.5
    self.add(geo.CYLINDER, (x, y, z_torso + 0.31 * s), (0.2 * s, 0.2 * s, 0.31 * s), cls, top,
             "cloth", (), None, t)
    head_col = pal["skin"] if cls == PEDESTRIAN else appearance.jitter(rng, pal["cyclist"] * 0.5)
    self.add(geo.ELLIPSOID, (x, y, z_torso + 0.62 * s + 0.13 * s), (0.11 * s, 0.11 * s, 0.13 * s),
             cls, appearance.jitter(rng, head_col, 0.03), "plain", (), None, t)
    return True

  def cyclist(self, x, y, yaw):
    """A rider (class 12) on a two-wheeler (class 17): two things, the rider in front."""
    if not self.free(x - 0.5, x + 0.5, y - 1.0, y + 1.0, margin=0.05, thing=True):
      return False
    self.claim(x, y, 0.5, 1.0)
    self.two_wheeler(x, y, yaw, check=False)
    self.person(x, y, CYCLIST, base_z=0.55, check=False)
    return True

  # ---- stuff ---------------------------------------------------------------------------------
  def pole(self, x, y, h, r):
    self.claim(x, y, r, r)
    self.add(geo.CYLINDER, (x, y, h / 2), (r, r, h / 2), POLE, appearance.jitter(
        self.rng, self.pal["pole"], 0.03), "plain")

  def tree(self, x, y):
    rng = self.rng
    if not self.free(x - 0.3, x + 0.3, y - 0.3, y + 0.3, margin=0.3):
      return False
    self.claim(x, y, 0.3, 0.3)
    h, r = rng.uniform(1.8, 3.2), rng.uniform(0.14, 0.26)
    self.add(geo.CYLINDER, (x, y, h / 2), (r, r, h / 2), VEGETATION,
             appearance.jitter(rng, self.pal["trunk"], 0.04), "bark")
    cr = rng.uniform(1.4, 2.6)
    self.add(geo.ELLIPSOID, (x, y, h + cr * 0.7), (cr, cr, cr * rng.uniform(0.8, 1.2)),
             VEGETATION, appearance.jitter(rng, self.pal["foliage"], 0.05), "foliage")
    return True


def _occlude_behind(b: _Builder, rng, x, y, band, pinhole):
  """Places a person or two-wheeler 1-3 m behind the point (x, y) along the camera ray."""
  d = np.hypot(x, y)
  if d < 2:
    return
  ux, uy = x / d, y / d
  for _ in range(4):
    k = d + rng.uniform(1.0, 3.0)
    px, py = ux * k + rng.uniform(-0.15, 0.15), uy * k
    if not band[0] < px < band[1] or (pinhole and py < 3):
      continue
    if rng.uniform() < 0.75:
      if b.person(px, py):
        return
    elif b.two_wheeler(px, py, rng.uniform(0, 2 * np.pi)) >= 0:
      return


def sample_scene(rng: np.random.Generator, camera: str, domain: str, shift: float) -> Scene:
  """Samples one street scene for a ``camera`` in {"pinhole", "equirect"}."""
  pinhole = camera == "pinhole"
  pal = appearance.palette(domain, shift)
  b = _Builder(rng, pal, camera)
  cam_h = 1.55 if pinhole else rng.uniform(2.0, 2.2)
  n_lanes = int(rng.integers(2, 5))
  lane_w = rng.uniform(3.1, 3.6)
  rw = n_lanes * lane_w / 2
  cam_lane = int(rng.integers(0, n_lanes))
  xc = -(cam_lane + 0.5 - n_lanes / 2) * lane_w
  sw = rng.uniform(1.8, 4.0, 2)
  tw = np.where(rng.uniform(size=2) < 0.5, 0.0, rng.uniform(1.5, 6.0, 2))
  curb = (xc - rw, xc + rw)
  outer = (curb[0] - sw[0], curb[1] + sw[1])
  front = (outer[0] - tw[0], outer[1] + tw[1])
  y0, y1 = (-5.0, 150.0) if pinhole else (-110.0, 110.0)
  ty0, ty1 = (3.5, 60.0) if pinhole else (-45.0, 45.0)
  cross = None
  if rng.uniform() < 0.5:
    cy = rng.uniform(18, 55) if pinhole else rng.uniform(-45, 45)
    if abs(cy) < 12:
      cy += 24 * np.sign(cy + 1e-3)
    cross = (cy, cy + rng.uniform(8, 14))
  ground = dict(xc=xc, rw=rw, lane_w=lane_w, n_lanes=n_lanes, curb=curb, outer=outer, cross=cross,
                road=appearance.jitter(rng, pal["road"], 0.02),
                sidewalk=appearance.jitter(rng, pal["sidewalk"], 0.04),
                terrain=appearance.jitter(rng, pal["terrain"], 0.04), marking=pal["marking"],
                tile=rng.uniform(0.4, 0.8) / float(pal["tex"]), tex=float(pal["tex"]))

  def in_cross(ya, yb, m=0.0):
    return cross is not None and yb > cross[0] - m and ya < cross[1] + m

  # Buildings line both sides, with gaps (terrain shows through) between some.
  for side in (-1, 1):
    y = y0
    while y < y1:
      length = rng.uniform(8, 26)
      if in_cross(y, y + length):
        y = cross[1] + 0.5
        continue
      if rng.uniform() >= 0.22:
        depth, h = rng.uniform(8, 14), rng.uniform(6, 24)
        x = front[side > 0] + side * (depth / 2 + rng.uniform(0, 0.8))
        fam = pal["building"][int(rng.integers(0, len(pal["building"])))]
        b.add(geo.BOX, (x, y + length / 2, h / 2), (depth / 2, length / 2, h / 2), BUILDING,
              appearance.jitter(rng, fam, 0.04), "facade",
              (rng.uniform(1.6, 3.2) * float(pal["win"]), rng.uniform(2.8, 3.6),
               float(rng.uniform())))
      y += length + rng.uniform(0, 1.0)

  # Walls and fences along the outer edge of the sidewalk (they enclose terrain/gardens).
  for side in (-1, 1):
    for _ in range(int(rng.integers(1, 4))):
      ya = rng.uniform(ty0, ty1)
      length = rng.uniform(4, 16)
      if in_cross(ya, ya + length, 1.0):
        continue
      x = outer[side > 0] + side * 0.2
      if rng.uniform() < 0.5:
        h, th = rng.uniform(0.8, 2.2), rng.uniform(0.15, 0.3)
        b.add(geo.BOX, (x, ya + length / 2, h / 2), (th / 2, length / 2, h / 2), WALL,
              appearance.jitter(rng, pal["wall"], 0.04), "blocks")
      else:
        h = rng.uniform(1.0, 1.8)
        b.add(geo.BOX, (x, ya + length / 2, h / 2), (0.04, length / 2, h / 2), FENCE,
              appearance.jitter(rng, pal["fence"], 0.05), "slats", (rng.uniform(0.12, 0.25),))
      b.claim(x, ya + length / 2, 0.2, length / 2)

  # Poles (some carrying traffic lights or signs) near the curb; trees and hedges further out.
  occluders = []
  for side in (-1, 1):
    y = y0 + rng.uniform(0, 10)
    while y < y1:
      x = curb[side > 0] + side * rng.uniform(0.35, 0.7)
      if not in_cross(y, y, 1.0) and b.free(x - 0.2, x + 0.2, y - 0.2, y + 0.2):
        h, r = rng.uniform(4.5, 8.0), rng.uniform(0.08, 0.14)
        b.pole(x, y, h, r)
        occluders.append((x, y, side))
        u = rng.uniform()
        if u < 0.4:
          # A mast arm over the road carrying the light head, like real signal masts.
          arm = rng.uniform(1.0, 3.0)
          hz = min(h, 6.0)
          b.add(geo.BOX, (x - side * arm / 2, y, hz - 0.1), (arm / 2, 0.05, 0.05), POLE,
                pal["pole"], "plain")
          b.add(geo.BOX, (x - side * arm, y, hz - 0.7), (0.22, 0.22, 0.6), LIGHT,
                pal["light_body"], "lamps", (float(rng.uniform()),))
        elif u < 0.72:
          z = rng.uniform(2.2, 3.0)
          w = rng.uniform(0.35, 0.55)
          b.add(geo.BOX, (x, y - 0.1 * np.sign(y + 1e-3), z), (w, 0.03, w), SIGN,
                appearance.jitter(rng, pal["sign"], 0.05), "sign")
      y += rng.uniform(7, 20)
    y = y0 + rng.uniform(0, 8)
    while y < y1:
      if not in_cross(y, y, 2.0):
        if tw[int(side > 0)] > 0 and rng.uniform() < 0.5:
          x = outer[side > 0] + side * rng.uniform(0.8, max(tw[int(side > 0)] - 0.5, 0.9))
        else:
          x = outer[side > 0] - side * rng.uniform(0.5, 0.9)
        if rng.uniform() < 0.6:
          if b.tree(x, y):
            occluders.append((x, y, side))
        elif b.free(x - 0.6, x + 0.6, y - 1.5, y + 1.5):
          hl, hh = rng.uniform(1.0, 3.0), rng.uniform(0.5, 0.8)
          b.add(geo.ELLIPSOID, (x, y, hh * 0.8), (0.6, hl, hh), VEGETATION,
                appearance.jitter(rng, pal["foliage"] * 1.1, 0.05), "foliage")
          b.claim(x, y, 0.6, hl)
          occluders.append((x, y, side))
      y += rng.uniform(6, 16)

  # Things. Parked vehicles in tight rows along both curbs (they occlude each other).
  for side in (-1, 1):
    if rng.uniform() < 0.2:
      continue
    x = curb[side > 0] - side * rng.uniform(1.0, 1.3)
    y = ty0 + rng.uniform(0, 6)
    while y < ty1:
      cls = rng.choice([CAR, VAN, TRUCK, BUS], p=[0.6, 0.22, 0.12, 0.06])
      yaw = 0.0 if rng.uniform() < 0.5 else np.pi
      half = {CAR: 2.4, VAN: 2.9, TRUCK: 4.6, BUS: 6.0}[cls]
      if rng.uniform() < 0.7 and not in_cross(y, y + 2 * half, 1.0):
        b.vehicle(cls, x, y + half, yaw)
        y += 2 * half + rng.uniform(0.3, 2.0)
      else:
        y += rng.uniform(3, 12)
  # Moving traffic in the lanes: the near side heads forward, the far side backwards.
  for lane in range(n_lanes):
    lx = xc - rw + (lane + 0.5) * lane_w
    for _ in range(int(rng.integers(0, 3))):
      y = rng.uniform(ty0 + 4, ty1)
      if not pinhole and abs(y) < 8:
        y += 10 * np.sign(y + 1e-3)
      yaw = 0.0 if lx > xc else np.pi
      u = rng.uniform()
      if u < 0.14:
        b.cyclist(lx + rng.uniform(-0.6, 0.6), y, yaw)
      else:
        cls = [CAR, VAN, TRUCK, BUS][int(np.searchsorted([0.55, 0.72, 0.86], u))]
        b.vehicle(cls, lx + rng.uniform(-0.3, 0.3), y, yaw)
  # Cyclists near the curbs.
  for _ in range(int(rng.integers(2, 5))):
    for _ in range(5):  # retry: the curb lane is often taken by parked vehicles
      side = 1 if rng.uniform() < 0.5 else -1
      x = curb[side > 0] - side * rng.uniform(0.6, 2.5)
      y = rng.uniform(ty0 + 2, ty1 * 0.45)
      if not pinhole and rng.uniform() < 0.5:
        y = -y
      if b.cyclist(x, y, 0.0 if side > 0 else np.pi):
        break
  # Pedestrians on the sidewalks, partly in groups; a few crossing the road.
  for side in (-1, 1):
    for _ in range(int(rng.integers(1, 4))):
      gy = rng.uniform(ty0, ty1 * 0.7)
      gx = rng.uniform(min(curb[side > 0], outer[side > 0]) + 0.4,
                       max(curb[side > 0], outer[side > 0]) - 0.4)
      for _ in range(int(rng.integers(1, 4))):
        b.person(gx + rng.uniform(-0.8, 0.8), gy + rng.uniform(-1.5, 1.5))
  for _ in range(int(rng.integers(0, 3))):
    y = rng.uniform(max(ty0, 0.0) + 3, 25)
    behind = not pinhole and rng.uniform() < 0.5
    b.person(xc + rng.uniform(-rw, rw), -y if behind else y)
  # Parked two-wheelers on the sidewalk.
  for _ in range(int(rng.integers(1, 5))):
    side = 1 if rng.uniform() < 0.5 else -1
    b.two_wheeler(curb[side > 0] + side * rng.uniform(0.8, 1.4), rng.uniform(ty0, ty1 * 0.6),
                  rng.uniform(0, 2 * np.pi))
  # Objects hidden behind stuff (poles, trunks, hedges) as seen from the camera.
  visible = [o for o in occluders if ty0 < o[1] < ty1 * 0.6 and np.hypot(o[0], o[1]) > 4]
  rng.shuffle(visible)
  for x, y, side in visible[:int(rng.integers(2, 5))]:
    band = (min(curb[side > 0], front[side > 0]), max(curb[side > 0], front[side > 0]))
    _occlude_behind(b, rng, x, y, band, pinhole)

  if not pinhole:
    # The ego vehicle's roof below the roof-mounted panoramic camera: labelled void.
    roof = cam_h - 1.0
    b.add(geo.BOX, (0.0, -0.3, roof / 2), (0.9, 2.0, roof / 2), VOID, pal["void"], "vehicle",
          (-1.0, -1.0))
  light = appearance.lighting(rng, domain, shift)
  return Scene(b.prims, b.thing_cls, ground, cam_h, light, pal)
