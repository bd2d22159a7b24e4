r"""One accelerator check of the B5 pipeline at the reference's sizes (< 8 min on one H100).

    bash benchmarks/device.sh            # = python benchmarks/device.py
    python benchmarks/device.py --tiny   # the same code path on CPU, tiny sizes (tests)

Prints, each with its compile time apart:

* the B5 source step (both Mask R-CNN branches, ``--source-batch`` x 376²,
  the K2B config's global batch 8 on one device) and the adapt step (4 PL + 4
  unlabelled 400² crops: EMA teacher, two student forwards): median step time
  over ``--runs`` steps, XLA's FLOP count of the step (of the unrolled
  network's lowering when scanned: cost analysis counts a loop body once),
  achieved TFLOP/s and its fraction of the device's dense bf16 peak;
* predict at 2048x400 (batch ``--predict-batch``): panoramas/s;
* peak device memory (``memory_stats``) after each part, and XLA's compiled
  estimate of each step's peak;
* projections: 10,000 adaptation iterations and BlendPASS's 2,000 panoramas
  (steps only: input pipeline, checkpoints and evaluation not included).

Settings default to the accelerator configs' (configs/k2b/source_b5.py):
bf16 activations with f32 parameters and losses, scanned blocks, no remat;
``--dtype``, ``--remat``, ``--scan`` override them. The persistent
compilation cache is off so the compile times are real (``--cache DIR``
turns it on, as for training runs: README "Running at the paper's size").
"""
import argparse
import os
import statistics
import sys
import time
import types

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import realsize  # noqa: E402  benchmarks/realsize.py: the B5 steps

# Dense bf16 peaks, TFLOP/s, by device kind (first match). A CPU has none here.
BF16_PEAK = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L4": 121.0, "A10": 125.0,
             "TPU v4": 275.0, "TPU v5 lite": 197.0, "TPU v5e": 197.0, "TPU v5p": 459.0,
             "TPU v6": 918.0}
ADAPT_ITERATIONS = 10_000
BLENDPASS_PANORAMAS = 2_000


def _peak_tflops(kind: str, override: float) -> float:
  if override:
    return override
  return next((v for k, v in BF16_PEAK.items() if k.lower() in kind.lower()), 0.0)


def _device_peak_gb(jax) -> str:
  stats = getattr(jax.devices()[0], "memory_stats", lambda: None)()
  if stats and "peak_bytes_in_use" in stats:
    return f"{stats['peak_bytes_in_use'] / 1e9:.1f} GB"
  return "n/a (no memory_stats on this device)"


def measure(step: str, args, batch: int, size: str) -> dict:
  """Compile and time one step kind; returns its figures."""
  import jax
  ns = types.SimpleNamespace(step=step, batch=batch, size=size, instances=0,
                             scan=args.scan, remat=args.remat, remat_head=args.remat,
                             dtype=args.dtype, tiny=args.tiny,
                             semantic_only=args.semantic_only,
                             roi_chunk=args.roi_chunk, depths="",
                             sequential_grads=False)
  fn, abstract, concrete = realsize.build(ns)
  t = time.perf_counter()
  compiled = fn.lower(*abstract).compile()
  compile_s = time.perf_counter() - t
  flops = realsize.cost_flops(compiled)
  if args.scan:
    # XLA's cost analysis counts a loop body once: take the FLOPs of the
    # unrolled network's lowered step (traced, not compiled).
    fn_u, abstract_u, _ = realsize.build(types.SimpleNamespace(**dict(vars(ns), scan=0)))
    cost = fn_u.lower(*abstract_u).cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    flops = float(cost.get("flops", 0.0)) if cost else flops
  inputs = concrete()
  times = []
  for i in range(args.runs + 1):  # the first call is a warm-up
    t = time.perf_counter()
    out = compiled(*inputs)
    jax.block_until_ready(out)
    if i:
      times.append(time.perf_counter() - t)
    if step != "predict":  # the state was donated: carry the new one
      inputs = (out[0],) + tuple(inputs[1:])
  del inputs, out
  return {"compile_s": compile_s, "step_s": statistics.median(times),
          "flops": flops,
          "xla_peak": realsize.memory_analysis(compiled).get("peak", 0),
          "device_peak": _device_peak_gb(jax)}


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--tiny", action="store_true",
                  help="tiny model and sizes (CPU tests): same code path")
  ap.add_argument("--semantic-only", action="store_true",
                  help="without the R-CNN branches (only for quick CPU tests)")
  ap.add_argument("--dtype", default="bfloat16")
  ap.add_argument("--remat", default="none", help="blocks and decode head policy")
  ap.add_argument("--scan", type=int, default=1)
  ap.add_argument("--roi-chunk", type=int, default=32,
                  help="RoIs per exact-RoIAlign chunk (0: all at once); the B5 configs use 32")
  ap.add_argument("--source-batch", type=int, default=8)
  ap.add_argument("--adapt-batch", type=int, default=4)
  ap.add_argument("--predict-batch", type=int, default=4)
  ap.add_argument("--runs", type=int, default=5, help="timed steps per part")
  ap.add_argument("--peak_tflops", type=float, default=0.0,
                  help="the device's dense bf16 peak (default: by device kind)")
  ap.add_argument("--cache", default="", help="persistent compilation cache folder")
  ap.add_argument("--parts", default="source,adapt,predict")
  args = ap.parse_args(argv)

  import jax
  if args.cache:
    jax.config.update("jax_compilation_cache_dir", args.cache)
  else:
    jax.config.update("jax_enable_compilation_cache", False)
  dev = jax.devices()[0]
  peak = _peak_tflops(dev.device_kind, args.peak_tflops)
  src, adp, pred = ("96", "96", "64,256") if args.tiny else ("376", "400", "400,2048")
  print(f"device: {dev.device_kind} x{jax.device_count()} ({dev.platform}); model "
        f"{'tiny' if args.tiny else 'B5'}{' semantic-only' if args.semantic_only else ''}, "
        f"{args.dtype}, scan {bool(args.scan)}, remat {args.remat}; bf16 peak "
        f"{f'{peak:.0f} TFLOP/s' if peak else 'unknown (--peak_tflops)'}", flush=True)
  parts = args.parts.split(",")
  t_all = time.perf_counter()
  for step, batch, size in (("source", args.source_batch, src),
                            ("adapt", args.adapt_batch, adp),
                            ("predict", args.predict_batch, pred)):
    if step not in parts:
      continue
    r = measure(step, args, batch, size)
    rate = r["flops"] / r["step_s"] / 1e12
    frac = f" = {100 * rate / peak:.1f}% of bf16 peak" if peak else ""
    shape = f"{batch}+{batch} x {size}²" if step == "adapt" else (
        f"{batch} x {size.replace(',', 'x')}" if step == "predict" else f"{batch} x {size}²")
    print(f"{step:<8} {shape:<18} compile {r['compile_s']:6.1f} s  step "
          f"{1e3 * r['step_s']:8.1f} ms  {r['flops'] / 1e12:7.3f} TFLOP  {rate:7.2f} "
          f"TFLOP/s{frac}  XLA peak {r['xla_peak'] / 1e9:.1f} GB  device peak so far "
          f"{r['device_peak']}", flush=True)
    if step == "adapt":
      print(f"  projected {ADAPT_ITERATIONS} adaptation iterations: "
            f"{ADAPT_ITERATIONS * r['step_s'] / 3600:.2f} h of steps", flush=True)
    if step == "predict":
      per_s = batch / r["step_s"]
      print(f"  {per_s:.2f} panoramas/s; projected {BLENDPASS_PANORAMAS} BlendPASS "
            f"panoramas: {BLENDPASS_PANORAMAS / per_s / 60:.1f} min of forwards", flush=True)
  print(f"total {time.perf_counter() - t_all:.0f} s", flush=True)


if __name__ == "__main__":
  main()
