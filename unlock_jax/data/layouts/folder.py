"""A folder of the user's own equirectangular panoramas (JPG/PNG, any size, any depth).

Names: every ``.jpg``/``.jpeg``/``.png`` file under ``root`` (recursively;
hidden files and folders skipped, other files ignored and counted in the log)
is an example named by its path relative to ``root`` with ``/`` separators
and its extension: ``trip1/img_0001.jpg``. Names are unique by construction
(``dup.jpg`` and ``dup.png`` are two examples), and every output keyed by the
name (store entries, pseudo-labels, pool shards, exported PNGs) mirrors the
folder tree. Two names that differ only in case are refused, since their
outputs would overwrite each other on case-insensitive file systems.

Pixels: the EXIF orientation is applied, then every PIL mode a JPG/PNG can
decode to becomes 8-bit RGB (:func:`to_rgb`): 16-bit grayscale scaled by
255/65535 (not clipped), 1-bit/8-bit grayscale replicated, palettes
expanded, CMYK by ``255 (1 - C)(1 - K)`` per channel, YCbCr by the JPEG
(JFIF) matrix, and an alpha channel (or a palette/colour-key transparency)
composited over black, so fully transparent pixels are black whatever
colour they store. Float images are refused naming the file and mode.
Embedded colour profiles are not applied (the training data's are not
either).

Size: images are resized (bilinear) to the configured panorama size. An
aspect ratio that differs from the configured one by more than 1% gets one
warning per image size (naming the first such file, both ratios and the
distortion), because an equirectangular image squeezed to another aspect
ratio distorts latitude.

Examples (``load``) carry, besides ``name`` and ``image`` (uint8 [H,W,3] at
the configured size):

* ``SOURCE_PATH`` (``"source_path"``): the file's path as listed under ``root``;
* ``SOURCE_SIZE`` (``"source_size"``): ``(height, width)`` of the decoded image
  as displayed (after the EXIF orientation), before resizing: the size to
  write outputs back at.

``root`` may be a URL (``gs://...``): files are listed and read through etils.epath.
"""
import os

import numpy as np
from absl import logging
from PIL import Image
from PIL import ImageOps

from unlock_jax import fileio
from unlock_jax.data.layouts import common

EXTENSIONS = (".jpg", ".jpeg", ".png")
SOURCE_PATH = "source_path"
SOURCE_SIZE = "source_size"

_GRAY16 = ("I;16", "I;16L", "I;16B", "I;16N", "I")
_ALPHA = ("LA", "La", "PA", "RGBA", "RGBa")


def _walk(root: str) -> tuple[list[str], list[str]]:
  """(image paths, other files) under ``root``, sorted; hidden names skipped, as a ``**`` glob."""
  images, others = [], []
  for rel, dirs, files in fileio.walk(root):
    dirs[:] = [d for d in dirs if not d.startswith(".")]
    for f in files:
      if f.startswith("."):
        continue
      (images if f.lower().endswith(EXTENSIONS) else others).append(os.path.join(root, rel, f))
  return sorted(images), sorted(others)


def image_files(root: str) -> list[str]:
  """Sorted image paths under ``root``, any depth; hidden names skipped, as a ``**`` glob."""
  return _walk(root)[0]


def name_of(root: str, path: str) -> str:
  """An example's name: ``path`` relative to ``root``, '/'-separated, extension kept."""
  return os.path.relpath(path, root).replace(os.sep, "/")


def check_names(names: list[str], root: str) -> None:
  """Refuses names that outputs cannot hold apart (case-only differences, backslashes)."""
  bad = [n for n in names if "\\" in n]
  if bad:
    raise common.DataError(f"image names under {root} contain '\\', which output paths "
                           f"cannot hold: {bad[:5]}; rename these files")
  seen: dict = {}
  for n in names:
    other = seen.setdefault(n.casefold(), n)
    if other != n:
      raise common.DataError(
          f"{root} holds {other} and {n}, whose names differ only in case: their outputs "
          "would overwrite each other on case-insensitive file systems; rename one of them")


def to_rgb(im: Image.Image, path: str) -> np.ndarray:
  """uint8 [H,W,3] RGB of a decoded image in any mode a JPG/PNG yields (module docstring).

  Raises DataError naming ``path`` and the mode for modes without a standard
  8-bit RGB meaning (32-bit float, ...).
  """
  mode = im.mode
  if mode in ("P", "L", "RGB") and "transparency" in im.info:
    im, mode = im.convert("RGBA"), "RGBA"  # the palette's or colour key's transparency
  if mode == "RGB":
    return np.asarray(im, np.uint8)
  if mode in ("1", "L", "P"):
    return np.asarray(im.convert("RGB"), np.uint8)
  if mode in _GRAY16:
    g = np.asarray(im).astype(np.int64)
    if g.size and (g.min() < 0 or g.max() > 65535):
      raise common.DataError(f"image {path} is {mode} grayscale with values "
                             f"{g.min()}..{g.max()}, outside 16 bits; save it as 8-bit RGB")
    g = ((g * 255 + 32767) // 65535).astype(np.uint8)  # round(g / 257)
    return np.repeat(g[..., None], 3, axis=2)
  if mode in _ALPHA:
    rgba = np.asarray(im.convert("RGBA"), np.uint16)
    a = rgba[..., 3:]
    return ((rgba[..., :3] * a + 127) // 255).astype(np.uint8)  # over black: round(c * a / 255)
  if mode == "CMYK":
    cmyk = np.asarray(im, np.uint32)
    k = 255 - cmyk[..., 3:]
    return (((255 - cmyk[..., :3]) * k + 127) // 255).astype(np.uint8)
  if mode == "YCbCr":
    return np.asarray(im.convert("RGB"), np.uint8)  # PIL's JFIF conversion
  raise common.DataError(f"image {path} has PIL mode {mode!r}, which has no standard "
                         "8-bit RGB conversion; save it as an 8-bit RGB JPG or PNG")


def decode(path: str) -> np.ndarray:
  """uint8 RGB of an image file at its own size, EXIF orientation applied.

  DataError naming the file if it cannot be read or converted.
  """
  try:
    im = ImageOps.exif_transpose(common.open_image(path, "image"))
  except common.DataError:
    raise
  except (Image.DecompressionBombError, OSError, ValueError, SyntaxError) as e:
    raise common.DataError(f"cannot read image {path}: {e}") from e  # huge, bad EXIF
  return to_rgb(im, path)


def aspect_problem(image_wh, size_wh) -> str | None:
  """What is wrong with an image whose aspect ratio differs from the configured
  size's by more than 1% (``"is WxH (aspect ...), but ..."``), or None."""
  (iw, ih), (w, h) = image_wh, size_wh
  if abs(iw / ih - w / h) <= 0.01 * (w / h):
    return None
  vertical = (iw / ih) / (w / h)  # vertical scale relative to the horizontal one
  return (f"is {iw}x{ih} (aspect {iw / ih:.2f}:1), but panoramas are resized to the "
          f"configured {w}x{h} ({w / h:.2f}:1): its height is scaled {vertical:.2f}x as "
          "much as its width, which distorts latitude. Crop the images to "
          f"{w / h:.2f}:1, or set the panorama size (--config.predict.image_size) to "
          f"their aspect ratio ({iw / ih:.2f}:1)")


class Reader:
  """``len``, ``keys``/``names``, ``paths``, ``load_image(i)``, ``load(i)`` (image only)."""

  def __init__(self, root: str, image_size):
    if fileio.names(root) is None:
      raise common.DataError(f"image folder {root} does not exist "
                             "(set --config.predict.images to a folder of panoramas)")
    paths, others = _walk(root)
    if not paths:
      raise common.DataError(f"no {'/'.join(EXTENSIONS)} images under {root}"
                             + (f" ({len(others)} other files, e.g. {others[0]})"
                                if others else ""))
    if others:
      logging.info("%s: %d files that are not %s are ignored (first: %s)", root,
                   len(others), "/".join(EXTENSIONS), others[0])
    self.root, self.paths = root, paths
    self.image_size = tuple(int(v) for v in image_size)
    self.keys = [name_of(root, p) for p in paths]
    check_names(self.keys, root)
    self.names = list(self.keys)
    self._warned: set = set()  # image sizes already warned about (per process)

  def __len__(self) -> int:
    return len(self.paths)

  def load_image(self, i: int) -> np.ndarray:
    """uint8 [H,W,3] RGB at the configured size; DataError naming an unreadable file."""
    return self.load(i)["image"]

  def load(self, i: int) -> dict:
    """``name``, ``image`` at the configured size, ``SOURCE_PATH`` and ``SOURCE_SIZE``."""
    rgb = decode(self.paths[i])
    ih, iw = rgb.shape[:2]
    h, w = self.image_size
    msg = aspect_problem((iw, ih), (w, h))
    if msg and (iw, ih) not in self._warned:
      self._warned.add((iw, ih))  # two grain threads may both warn: harmless
      logging.warning("%s %s. Further %dx%d images are resized alike without a warning.",
                      self.paths[i], msg, iw, ih)
    return {"name": self.keys[i], "image": common.fit_rgb(rgb, (h, w)),
            SOURCE_PATH: self.paths[i], SOURCE_SIZE: (ih, iw)}
