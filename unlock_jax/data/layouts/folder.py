"""A folder of the user's own equirectangular panoramas (JPG/PNG, any size).

Every image under ``root`` (recursively) is an example, named by its path
relative to ``root`` without the extension (``"trip1/img_0001"``). Images are
resized (bilinear) to the configured panorama size; an aspect ratio that
differs from it by more than 1% gets a warning naming the file, because an
equirectangular image squeezed to another aspect ratio distorts latitude.
``root`` may be a URL (``gs://...``): files are listed and read through etils.epath.
"""
import os

import numpy as np
from absl import logging
from PIL import Image

from unlock_jax.data.layouts import common

EXTENSIONS = (".jpg", ".jpeg", ".png")


def image_files(root: str) -> list[str]:
  """Sorted image paths under ``root``, any depth; hidden names skipped, as a ``**`` glob does."""
  paths = []
  for folder, dirs, files in common.walk(root):
    dirs[:] = [d for d in dirs if not d.startswith(".")]
    paths += [os.path.join(folder, f) for f in files
              if f.lower().endswith(EXTENSIONS) and not f.startswith(".")]
  return sorted(paths)


class Reader:
  """``len``, ``names``, ``keys``, ``load_image(i)``, ``load(i)`` (image only)."""

  def __init__(self, root: str, image_size):
    if common.listdir(root) is None:
      raise common.DataError(f"image folder {root} does not exist "
                             "(set --config.predict.images to a folder of panoramas)")
    paths = image_files(root)
    if not paths:
      raise common.DataError(f"no {'/'.join(EXTENSIONS)} images under {root}")
    self.root, self.paths = root, paths
    self.image_size = tuple(int(v) for v in image_size)
    self.keys = [os.path.splitext(os.path.relpath(p, root))[0].replace(os.sep, "/")
                 for p in paths]
    self.names = list(self.keys)
    self._warned: set = set()

  def __len__(self) -> int:
    return len(self.paths)

  def load_image(self, i: int) -> np.ndarray:
    path = self.paths[i]
    h, w = self.image_size
    im = common.open_image(path, "image").convert("RGB")
    iw, ih = im.size
    if (iw, ih) != (w, h):
      if abs(iw / ih - w / h) > 0.01 * (w / h) and path not in self._warned:
        self._warned.add(path)
        logging.warning("%s is %dx%d (aspect %.3f), resized to %dx%d (aspect %.3f): "
                        "an equirectangular panorama should be 2:1 or the "
                        "configured size's ratio", path, iw, ih, iw / ih, w, h, w / h)
      im = im.resize((w, h), Image.BILINEAR)
    return np.asarray(im, np.uint8)

  def load(self, i: int) -> dict:
    return dict(name=self.keys[i], image=self.load_image(i))
