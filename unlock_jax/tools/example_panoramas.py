r"""Writes a folder of example panoramas, laid out as a user's own might be.

  python -m unlock_jax.tools.example_panoramas --out /tmp/my_panoramas [--num 24]

Synthpass target-domain scenes (360° equirectangular, the demo's calibrated
domain shift), rendered with a seed the demo data does not use, so none of
them is a panorama the demo source model or its adaptation saw. They are
written the way a folder from a camera or a download tends to look: nested
folders, spaces in names, ``.jpg``/``.JPG``/``.jpeg``/``.png`` files, some at
twice or half the size (same aspect ratio), and one name used by a JPG and a
PNG (``dup.jpg``, ``dup.png``). No labels are written. It is the example
folder of the README's "Adapting to your own panoramas" and of its tests.
"""
import io
import os

from absl import app
from absl import flags
import numpy as np
from PIL import Image

from unlock_jax import fileio
from unlock_jax.data.synthpass import generator

SEED = 1_000_003  # not the demo's data seed (0)
SHIFT = 0.75  # configs/demo.py's calibrated domain shift

_OUT = flags.DEFINE_string("out", None, "Folder to write (created; existing files kept).")
_NUM = flags.DEFINE_integer("num", 24, "Number of panoramas.")
_SCALE = flags.DEFINE_float("scale", 0.25, "Render size relative to 2048x400.")


def relative_path(i: int) -> str:
  """The i-th panorama's path under the folder: a mix of depths, names and formats."""
  if i == 0:
    return "dup.jpg"
  if i == 1:
    return "dup.png"
  trip = ("trip 1", "trip2/day1", "trip2/day2", "")[i % 4]
  ext = (".jpg", ".png", ".JPG", ".jpeg")[(i // 4) % 4]
  return os.path.join(trip, f"IMG_{i:04d}{ext}")


def panorama(i: int, scale: float) -> np.ndarray:
  """uint8 RGB of the i-th panorama; every third is stored at another size."""
  image = generator.render_scene(SEED, "target", "train", i, scale, SHIFT)["image"]
  factor = (1.0, 2.0, 0.5)[i % 3]
  if factor != 1.0:
    h, w = image.shape[:2]
    size = (round(w * factor), round(h * factor))
    image = np.asarray(Image.fromarray(image).resize(size, Image.BILINEAR))
  return image


def write(out_dir: str, num: int, scale: float = 0.25) -> list[str]:
  """Writes ``num`` panoramas under ``out_dir``; returns their paths, sorted."""
  paths = []
  for i in range(num):
    path = os.path.join(out_dir, relative_path(i))
    buf = io.BytesIO()
    fmt = "PNG" if path.lower().endswith(".png") else "JPEG"
    Image.fromarray(panorama(i, scale)).save(buf, format=fmt,
                                             **({"quality": 92} if fmt == "JPEG" else {}))
    fileio.atomic_write_bytes(path, buf.getvalue())
    paths.append(path)
  return sorted(paths)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  paths = write(fileio.absolute(_OUT.value), _NUM.value, _SCALE.value)
  print(f"wrote {len(paths)} panoramas under {_OUT.value}")


if __name__ == "__main__":
  flags.mark_flag_as_required("out")
  app.run(main)
