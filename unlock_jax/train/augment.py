"""Strong augmentation of the ClassMix image: colour jitter, then Gaussian blur.

The semantics are those of the reference (DACS ``strong_transform`` on top of
kornia 0.5.8; docs/method.md §7.4). What a reader might not expect:

* The two *whether* decisions are drawn once per batch: either every image
  of the batch is jittered or none is; the same for blur. Factors, σ and the
  op order are drawn per image.
* kornia 0.5.8's ``ColorJitter`` is not torchvision's: brightness is
  additive (``x + b − 1``), contrast a plain multiply (``x·c``), saturation
  scales HSV's S, hue rotates HSV's H in radians; RGB is clamped to [0,1] only
  after brightness and contrast, and the four ops run in a random order per
  image.
* The jitter works on the de-normalised [0,1] image and re-normalises without
  any clamp; the blur runs on the *normalised* image, after the jitter.

All functions are pure, take explicit keys and keep static shapes; the blur's
kernel size is a Python int derived from the (static) image size, σ is traced.
Images are ``[B,H,W,3]`` float32, RGB, channels last.

Image scale: the reference's σ ~ U[0.15, 1.15) px is set for its full-size
crops (400 px). ``sigma_scale`` multiplies that range, so images at
``scale`` × the reference's size get the same blur relative to the image
with ``sigma_scale=scale`` (config ``adapt.blur_sigma_scale``); 1.0 draws the
reference's values exactly. The kernel-size rule needs no factor: it is
already ~0.1 × the side (39 taps at 400 px, 9 at 100 px), so it shrinks
with the image and still spans ≥ 3σ of every σ the scaled range draws.
"""
import math

import jax
import jax.numpy as jnp

MEAN = (123.675, 116.28, 103.53)   # img_norm_cfg of the reference config, RGB, [0,255] units
STD = (58.395, 57.12, 57.375)

BRIGHTNESS, CONTRAST, SATURATION, HUE = 0, 1, 2, 3   # kornia's op ids in ``order``
_EPS = 1e-6                                           # kornia rgb_to_hsv: S = d / (v + eps)
_TWO_PI = 2.0 * math.pi
SIGMA_RANGE = (0.15, 1.15)                            # dacs_transforms: np.random.uniform(0.15, 1.15)


# --- HSV, kornia 0.5.8 convention (H in radians) ---------------------------------------------

def rgb_to_hsv(x: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
  """RGB [...,3] → (H in [0,2π), S, V), step for step as kornia's ``rgb_to_hsv``.

  The ``eps`` in S and the first-channel tie rule are kept: they make the HSV
  round trip a (tiny) non-identity that the reference also has.
  """
  r, g, b = x[..., 0], x[..., 1], x[..., 2]
  v = jnp.max(x, axis=-1)
  d = v - jnp.min(x, axis=-1)
  s = d / (v + _EPS)
  d1 = jnp.where(d == 0, jnp.ones_like(d), d)
  rc, gc, bc = v - r, v - g, v - b
  hraw = jnp.stack([bc - gc, (rc - bc) + 2.0 * d1, (gc - rc) + 4.0 * d1], axis=-1) / d1[..., None]
  k = jnp.argmax(x, axis=-1)   # first maximal channel, like torch.max's index
  hraw = jnp.take_along_axis(hraw, k[..., None], axis=-1)[..., 0]
  h = _TWO_PI * jnp.mod(hraw / 6.0, 1.0)   # torch % is floor-mod, as jnp.mod
  return h, s, v


def hsv_to_rgb(h: jax.Array, s: jax.Array, v: jax.Array) -> jax.Array:
  """(H radians, S, V) → RGB [...,3] as kornia's ``hsv_to_rgb``; floor-mod wraps negative H."""
  u6 = (h / _TWO_PI) * 6.0
  i = jnp.mod(jnp.floor(u6), 6.0)
  f = jnp.mod(u6, 6.0) - i
  p = v * (1.0 - s)
  q = v * (1.0 - f * s)
  t = v * (1.0 - (1.0 - f) * s)
  i = i.astype(jnp.int32)
  # Rows: sector i = 0..5; columns R, G, B.
  table = jnp.stack([jnp.stack(row, axis=-1) for row in
                     [(v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q)]], axis=-2)
  return jnp.take_along_axis(table, i[..., None, None], axis=-2)[..., 0, :]


# --- the four ops of ColorJitter (per-image factor [B], image [B,H,W,3] in [0,1]) ------------

def _per_image(f: jax.Array, x: jax.Array) -> jax.Array:
  return jnp.reshape(jnp.asarray(f, x.dtype), (-1,) + (1,) * (x.ndim - 1))


def adjust_brightness(x: jax.Array, b: jax.Array) -> jax.Array:
  """``clamp(x + (b − 1), 0, 1)``: kornia adds the offset, it does not scale."""
  return jnp.clip(x + (_per_image(b, x) - 1.0), 0.0, 1.0)


def adjust_contrast(x: jax.Array, c: jax.Array) -> jax.Array:
  """``clamp(x·c, 0, 1)``: no blend towards the mean, unlike torchvision."""
  return jnp.clip(x * _per_image(c, x), 0.0, 1.0)


def adjust_saturation(x: jax.Array, s: jax.Array) -> jax.Array:
  """Scales HSV's S and clamps S (not RGB) to [0,1]; grey pixels stay grey."""
  h, sat, v = rgb_to_hsv(x)
  return hsv_to_rgb(h, jnp.clip(sat * _per_image(s, sat), 0.0, 1.0), v)


def adjust_hue(x: jax.Array, hue: jax.Array) -> jax.Array:
  """Rotates H by ``hue`` turns (kornia converts to radians, then ``fmod`` by 2π); no clamp."""
  h, s, v = rgb_to_hsv(x)
  delta = _per_image(hue, h) * jnp.float32(_TWO_PI)
  return hsv_to_rgb(jnp.fmod(h + delta, _TWO_PI), s, v)


def jitter_with(images01: jax.Array, b: jax.Array, c: jax.Array, s: jax.Array, h: jax.Array,
                order: jax.Array) -> jax.Array:
  """kornia ColorJitter with explicit per-image factors ``[B]`` and op order ``[B,4]``.

  ``order[i]`` is a permutation of (BRIGHTNESS, CONTRAST, SATURATION, HUE)
  applied left to right. Each of the 4 steps computes the four candidate ops
  for the whole batch and keeps, per image, the one its order names: static
  shapes and no data-dependent control flow, for about 4× the (cheap,
  elementwise) work of the one op actually wanted.
  """
  x = images01
  order = jnp.asarray(order, jnp.int32)
  for step in range(4):
    candidates = (adjust_brightness(x, b), adjust_contrast(x, c),
                  adjust_saturation(x, s), adjust_hue(x, h))
    which = _per_image(order[:, step], x).astype(jnp.int32)
    x = jnp.select([which == op for op in range(3)], candidates[:3], candidates[3])
  return x


# --- Gaussian blur -----------------------------------------------------------------------------

def kernel_size(side: int) -> int:
  """The reference's per-side kernel size, ``floor(ceil(0.1·s) − 0.5 + ceil(0.1·s) mod 2)``.

  Always odd: 39 for 400, 7 for 64, 1 (no blur) below 11. Evaluated in float64
  like the reference's NumPy, so e.g. 0.1·30 = 3.0000000000000004 → 4 → 3.
  """
  c = math.ceil(0.1 * side)
  return int(math.floor(c - 0.5 + c % 2))


def gaussian_kernel1d(sigma: jax.Array, size: int) -> jax.Array:
  """Normalised taps ``[..., size]`` centred at ``size // 2`` for σ of any batch shape ``[...]``."""
  x = jnp.arange(size, dtype=jnp.float32) - size // 2
  sigma = jnp.asarray(sigma, jnp.float32)[..., None]
  g = jnp.exp(-(x * x) / (2.0 * sigma * sigma))
  return g / jnp.sum(g, axis=-1, keepdims=True)


def blur_with(images: jax.Array, sigma: jax.Array, ksize: int | tuple[int, int]) -> jax.Array:
  """Isotropic Gaussian blur with per-image σ ``[B]`` (or a scalar) and a static odd kernel size.

  Matches kornia's ``GaussianBlur2d(ksize, (σ, σ))``: the 2-D kernel is the outer
  product of two normalised 1-D kernels, the border is mirrored without
  repeating the edge pixel (``reflect``), output size = input size. Done as two
  separable passes of explicit float32 multiply-adds, so no backend (TF32)
  convolution precision setting can change the result.
  """
  ky, kx = (ksize, ksize) if isinstance(ksize, int) else ksize
  if ky % 2 == 0 or kx % 2 == 0:
    raise ValueError(f"kernel size must be odd, got {(ky, kx)}")
  bsz, hgt, wid, _ = images.shape
  sigma = jnp.broadcast_to(jnp.asarray(sigma, jnp.float32), (bsz,))
  gy = gaussian_kernel1d(sigma, ky)[:, :, None, None, None]   # [B,ky,1,1,1]
  gx = gaussian_kernel1d(sigma, kx)[:, :, None, None, None]
  py, px = ky // 2, kx // 2
  xp = jnp.pad(images, ((0, 0), (py, py), (px, px), (0, 0)), mode="reflect")
  rows = sum(gy[:, k] * xp[:, k:k + hgt] for k in range(ky))
  return sum(gx[:, k] * rows[:, :, k:k + wid] for k in range(kx)).astype(images.dtype)


# --- random draws ------------------------------------------------------------------------------

def jitter_ranges(strength: float) -> dict[str, tuple[float, float]]:
  """kornia's ranges for ``ColorJitter(s, s, s, s)``: ``[centre ± s]`` clamped to each op's bounds."""
  if strength < 0:
    raise ValueError(f"strength must be >= 0, got {strength}")
  return {"b": (max(0.0, 1 - strength), min(2.0, 1 + strength)),
          "c": (max(0.0, 1 - strength), 1 + strength),
          "s": (max(0.0, 1 - strength), 1 + strength),
          "h": (max(-0.5, -strength), min(0.5, strength))}


def sample_jitter_params(key: jax.Array, batch: int, strength: float = 0.2) -> dict:
  """Per-image factors ``b, c, s, h [B]`` and ``order [B,4]`` (uniform random permutation).

  One independent key per image, like the reference's fresh ColorJitter per
  image. Within an image the draws follow kornia's order b, c, h, s, then the
  permutation (only the order of consumption: the streams differ from torch's).
  """
  ranges = jitter_ranges(strength)

  def one(k):
    kb, kc, kh, ks, ko = jax.random.split(k, 5)
    u = lambda kk, name: jax.random.uniform(kk, (), jnp.float32, *ranges[name])
    return {"b": u(kb, "b"), "c": u(kc, "c"), "h": u(kh, "h"), "s": u(ks, "s"),
            "order": jax.random.permutation(ko, 4).astype(jnp.int32)}

  return jax.vmap(one)(jax.random.split(key, batch))


def sigma_range(sigma_scale: float = 1.0) -> tuple[float, float]:
  """The blur's σ range in pixels: the reference's [0.15, 1.15) times ``sigma_scale``."""
  if not sigma_scale > 0:
    raise ValueError(f"blur sigma_scale must be > 0 (the image scale w.r.t. the reference's "
                     f"full-size images; 1.0 for its own values), got {sigma_scale}")
  return SIGMA_RANGE[0] * sigma_scale, SIGMA_RANGE[1] * sigma_scale


def sample_sigma(key: jax.Array, batch: int, sigma_scale: float = 1.0) -> jax.Array:
  """Per-image blur σ ``[B]`` ~ U[0.15·s, 1.15·s) for ``s = sigma_scale`` (1: the reference's)."""
  return jax.random.uniform(key, (batch,), jnp.float32, *sigma_range(sigma_scale))


def sample_strong_params(key: jax.Array, batch: int, *, jitter_p: float = 0.8,
                         blur_p: float = 0.5, strength: float = 0.2,
                         sigma_scale: float = 1.0) -> dict:
  """All draws of one strong augmentation: two batch-level gates and per-image factors.

  ``apply_jitter`` / ``apply_blur`` are scalars, so the decision is shared by
  the whole batch by construction. The reference jitters iff ``u > 0.2`` and
  blurs iff ``u > 0.5`` for ``u ~ U[0,1)``; ``u < p`` has the same law. The
  factors are drawn from their own keys whatever the gates say, so switching a
  gate off does not change the other draws. ``sigma_scale``: see ``sample_sigma``.
  """
  kgj, kgb, kj, kb = jax.random.split(key, 4)
  params = sample_jitter_params(kj, batch, strength)
  params["sigma"] = sample_sigma(kb, batch, sigma_scale)
  params["apply_jitter"] = jax.random.uniform(kgj, ()) < jitter_p
  params["apply_blur"] = jax.random.uniform(kgb, ()) < blur_p
  return params


# --- on normalised images ----------------------------------------------------------------------

def _norm_arrays(mean, std):
  return jnp.asarray(mean, jnp.float32), jnp.asarray(std, jnp.float32)


def denormalize01(images: jax.Array, mean=MEAN, std=STD) -> jax.Array:
  """``(x·std + mean) / 255`` in the reference's operation order (dacs ``denorm_``); no clamp."""
  mean, std = _norm_arrays(mean, std)
  return (images * std + mean) / 255.0


def renormalize(images01: jax.Array, mean=MEAN, std=STD) -> jax.Array:
  """``(x·255 − mean) / std`` (dacs ``renorm_``); no clamp."""
  mean, std = _norm_arrays(mean, std)
  return (images01 * 255.0 - mean) / std


def apply_strong(images: jax.Array, params: dict, *, mean=MEAN, std=STD) -> jax.Array:
  """Jitter (if ``apply_jitter``) then blur (if ``apply_blur``) with the given draws.

  The gates are batch-level scalars, so ``lax.cond`` really skips the work on
  device when an op is off (under ``vmap`` it becomes a select, still correct).
  """
  _, hgt, wid, _ = images.shape
  ksize = (kernel_size(hgt), kernel_size(wid))

  def jitter(x):
    x01 = jitter_with(denormalize01(x, mean, std), params["b"], params["c"], params["s"],
                      params["h"], params["order"])
    return renormalize(x01, mean, std)

  x = jax.lax.cond(params["apply_jitter"], jitter, lambda x: x, images)
  return jax.lax.cond(params["apply_blur"], lambda x: blur_with(x, params["sigma"], ksize),
                      lambda x: x, x)


def color_jitter(images: jax.Array, key: jax.Array, *, strength: float = 0.2,
                 mean=MEAN, std=STD) -> jax.Array:
  """Always-on jitter of normalised images with fresh per-image factors and order."""
  p = sample_jitter_params(key, images.shape[0], strength)
  x01 = jitter_with(denormalize01(images, mean, std), p["b"], p["c"], p["s"], p["h"], p["order"])
  return renormalize(x01, mean, std)


def gaussian_blur(images: jax.Array, key: jax.Array, sigma_scale: float = 1.0) -> jax.Array:
  """Always-on blur with per-image σ ~ U[0.15,1.15)·``sigma_scale`` and the reference's
  kernel-size rule."""
  _, hgt, wid, _ = images.shape
  return blur_with(images, sample_sigma(key, images.shape[0], sigma_scale),
                   (kernel_size(hgt), kernel_size(wid)))


def strong_augment(images: jax.Array, key: jax.Array, *, jitter_p: float = 0.8,
                   blur_p: float = 0.5, strength: float = 0.2, sigma_scale: float = 1.0,
                   mean=MEAN, std=STD) -> jax.Array:
  """The reference's strong augmentation of the (already mixed) normalised images.

  Jitter all images with probability ``jitter_p`` (else none), then blur all
  with probability ``blur_p`` (else none), the two decisions independent;
  factors, op order and σ per image; σ's range times ``sigma_scale`` (the
  image scale; 1.0 the reference's). See ``sample_strong_params``.
  """
  params = sample_strong_params(key, images.shape[0], jitter_p=jitter_p, blur_p=blur_p,
                                strength=strength, sigma_scale=sigma_scale)
  return apply_strong(images, params, mean=mean, std=std)
