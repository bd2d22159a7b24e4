"""Generation speed of synthpass for the demo-sized set, against the 60 s one-core target.

Usage: python benchmarks/synthpass.py [--scale 0.25] [--workers 0] [--out DIR]
Prints wall and CPU seconds (CPU time is the fair figure on a shared machine),
scenes per second and the ratio CPU seconds / 60 s (below 1 meets the target).
"""
import argparse
import os
import shutil
import tempfile
import time

from unlock_jax.data import synthpass

TARGET_S = 60.0
DEMO = dict(num_source={"train": 300, "val": 50}, num_target={"train": 100, "val": 50})


def main():
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--scale", type=float, default=0.25)
  ap.add_argument("--workers", type=int, default=0)
  ap.add_argument("--out", default=None, help="output folder (default: a temp folder, removed)")
  args = ap.parse_args()
  out = args.out or tempfile.mkdtemp(prefix="synthpass_bench_")
  if os.path.exists(os.path.join(out, "synthpass.json")):
    raise SystemExit(f"{out} already holds a data set; the benchmark needs an empty folder")
  try:
    wall0, cpu0 = time.perf_counter(), time.process_time()
    summary = synthpass.generate(out, scale=args.scale, num_workers=args.workers, **DEMO)
    wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
  finally:
    if args.out is None:
      shutil.rmtree(out, ignore_errors=True)
  n = summary["generated"]
  print(f"scenes {n}  scale {args.scale}  workers {args.workers}")
  print(f"wall {wall:.1f} s  cpu(main process) {cpu:.1f} s  {n / wall:.1f} scenes/s wall")
  for k, v in summary["splits"].items():
    print(f"  {k}: {v['instances']} instances, {v['occluded']} occluded "
          f"(by thing {v['occluded_by_thing']}, by stuff {v['occluded_by_stuff']}), "
          f"{v['crowd']} crowd, mean visible fraction {v['mean_visible_fraction']:.2f}")
  if args.workers == 0:
    print(f"ratio cpu/target {cpu / TARGET_S:.2f} (target {TARGET_S:.0f} s on one core)")


if __name__ == "__main__":
  main()
