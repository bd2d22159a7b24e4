"""Predict throughput of each 360° seam mode as a ratio to flat, measured in one run.

  python benchmarks/seam.py                 # the demo model (assets/demo_source), 4x100x512
  python benchmarks/seam.py --b5            # on an accelerator: B5 + both R-CNN branches, 2048x400
  python benchmarks/seam.py --modes flat,wrap --wrap-cols 128 --runs 10

Times the ``panorama`` predict function (``models/predict.jit_predict_fns``:
the semantic argmax and confidence, both branches' detections with pasted
masks, as the predict stage and the API run it) of every mode of
``config.seam.mode`` on the same batch of panoramas, one after another in
this process, and prints compile seconds, the median step, panoramas/s and
the throughput relative to ``flat``, and the median CPU time of a step (all
threads of this process: on a shared machine, where wall time depends on the
other jobs, its ratio is the steadier measure of the work a mode adds). The images are random: every output
has a static shape (padded detections, masks pasted for all of them), so the
cost does not depend on what is in them. ``--b5`` uses random weights.
"""
import argparse
import os
import statistics
import time

import jax
import numpy as np

from unlock_jax import inference
from unlock_jax import model_info
from unlock_jax import sharding as shd
from unlock_jax.models import amodalpass
from unlock_jax.models import defaults
from unlock_jax.models import predict as predict_lib
from unlock_jax.models import variables as variables_lib

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEMO = os.path.join(REPO, "assets", "demo_source")


def _model(args, mesh):
  """``(model, variables, (H, W))``: the demo's committed model or B5 with random weights."""
  if not args.b5:
    rec = model_info.read(DEMO)
    model, variables, _ = inference.load_model(rec["model"], DEMO, mesh)
    return model, variables, tuple(rec["image_size"])
  cfg = defaults.default_model_config()
  cfg.instance_heads = True
  cfg.compute_dtype = args.dtype
  size = (400, 2048)
  model = amodalpass.build(cfg)
  variables = jax.jit(lambda r: variables_lib.init_variables(model, r, (1, *size, 3)))(
      jax.random.key(0))
  return model, variables, size


def measure(model, variables, mesh, images, mode: str, wrap_cols: int, runs: int):
  """``(compile s, median step s, median step CPU s)`` of the ``panorama`` function in ``mode``."""
  fn = predict_lib.jit_predict_fns(model, mesh, dict(mode=mode, wrap_cols=wrap_cols))["panorama"]
  x = shd.put_array(images, mesh)
  t0 = time.perf_counter()
  compiled = fn.lower(variables, x).compile()
  compile_s = time.perf_counter() - t0
  jax.block_until_ready(compiled(variables, x))  # warm-up
  times, cpu = [], []
  for _ in range(runs):
    t0, c0 = time.perf_counter(), time.process_time()
    jax.block_until_ready(compiled(variables, x))
    times.append(time.perf_counter() - t0)
    cpu.append(time.process_time() - c0)
  return compile_s, statistics.median(times), statistics.median(cpu)


def main():
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--b5", action="store_true",
                  help="MiT-B5 with both R-CNN branches at 400x2048 (accelerator)")
  ap.add_argument("--modes", default=",".join(defaults.SEAM_MODES),
                  help="comma-separated seam modes (flat is always measured first)")
  ap.add_argument("--wrap-cols", type=int, default=0,
                  help="P of wrap/circular_wrap (default: defaults.wrap_cols_for(W))")
  ap.add_argument("--batch", type=int, default=0,
                  help="panoramas per step (default: 4, or one per device with --b5)")
  ap.add_argument("--runs", type=int, default=5)
  ap.add_argument("--dtype", default="float32", help="--b5's compute dtype (bfloat16)")
  args = ap.parse_args()
  modes = ["flat"] + [m for m in args.modes.split(",") if m and m != "flat"]
  for m in modes:
    defaults.check_seam(m, args.wrap_cols or defaults.WRAP_MULTIPLE, what="--modes/--wrap-cols")
  mesh = shd.make_mesh()
  model, variables, (h, w) = _model(args, mesh)
  p = args.wrap_cols or defaults.wrap_cols_for(w)
  defaults.check_seam("wrap", p, w, what="--wrap-cols")
  n = args.batch or (jax.device_count() if args.b5 else 4)
  images = np.random.default_rng(0).standard_normal((n, h, w, 3)).astype(np.float32)
  print(f"{'B5' if args.b5 else 'demo model'}, {n}x{h}x{w}, P={p}, "
        f"{jax.devices()[0].device_kind} x{jax.device_count()}, {args.runs} runs")
  rows = []
  for mode in modes:
    compile_s, step, cpu = measure(model, variables, mesh, images, mode, p, args.runs)
    rows.append((mode, compile_s, step, n / step, cpu))
    print(f"  {mode}: compile {compile_s:.1f} s, step {step * 1e3:.1f} ms, "
          f"CPU {cpu * 1e3:.0f} ms", flush=True)
  flat, flat_cpu = rows[0][3], rows[0][4]
  print("\n| mode | compile s | step ms | panoramas/s | throughput vs flat | "
        "CPU ms/step | CPU vs flat |")
  print("|---|---|---|---|---|---|---|")
  for mode, compile_s, step, rate, cpu in rows:
    extra = f" (P={p}: {w + 2 * p}/{w} columns)" if "wrap" in mode else ""
    print(f"| {mode}{extra} | {compile_s:.1f} | {step * 1e3:.1f} | {rate:.2f} | "
          f"{rate / flat:.3f} | {cpu * 1e3:.0f} | {cpu / flat_cpu:.3f} |")


if __name__ == "__main__":
  main()
