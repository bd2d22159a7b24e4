"""Colours, textures, lighting and sensor effects of the two synthpass domains.

Every class has its own colour family (with per-instance jitter) and texture,
so a tiny model can separate the classes within a domain. The target domain
applies a global palette transform (hue rotation, desaturation, brightness),
a different lighting distribution, a colour cast, stronger noise and blur,
all scaled by ``domain_shift``.
"""
import numpy as np

# Base RGB in [0,1] per material family. Thing classes get distinct hues.
BASE = {
    "road": (0.30, 0.30, 0.32), "marking": (0.85, 0.85, 0.80),
    "sidewalk": (0.66, 0.56, 0.60), "terrain": (0.58, 0.66, 0.36),
    "building": ((0.74, 0.64, 0.50), (0.56, 0.56, 0.58), (0.62, 0.36, 0.28),
                 (0.80, 0.76, 0.66)),
    "window": (0.16, 0.20, 0.28), "wall": (0.52, 0.56, 0.70),
    "fence": (0.58, 0.42, 0.28), "pole": (0.48, 0.48, 0.50),
    "light_body": (0.12, 0.12, 0.10), "sign": (0.25, 0.70, 0.92),
    "foliage": (0.22, 0.44, 0.14), "trunk": (0.36, 0.25, 0.15),
    "sky_zenith": (0.35, 0.55, 0.88), "sky_horizon": (0.80, 0.86, 0.92),
    "skin": (0.85, 0.66, 0.52), "legs": (0.16, 0.18, 0.30),
    "tyre": (0.06, 0.06, 0.07), "glass": (0.12, 0.15, 0.20),
    "pedestrian": (0.82, 0.14, 0.20), "cyclist": (0.96, 0.52, 0.06),
    "car": (0.16, 0.28, 0.72), "truck": (0.10, 0.50, 0.44),
    "bus": (0.93, 0.76, 0.14), "van": (0.86, 0.86, 0.90),
    "two_wheeler": (0.58, 0.20, 0.68), "void": (0.40, 0.40, 0.42),
}


def _hue_matrix(deg: float) -> np.ndarray:
  """RGB rotation about the grey axis by ``deg`` degrees (a hue shift)."""
  a = np.deg2rad(deg)
  c, s = np.cos(a), np.sin(a)
  k = 1.0 / 3.0
  sq = np.sqrt(k)
  return np.array([
      [c + (1 - c) * k, k * (1 - c) - sq * s, k * (1 - c) + sq * s],
      [k * (1 - c) + sq * s, c + k * (1 - c), k * (1 - c) - sq * s],
      [k * (1 - c) - sq * s, k * (1 - c) + sq * s, c + k * (1 - c)],
  ])


def palette(domain: str, shift: float) -> dict:
  """Material colours and texture scales of a domain (source: BASE; target: transformed).

  Keys ``tex`` (noise/tile frequency factor) and ``win`` (window spacing
  factor) are floats; all others are RGB arrays (``building`` is [4,3]).
  """
  if domain == "source" or shift <= 0:
    out = {k: np.asarray(v, np.float64) for k, v in BASE.items()}
    out["tex"], out["win"] = 1.0, 1.0
    return out
  m = _hue_matrix(22.0 * shift)
  sat = 1.0 - 0.2 * min(shift, 2.0)  # desaturate, never below 0.6
  out = {}
  for k, v in BASE.items():
    c = np.asarray(v, np.float64)
    c = np.clip(c @ m.T, 0, 1)
    grey = c.mean(-1, keepdims=True)
    out[k] = np.clip(grey + sat * (c - grey), 0, 1) * (1.0 - 0.08 * shift)
  # Texture shift: finer noise and tiles, wider window spacing.
  out["tex"], out["win"] = 1.0 + 0.6 * shift, 1.0 + 0.35 * shift
  return out


def jitter(rng: np.random.Generator, colour: np.ndarray, amount: float = 0.07) -> np.ndarray:
  """Per-instance colour variation: a brightness factor and a small per-channel offset."""
  c = np.asarray(colour) * rng.uniform(0.82, 1.15) + rng.uniform(-amount, amount, 3)
  return np.clip(c, 0.0, 1.0)


def lighting(rng: np.random.Generator, domain: str, shift: float) -> dict:
  """Sun direction, ambient/diffuse terms, colour cast, fog distance and sensor noise."""
  if domain == "source":
    el = np.deg2rad(rng.uniform(35, 65))
    az = rng.uniform(-np.pi, np.pi)
    ambient, diffuse = rng.uniform(0.45, 0.55), rng.uniform(0.55, 0.7)
    cast = np.ones(3)
    fog, noise, blur, gamma = rng.uniform(180, 320), 2.0, 0.0, 1.0
  else:
    s = shift
    el = np.deg2rad(rng.uniform(35, 65) - 22 * s * rng.uniform(0.5, 1.0))
    az = rng.uniform(-np.pi, np.pi)
    ambient = rng.uniform(0.45, 0.55) - 0.12 * s * rng.uniform(0, 1)
    diffuse = rng.uniform(0.55, 0.7) + 0.25 * s * rng.uniform(-1, 1)
    warm = rng.uniform(-1, 1)
    cast = 1.0 + 0.12 * s * np.array([warm, 0.2 * warm, -warm])
    fog = rng.uniform(180, 320) / (1.0 + 1.2 * s)
    noise, blur, gamma = 2.0 + 5.0 * s, 0.5 * s, 1.0 + 0.25 * s * rng.uniform(-1, 1)
  sun = np.array([np.sin(az) * np.cos(el), np.cos(az) * np.cos(el), np.sin(el)])
  return dict(sun=sun, ambient=float(ambient), diffuse=float(max(diffuse, 0.2)),
              cast=cast, fog=float(fog), noise=float(noise), blur=float(blur),
              gamma=float(max(gamma, 0.6)))


def hash_noise(p: np.ndarray, freq: float, seed: float = 0.0) -> np.ndarray:
  """Deterministic value noise in [0,1) on a lattice of cell size 1/freq (p: [n,3])."""
  q = np.floor(p * freq)
  v = np.sin(q[:, 0] * 12.9898 + q[:, 1] * 78.233 + q[:, 2] * 37.719 + seed * 3.17) * 43758.5453
  return v - np.floor(v)


def finish(rgb: np.ndarray, light: dict, rng: np.random.Generator) -> np.ndarray:
  """Sensor model: colour cast, gamma, optional box blur and Gaussian noise → uint8."""
  img = np.clip(rgb * light["cast"], 0, 1) ** (1.0 / light["gamma"])
  if light["blur"] > 0:
    # A light 3-tap blur mixed by strength, like panorama stitching softness.
    w = min(light["blur"], 1.0) * 0.5
    pad = np.pad(img, ((1, 1), (1, 1), (0, 0)), mode="edge")
    avg = (pad[:-2, 1:-1] + pad[2:, 1:-1] + pad[1:-1, :-2] + pad[1:-1, 2:] + pad[1:-1, 1:-1]) / 5
    img = (1 - w) * img + w * avg
  img = img * 255.0 + rng.normal(0.0, light["noise"], img.shape)
  return np.clip(np.rint(img), 0, 255).astype(np.uint8)
