"""Input speed: the file readers against their TFDS/ArrayRecord builds, on synthpass.

Usage:
  python benchmarks/input.py --quick            # generates a small set in a temp folder
  python benchmarks/input.py --root DIR [--data_dir TFDS_DIR]

``--root`` is a generated synthpass set (``KITTI360_APS/``, ``BlendPASS/``);
the TFDS builds go to ``--data_dir`` (default: a temp folder, built here and
timed). Prints, each as a ratio measured in the same run:
* the time to read every example of both layouts once (``load(i)``, all
  splits): files / tfds;
* examples/s of the grain training iterator (KITTI-360 APS train, crops,
  padded instances) with 0 and 2 workers: tfds / files.
Wall-clock figures on a machine shared with other jobs are noisy: run it idle,
or compare the ratios.
"""
import argparse
import json
import os
import shutil
import tempfile
import time

from absl import flags

from unlock_jax.data import pipeline
from unlock_jax.data import synthpass
from unlock_jax.data.tfds import builders

FOLDERS = {"kitti360aps": "KITTI360_APS", "blendpass": "BlendPASS"}
DOMAINS = {"kitti360aps": "source", "blendpass": "target"}
QUICK = dict(scale=0.25, num_source={"train": 48, "val": 8}, num_target={"train": 16, "val": 8})


def folder_bytes(path: str) -> int:
  return sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(path) for f in fs)


def open_reader(root: str, data_dir: str, layout: str, split: str, fmt: str):
  with open(os.path.join(root, "synthpass.json")) as f:
    size = json.load(f)["sizes"][DOMAINS[layout]]
  return pipeline.open_reader(layout, os.path.join(root, FOLDERS[layout]), split, size,
                              format=fmt, data_dir=os.path.join(data_dir, layout))


def readers(root: str, data_dir: str, fmt: str) -> list:
  """Every split of both layouts, through one format."""
  return [open_reader(root, data_dir, layout, split, fmt)
          for layout in FOLDERS for split in ("train", "val")]


def read_all(root: str, data_dir: str, fmt: str) -> tuple[float, int]:
  """Seconds to ``load`` every example once (readers opened inside the timing)."""
  t0 = time.perf_counter()
  n = 0
  for r in readers(root, data_dir, fmt):
    for i in range(len(r)):
      r.load(i)
      n += 1
  return time.perf_counter() - t0, n


def iterate(root: str, data_dir: str, fmt: str, workers: int, steps: int, batch: int,
            warmup: int) -> float:
  """Examples/s of ``train_iterator`` over KITTI-360 APS train, after warm-up batches."""
  reader = open_reader(root, data_dir, "kitti360aps", "train", fmt)
  h = reader.image_size[0]
  it = pipeline.train_iterator(reader, batch_size=batch, crop_size=(h, h), seed=0,
                               max_instances=32, num_workers=workers)
  try:
    for _ in range(warmup):  # worker start-up and first reads
      next(it)
    t0 = time.perf_counter()
    for _ in range(steps):
      next(it)
    return steps * batch / (time.perf_counter() - t0)
  finally:
    it.close()


def main():
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--root", default=None, help="a generated synthpass set")
  ap.add_argument("--quick", action="store_true", help="generate a small set into a temp dir")
  ap.add_argument("--scale", type=float, default=QUICK["scale"], help="image scale of --quick")
  ap.add_argument("--data_dir", default=None, help="TFDS builds (default: built into a temp dir)")
  ap.add_argument("--steps", type=int, default=30, help="timed training batches")
  ap.add_argument("--batch", type=int, default=4)
  ap.add_argument("--warmup", type=int, default=3)
  ap.add_argument("--repeats", type=int, default=1, help="best of this many runs per figure")
  args = ap.parse_args()
  if (args.root is None) == (not args.quick):
    ap.error("give exactly one of --root DIR and --quick")
  flags.FLAGS.mark_as_parsed()  # grain worker processes read absl flags
  tmp = tempfile.mkdtemp(prefix="input_bench_")
  try:
    root = args.root
    if args.quick:
      root = os.path.join(tmp, "synthpass")
      t0 = time.perf_counter()
      synthpass.generate(root, **(QUICK | {"scale": args.scale}))
      print(f"generated synthpass at scale {args.scale} in {time.perf_counter() - t0:.1f} s")
    data_dir = args.data_dir or os.path.join(tmp, "tfds")
    for layout, folder in FOLDERS.items():
      t0 = time.perf_counter()
      b = builders.prepare(layout, os.path.join(root, folder), os.path.join(data_dir, layout))
      counts = {s: i.num_examples for s, i in b.info.splits.items()}
      print(f"tfds {layout} {counts}: ready in {time.perf_counter() - t0:.1f} s, "
            f"{folder_bytes(os.fspath(b.data_path)) / 2**20:.1f} MiB ArrayRecord vs "
            f"{folder_bytes(os.path.join(root, folder)) / 2**20:.1f} MiB of files")

    for fmt in ("files", "tfds"):  # imports and first-call set-up, untimed
      for r in readers(root, data_dir, fmt):
        r.load(0)
    t_files, n = min(read_all(root, data_dir, "files") for _ in range(args.repeats))
    t_tfds, _ = min(read_all(root, data_dir, "tfds") for _ in range(args.repeats))
    print(f"read every example once ({n}): files {t_files:.2f} s ({n / t_files:.1f} ex/s), "
          f"tfds {t_tfds:.2f} s ({n / t_tfds:.1f} ex/s); ratio files/tfds "
          f"{t_files / t_tfds:.2f}")
    for workers in (0, 2):
      rate = {fmt: max(iterate(root, data_dir, fmt, workers, args.steps, args.batch,
                               args.warmup) for _ in range(args.repeats))
              for fmt in ("files", "tfds")}
      print(f"train_iterator, {workers} workers (batch {args.batch}, {args.steps} batches): "
            f"files {rate['files']:.1f} ex/s, tfds {rate['tfds']:.1f} ex/s; ratio tfds/files "
            f"{rate['tfds'] / rate['files']:.2f}")
  finally:
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
  main()
