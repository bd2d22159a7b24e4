"""A tiny synthpass data set for other modules' tests (seconds to build on one CPU core)."""
import os

from unlock_jax.data.synthpass import generator


def make_tiny_dataset(tmp_dir: str, scale: float = 0.125, seed: int = 0,
                      n_source: tuple = (6, 3), n_target: tuple = (4, 3)) -> str:
  """Generates (or reuses) a small data set under ``tmp_dir`` and returns its root.

  The root holds ``KITTI360_APS/`` (``n_source`` = (train, val) scenes) and
  ``BlendPASS/`` (``n_target`` = (train, val)). Read it with the layout readers
  and ``image_size=synthpass.image_sizes(scale)[domain]``.
  """
  root = os.path.join(tmp_dir, f"synthpass_s{scale}_seed{seed}")
  generator.generate(root, scale=scale, seed=seed,
                     num_source={"train": n_source[0], "val": n_source[1]},
                     num_target={"train": n_target[0], "val": n_target[1]})
  return root
