r"""AmodalPASS-B5 at the reference's sizes: compile time, step time, peak memory.

    python benchmarks/realsize.py run NAME [NAME ...] [--lock /work/heavy.lock] \
        [--out realsize.jsonl]          # each NAME in its own subprocess
    python benchmarks/realsize.py report [--out realsize.jsonl]   # table + ratios
    python benchmarks/realsize.py one --step source --scan 1 ...  # one setting

Every setting runs in a fresh subprocess (``one``), so its peak resident set
(``ru_maxrss`` of that process: compile and steps together) belongs to that
setting alone; ``run`` appends each result as one JSON line to ``--out`` and
``report`` prints what the file holds: the ratios of the issue's targets
(scanned vs unrolled compile and step time, the source step's peak memory
against the 19.7 GB measured before scan/remat, the adapt step at the
reference's 4 + 4 crops) and XLA's compiled memory analysis of every setting.

Steps (``--step``), all with both Mask R-CNN branches, synthetic batches
(``benchmarks/adapt.b5_batch``), the reference's optimisers:

* ``source``: ``steps.make_source_step``, ``--batch`` x ``--size``² crops, 64
  instances per branch (configs/k2b/source_b5.py);
* ``adapt``: ``methods/unlock.make_step``, ``--batch`` PL + ``--batch`` unlabelled
  crops of ``--size``², 32 instances (teacher + two student forwards);
* ``predict``: whole ``--size``=H,W panoramas, batch ``--batch``, the store's
  outputs (semantic argmax and confidence at image size, both branches'
  detections).

``--sequential-grads`` and ``--roi-chunk N`` switch on the adapt step's
memory settings (``config.adapt.sequential_grads``,
``config.model.rcnn.roi_chunk``); ``--depths a,b,c,d`` keeps B5's widths with
fewer blocks (a cheap memory analysis of everything but the backbone depth).

``--compile-only`` lowers against abstract state (nothing allocated) and
reports the compiled memory analysis: argument + output + temporaries −
aliased (donated) bytes, XLA's estimate of the step's peak device memory. On
a CPU build the buffer assignment is only an estimate of a GPU's (other
fusion, no cuDNN workspaces; bf16 ops may run as f32 on CPU).

Named runs (``run``): see ``RUNS`` below. The persistent compilation cache is
off in the subprocesses (a cached executable would hide the compile time).
"""
import argparse
import fcntl
import json
import os
import resource
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
BEFORE_SOURCE_GB = 19.7  # B5 source step, batch 2 x 376², unrolled f32, no remat

_B5_SOURCE = ["--step", "source", "--batch", "2", "--size", "376", "--steps", "2"]
_B5_ADAPT = ["--step", "adapt", "--batch", "4", "--size", "400", "--steps", "1"]
_B5_PREDICT = ["--step", "predict", "--batch", "2", "--size", "400,2048", "--steps", "2"]
_REMAT = ["--remat", "full", "--remat-head", "full"]
_BF16 = ["--dtype", "bfloat16"]
_CHUNK = ["--roi-chunk", "32"]
RUNS = {
    # scanned vs unrolled at the same memory settings (compile and step time)
    "source_unrolled": _B5_SOURCE + ["--scan", "0"],
    "source_scan": _B5_SOURCE + ["--scan", "1"],
    "source_scan_remat": _B5_SOURCE + ["--scan", "1"] + _REMAT,
    # the B5 configs' settings (scan, bf16, chunked RoIAlign) + remat full
    "source_scan_remat_bf16_chunk": _B5_SOURCE + ["--scan", "1"] + _REMAT + _BF16 + _CHUNK,
    "source_scan_bf16_chunk": _B5_SOURCE + ["--scan", "1"] + _BF16 + _CHUNK,
    "adapt_scan_remat": _B5_ADAPT + ["--scan", "1"] + _REMAT,
    "adapt_scan_remat_bf16": _B5_ADAPT + ["--scan", "1"] + _REMAT + _BF16,
    # + the exact RoIAlign 32 RoIs at a time (model.rcnn.roi_chunk)
    "adapt_scan_remat_bf16_chunk": _B5_ADAPT + ["--scan", "1"] + _REMAT + _BF16 + _CHUNK,
    # + one loss term's gradient at a time (adapt.sequential_grads)
    "adapt_scan_remat_bf16_chunk_seq": _B5_ADAPT + ["--scan", "1"] + _REMAT + _BF16 + _CHUNK
                                       + ["--sequential-grads"],
    # half the reference's crops (2 + 2), as tried before scan/remat/bf16
    "adapt_half_scan_remat_bf16": ["--step", "adapt", "--batch", "2", "--size", "400",
                                   "--steps", "2", "--scan", "1"] + _REMAT + _BF16,
    "predict_scan": _B5_PREDICT + ["--scan", "1"],
    "predict_unrolled": _B5_PREDICT + ["--scan", "0"],
}
# The accelerator table: compile only, per-device batch of the K2B source
# config's global 8 on 1 and 4 devices, the adapt step, predict.
for _dt, _dargs in (("f32", []), ("bf16", _BF16)):
  for _rm, _rargs in (("", []), ("_remat", _REMAT)):
    for _b in (8, 2):
      RUNS[f"table_source_b{_b}_{_dt}{_rm}"] = [
          "--step", "source", "--batch", str(_b), "--size", "376", "--scan", "1",
          "--compile-only"] + _dargs + _rargs
    RUNS[f"table_adapt_{_dt}{_rm}"] = _B5_ADAPT + ["--scan", "1", "--compile-only"] + \
        _dargs + _rargs
  RUNS[f"table_adapt_semantic_{_dt}_remat"] = _B5_ADAPT + [
      "--scan", "1", "--compile-only", "--semantic-only"] + _dargs + _REMAT
  RUNS[f"table_predict_{_dt}"] = _B5_PREDICT + ["--scan", "1", "--compile-only"] + _dargs
  RUNS[f"table_adapt_{_dt}_remat_chunk"] = _B5_ADAPT + [
      "--scan", "1", "--compile-only"] + _dargs + _REMAT + _CHUNK


def _maxrss_gb() -> float:
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB -> GiB


def model_config(args):
  """The B5 network (or the tiny one) with both R-CNN branches and ``args``' settings."""
  from unlock_jax.models import defaults
  m = defaults.tiny_model_config() if args.tiny else defaults.default_model_config()
  m.instance_heads = not getattr(args, "semantic_only", False)
  m.scan_blocks = bool(args.scan)
  m.remat, m.remat_head = args.remat, args.remat_head
  m.compute_dtype = args.dtype
  m.rcnn.roi_chunk = args.roi_chunk
  if args.depths:
    m.backbone = "custom"
    m.mit.depths = tuple(int(d) for d in args.depths.split(","))
  return m


def memory_analysis(compiled) -> dict:
  """XLA's buffer assignment of a compiled step, in bytes (peak = args + out + temp - alias)."""
  m = compiled.memory_analysis()
  if m is None:
    return {}
  out = {k: int(getattr(m, f"{k}_size_in_bytes", 0))
         for k in ("argument", "output", "temp", "alias", "generated_code")}
  out["peak"] = out["argument"] + out["output"] + out["temp"] - out["alias"]
  return out


def cost_flops(compiled) -> float:
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  return float(cost.get("flops", 0.0)) if cost else 0.0


def build(args):
  """(jitted fn, abstract args, make concrete args) for ``args.step``."""
  import jax
  import jax.numpy as jnp
  import numpy as np
  from adapt import b5_batch  # benchmarks/adapt.py: the synthetic B5 batch
  from configs import default
  from unlock_jax import sharding as shd
  from unlock_jax.data import keys
  from unlock_jax.models import amodalpass
  from unlock_jax.models import layers
  from unlock_jax.models import variables as variables_lib
  from unlock_jax.methods import unlock
  from unlock_jax.train import adapt as adapt_lib
  from unlock_jax.train import optim, steps

  mesh = shd.make_mesh()
  repl, data = shd.replicated(mesh), shd.data_sharding(mesh)
  c = default.get_config()
  model = amodalpass.build(model_config(args))
  size = tuple(int(s) for s in args.size.split(","))
  hw = size * 2 if len(size) == 1 else size
  init = jax.jit(lambda r: variables_lib.init_variables(model, r, (1, *hw, 3)))
  abstract_vars = jax.eval_shape(init, jax.random.key(0))

  def sds(x, sharding):
    return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding)
  a_params = jax.tree.map(lambda x: sds(x, repl), abstract_vars["params"])
  base = jax.device_put(jax.random.key(1), repl)

  if args.step == "predict":
    def predict(variables, image):
      out = model.apply(variables, image, train=False)
      logits = layers.resize_bilinear(out["sem_logits"].astype(jnp.float32), hw)
      res = {"semantic": jnp.argmax(logits, -1).astype(jnp.uint8),
             "confidence": jnp.max(jax.nn.softmax(logits, -1), -1)}
      return res | {b: out[b] for b in ("modal", "amodal") if b in out}
    fn = jax.jit(predict, out_shardings=data)
    image = np.random.default_rng(0).standard_normal((args.batch, *hw, 3), np.float32)
    a_vars = jax.tree.map(lambda x: sds(x, repl), abstract_vars)
    return fn, (a_vars, sds(image, data)), lambda: (
        jax.device_put(init(jax.random.key(0)), repl), jax.device_put(image, data))

  n_inst = int(args.instances or (64 if args.step == "source" else 32))
  host = b5_batch(np.random.default_rng(0), args.batch, hw[0], n_inst)
  if args.step == "source":
    host.pop(keys.UNLABELED_IMAGE)
    tx, sched = optim.make(c.optim, c.total_steps, abstract_vars["params"])
    a_state = jax.tree.map(lambda x: sds(x, repl), jax.eval_shape(
        lambda r: steps.init_state(model, tx, r, (1, *hw, 3), mesh), jax.random.key(0)))
    fn = steps.make_source_step(model, tx, sched, mesh, a_state, loss_cfg=c.loss)
    a_batch = {k: sds(v, data) for k, v in host.items()}
    return fn, (a_state, a_batch, base), lambda: (
        steps.init_state(model, tx, jax.random.key(0), (1, *hw, 3), mesh),
        shd.put_batch(host, mesh), base)

  a = c.adapt
  a.sequential_grads = bool(args.sequential_grads)
  tx, sched = optim.make(a.optim, a.total_steps, abstract_vars["params"])
  a_state = jax.tree.map(lambda x: sds(x, repl), jax.eval_shape(
      lambda v: adapt_lib.init_state(v, tx, mesh), abstract_vars))
  fn = unlock.make_step(model, tx, sched, mesh, a_state, cfg=a)
  a_batch = {k: sds(v, data) for k, v in host.items()}

  def concrete():
    variables = init(jax.random.key(0))
    return (adapt_lib.init_state(variables, tx, mesh), shd.put_batch(host, mesh),
            jax.device_put(variables["params"], repl), base)
  return fn, (a_state, a_batch, a_params, base), concrete


def one(args) -> dict:
  """Lowers, compiles and (unless --compile-only) runs one setting; returns its figures."""
  import jax
  jax.config.update("jax_enable_compilation_cache", False)
  try:  # on a shared machine, this process is the one to kill when memory runs out
    with open("/proc/self/oom_score_adj", "w") as f:
      f.write("1000")
  except OSError:
    pass
  res = {"step": args.step, "batch": args.batch, "size": args.size, "scan": bool(args.scan),
         "remat": args.remat, "remat_head": args.remat_head, "dtype": args.dtype,
         "tiny": args.tiny, "semantic_only": args.semantic_only,
         "sequential_grads": args.sequential_grads, "roi_chunk": args.roi_chunk,
         "device": jax.devices()[0].device_kind,
         "devices": jax.device_count()}
  t = time.perf_counter()
  fn, abstract, concrete = build(args)
  lowered = fn.lower(*abstract)
  res["lower_s"] = time.perf_counter() - t
  t = time.perf_counter()
  compiled = lowered.compile()
  res["compile_s"] = time.perf_counter() - t
  res["flops"] = cost_flops(compiled)
  res["memory"] = memory_analysis(compiled)
  res["rss_after_compile_gb"] = _maxrss_gb()
  if args.compile_only:
    return res
  inputs = concrete()
  del abstract
  times = []
  for _ in range(args.steps):
    t = time.perf_counter()
    out = compiled(*inputs)
    jax.block_until_ready(out)
    times.append(time.perf_counter() - t)
    if args.step != "predict":  # the state was donated: carry the new one
      inputs = (out[0],) + tuple(inputs[1:])
  res["step_s"] = times
  res["rss_peak_gb"] = _maxrss_gb()
  stats = getattr(jax.devices()[0], "memory_stats", lambda: None)()
  if stats and "peak_bytes_in_use" in stats:
    res["device_peak_bytes"] = int(stats["peak_bytes_in_use"])
  return res


def _one_parser(ap):
  ap.add_argument("--step", choices=("source", "adapt", "predict"), required=True)
  ap.add_argument("--batch", type=int, default=2)
  ap.add_argument("--size", default="376", help="crop side, or H,W for predict")
  ap.add_argument("--instances", type=int, default=0, help="per branch (0: the config's)")
  ap.add_argument("--scan", type=int, default=1)
  ap.add_argument("--remat", default="none")
  ap.add_argument("--remat-head", default="none")
  ap.add_argument("--dtype", default="float32")
  ap.add_argument("--steps", type=int, default=2)
  ap.add_argument("--compile-only", action="store_true")
  ap.add_argument("--tiny", action="store_true", help="the tiny model (tests)")
  ap.add_argument("--semantic-only", action="store_true", help="without the R-CNN branches")
  ap.add_argument("--sequential-grads", action="store_true",
                  help="adapt: config.adapt.sequential_grads (one loss term's gradient at a time)")
  ap.add_argument("--roi-chunk", type=int, default=0,
                  help="model.rcnn.roi_chunk (exact RoIAlign on this many RoIs at a time)")
  ap.add_argument("--depths", default="", help="MiT depths a,b,c,d (memory analysis of "
                  "a shallower network with B5's widths; empty: the named backbone's)")


def _exclusive(lock: str, wait: float):
  """An exclusive flock on ``lock`` (a machine shared with test runs), or None after
  ``wait`` seconds: shared holders that keep overlapping never let a blocking
  exclusive request in, so the run then goes ahead without it; its subprocess
  volunteers first for the OOM killer (``oom_score_adj`` 1000), not the tests."""
  f = open(lock, "a")  # pylint: disable=consider-using-with
  deadline = time.time() + wait
  while True:
    try:
      fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
      return f
    except BlockingIOError:
      if time.time() > deadline:
        f.close()
        return None
      time.sleep(0.2)


def run(names, out_path, lock, timeout, lock_wait):
  """Each named setting in its own subprocess (exclusive ``lock``); JSON lines to out."""
  for name in names:
    if name not in RUNS:
      raise SystemExit(f"unknown run {name!r}; known: {', '.join(RUNS)}")
  for name in names:
    cmd = [sys.executable, os.path.abspath(__file__), "one", *RUNS[name]]
    t = time.time()
    held = _exclusive(lock, lock_wait) if lock else None
    print(f"[{time.strftime('%H:%M:%S')}] {name}: {' '.join(RUNS[name])} "
          f"({'exclusive lock' if held else 'no lock'})", flush=True)
    try:
      proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                            cwd=ROOT, check=False)
    finally:
      if held:
        held.close()
    lines = [l for l in proc.stdout.splitlines() if l.startswith("RESULT ")]
    if proc.returncode or not lines:
      res = {"error": f"exit {proc.returncode}: {proc.stderr[-2000:]}"}
    else:
      res = json.loads(lines[-1][len("RESULT "):])
    res.update(name=name, wall_s=time.time() - t, when=time.strftime("%Y-%m-%d %H:%M:%S"),
               exclusive=bool(held))
    with open(out_path, "a") as f:
      f.write(json.dumps(res) + "\n")
    print(f"  -> {_row(res)}", flush=True)


def _gb(b):
  return f"{b / 1e9:6.2f}" if b else "     -"


def _row(r) -> str:
  if "error" in r:
    return f"{r['name']}: FAILED {r['error'][-300:]}"
  steps = r.get("step_s") or []
  step = f"{steps[-1]:7.1f} s" if steps else "      -"
  mem = r.get("memory", {})
  rss = r.get("rss_peak_gb") or r.get("rss_after_compile_gb")
  return (f"{r['name']:<28} compile {r['compile_s']:6.1f} s  step {step}  peak RSS "
          f"{rss:5.1f} GiB  XLA peak {_gb(mem.get('peak'))} GB (temp "
          f"{_gb(mem.get('temp'))})  {r['flops'] / 1e12:6.2f} TFLOP")


def report(out_path):
  rows = {}
  with open(out_path) as f:
    for line in f:
      r = json.loads(line)
      rows[r["name"]] = r  # the latest run of each name
  for r in rows.values():
    print(_row(r))
  u, s = rows.get("source_unrolled"), rows.get("source_scan")
  if u and s and "error" not in u and "error" not in s:
    print(f"\nscan: compile {u['compile_s']:.0f} s unrolled / {s['compile_s']:.0f} s "
          f"scanned = {u['compile_s'] / s['compile_s']:.1f}x faster (target >= 3x); "
          f"step {s['step_s'][-1]:.1f} s scanned vs {u['step_s'][-1]:.1f} s unrolled = "
          f"{s['step_s'][-1] / u['step_s'][-1]:.2f}x (target within 10%)")
  r = rows.get("source_scan_remat")
  if r and "error" not in r:
    print(f"source step, batch 2 x 376², scan + remat full: peak RSS "
          f"{r['rss_peak_gb']:.1f} GiB vs {BEFORE_SOURCE_GB} GB before = "
          f"{BEFORE_SOURCE_GB / r['rss_peak_gb']:.2f}x less (target <= 12 GB)")
  for name in ("adapt_scan_remat", "adapt_scan_remat_bf16", "adapt_half_scan_remat_bf16",
               "adapt_scan_remat_bf16_chunk", "adapt_scan_remat_bf16_chunk_seq"):
    r = rows.get(name)
    if r and "error" in r:
      print(f"{name}: did not complete ({r['error'][:60].strip()}; exit -9 is the OOM killer)")
    elif r:
      print(f"{name}: completed, step {r['step_s'][-1]:.0f} s, peak RSS "
            f"{r['rss_peak_gb']:.1f} GiB, compile {r['compile_s']:.0f} s")


def main():
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  sub = ap.add_subparsers(dest="cmd", required=True)
  r = sub.add_parser("run")
  r.add_argument("names", nargs="+")
  r.add_argument("--out", default="realsize.jsonl")
  r.add_argument("--lock", default="")
  r.add_argument("--timeout", type=float, default=3600)
  r.add_argument("--lock-wait", type=float, default=300,
                 help="seconds to wait for the exclusive lock before running without")
  p = sub.add_parser("report")
  p.add_argument("--out", default="realsize.jsonl")
  _one_parser(sub.add_parser("one"))
  args = ap.parse_args()
  if args.cmd == "run":
    run(args.names, args.out, args.lock, args.timeout, args.lock_wait)
  elif args.cmd == "report":
    report(args.out)
  else:
    sys.path.insert(0, ROOT)
    print("RESULT " + json.dumps(one(args)), flush=True)


if __name__ == "__main__":
  main()
