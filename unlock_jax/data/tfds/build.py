r"""Builds the TFDS/ArrayRecord copy of a data set on disk (offline).

  python -m unlock_jax.data.tfds.build --layout kitti360aps \
      --manual_dir /data/KITTI360_APS --data_dir /data/tfds/kitti360aps
  python -m unlock_jax.data.tfds.build --layout blendpass \
      --manual_dir /data/BlendPASS --data_dir /data/tfds/blendpass
  python -m unlock_jax.data.tfds.build --layout amodalsynthdrive --image_size 540,960 \
      --manual_dir /data/AmodalSynthDrive --data_dir /data/tfds/amodalsynthdrive

Then set ``config.data.<domain>.format = "tfds"`` and
``config.data.<domain>.tfds_data_dir`` to that ``--data_dir``. A synthpass set
is built the same way from its ``KITTI360_APS/`` and ``BlendPASS/`` folders.
AmodalSynthDrive is stored at ``--image_size`` (its config's
``data.source.image_size``), which reading it then requires. Folders may be
``gs://`` URLs.
"""
from absl import app
from absl import flags

from unlock_jax.data.tfds import builders


def _define_flags() -> None:
  """Only when run as a program, so importing this module registers no absl flags."""
  flags.DEFINE_enum("layout", None, sorted(builders.BUILDERS), "data set layout")
  flags.DEFINE_string("manual_dir", None, "the layout's root folder")
  flags.DEFINE_string("data_dir", None, "where the TFDS build is written")
  flags.DEFINE_bool("overwrite", False, "rebuild an existing build")
  flags.DEFINE_list("image_size", None, "HEIGHT,WIDTH of the examples: amodalsynthdrive is "
                    "resized to it, other layouts must have it (default: the first image's "
                    "size)")
  flags.mark_flags_as_required(["layout", "manual_dir", "data_dir"])


def _size(value):
  if value is None:
    return None
  try:
    h, w = (int(v) for v in value)
  except ValueError:
    raise app.UsageError(f"--image_size must be HEIGHT,WIDTH, got {','.join(value)}") from None
  return h, w


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments {argv[1:]}")
  f = flags.FLAGS
  b = builders.prepare(f.layout, f.manual_dir, f.data_dir, f.overwrite, _size(f.image_size))
  for split, info in b.info.splits.items():
    print(f"{f.layout} {split}: {info.num_examples} examples in {b.data_path}")


if __name__ == "__main__":
  _define_flags()
  app.run(main)
