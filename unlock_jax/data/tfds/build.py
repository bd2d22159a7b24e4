r"""Builds the TFDS/ArrayRecord copy of a data set on disk (offline).

  python -m unlock_jax.data.tfds.build --layout kitti360aps \
      --manual_dir /data/KITTI360_APS --data_dir /data/tfds/kitti360aps
  python -m unlock_jax.data.tfds.build --layout blendpass \
      --manual_dir /data/BlendPASS --data_dir /data/tfds/blendpass

Then set ``config.data.<domain>.format = "tfds"`` and
``config.data.<domain>.tfds_data_dir`` to that ``--data_dir``. A synthpass set
is built the same way from its ``KITTI360_APS/`` and ``BlendPASS/`` folders.
"""
from absl import app
from absl import flags

from unlock_jax.data.tfds import builders

_LAYOUT = flags.DEFINE_enum("layout", None, sorted(builders.BUILDERS), "data set layout")
_MANUAL_DIR = flags.DEFINE_string("manual_dir", None, "the layout's root folder")
_DATA_DIR = flags.DEFINE_string("data_dir", None, "where the TFDS build is written")
_OVERWRITE = flags.DEFINE_bool("overwrite", False, "rebuild an existing build")
flags.mark_flags_as_required(["layout", "manual_dir", "data_dir"])


def main(argv):
  del argv
  b = builders.prepare(_LAYOUT.value, _MANUAL_DIR.value, _DATA_DIR.value, _OVERWRITE.value)
  for split, info in b.info.splits.items():
    print(f"{_LAYOUT.value} {split}: {info.num_examples} examples in {b.data_path}")


if __name__ == "__main__":
  app.run(main)
