"""Train-step cost of the full AmodalPASS network (semantic + modal + amodal R-CNN).

  python benchmarks/network.py              # MiT-b0 full model on CPU (2x376x376)
  python benchmarks/network.py --quick      # smaller crops / budgets, < 2 min
  python benchmarks/network.py --b5         # on an accelerator: B5, batch 8, 400x400
  python benchmarks/network.py --infer      # whole-panorama inference, 1x400x2048

Prints compile time and median step time of the full model, the same for the
semantic-only model (instance heads off) measured in the same run, the share
of the step spent in the instance branches (1 - semantic/full), and the
achieved FLOP/s from XLA's cost analysis (against the device peak if given).
"""
import argparse
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from unlock_jax import sharding as shd
from unlock_jax.models import amodalpass
from unlock_jax.models import defaults
from unlock_jax.models import layers
from unlock_jax.models import variables as variables_lib
from unlock_jax.train import optim, steps
from configs import default


def _model_cfg(backbone: str, instance_heads: bool, quick: bool):
  m = defaults.default_model_config()
  m.backbone = backbone
  m.instance_heads = instance_heads
  if quick:
    r = defaults.default_rcnn_config()
    r.rpn_samples, r.rcnn_samples = 128, 128
    r.nms_pre_train, r.max_proposals_train = 500, 300
    m.rcnn = r
  return m


def _batch(rng, b, size, n_inst):
  h = w = size
  masks = np.zeros((b, n_inst, h, w), np.uint8)
  boxes = np.zeros((b, n_inst, 4), np.float32)
  for i in range(b):
    for j in range(n_inst):
      y, x = rng.integers(0, h - 40), rng.integers(0, w - 40)
      hh, ww = rng.integers(12, 40, 2)
      masks[i, j, y:y + hh, x:x + ww] = 1
      boxes[i, j] = (x, y, x + ww - 1, y + hh - 1)
  inst = dict(masks=masks, classes=rng.integers(0, 7, (b, n_inst)).astype(np.int32),
              boxes=boxes, valid=np.ones((b, n_inst), bool))
  out = {"image": rng.standard_normal((b, h, w, 3)).astype(np.float32),
         "semantic": rng.integers(0, 18, (b, h, w)).astype(np.int32)}
  for p in ("modal", "amodal"):
    for k, v in inst.items():
      out[f"{p}_{k}"] = v
  return out


def measure(model_cfg, batch, runs: int):
  """(compile seconds, median step seconds, flops per step) of one config."""
  mesh = shd.make_mesh()
  model = amodalpass.build(model_cfg)
  cfg = default.get_config()
  rng = jax.random.key(0)
  shape = (1, *batch["image"].shape[1:])
  params = variables_lib.param_shapes(model, shape)
  tx, sched = optim.make(cfg.optim, 1000, params)
  state = steps.init_state(model, tx, rng, shape, mesh)
  if not model_cfg.instance_heads:
    batch = {k: batch[k] for k in ("image", "semantic")}
  step = steps.make_source_step(model, tx, sched, mesh, state, loss_cfg=cfg.loss)
  base = jax.device_put(jax.random.key(1), shd.replicated(mesh))
  dev_batch = shd.put_batch(batch, mesh)
  t0 = time.perf_counter()
  compiled = step.lower(state, dev_batch, base).compile()
  compile_s = time.perf_counter() - t0
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  flops = float(cost.get("flops", 0.0)) if cost else 0.0
  state, m = compiled(state, dev_batch, base)
  jax.block_until_ready(m)
  times = []
  for _ in range(runs):
    t0 = time.perf_counter()
    state, m = compiled(state, dev_batch, base)
    jax.block_until_ready(m)
    times.append(time.perf_counter() - t0)
  return compile_s, statistics.median(times), flops


def measure_infer(model_cfg, image_size, runs: int):
  """(compile s, median run s, XLA temp MiB) of full inference on one panorama.

  Semantic probabilities at full size plus both branches' padded detections
  with masks pasted into the image, as the evaluators and the predict stage
  run it.
  """
  model = amodalpass.build(model_cfg)
  shape = (1, *image_size, 3)
  variables = jax.jit(lambda r: variables_lib.init_variables(model, r, shape))(jax.random.key(0))

  def predict(v, image):
    out = model.apply(v, image, train=False)
    logits = layers.resize_bilinear(out["sem_logits"].astype(jnp.float32), image.shape[1:3])
    return {"sem": jax.nn.softmax(logits, -1),
            "modal": out["modal"], "amodal": out["amodal"]}

  image = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
  t0 = time.perf_counter()
  compiled = jax.jit(predict).lower(variables, image).compile()
  compile_s = time.perf_counter() - t0
  mem = compiled.memory_analysis()
  temp = mem.temp_size_in_bytes / 2**20 if mem is not None else float("nan")
  jax.block_until_ready(compiled(variables, image))
  times = []
  for _ in range(runs):
    t0 = time.perf_counter()
    out = jax.block_until_ready(compiled(variables, image))
    times.append(time.perf_counter() - t0)
  masks = out["modal"]["masks"]
  print(f"outputs: sem {out['sem'].shape}, modal masks {masks.shape} {masks.dtype}")
  return compile_s, statistics.median(times), temp


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--quick", action="store_true")
  ap.add_argument("--b5", action="store_true", help="B5, batch 8, 400x400 (accelerator)")
  ap.add_argument("--infer", action="store_true",
                  help="time whole-panorama inference (1x400x2048) instead")
  ap.add_argument("--runs", type=int, default=5)
  ap.add_argument("--peak_tflops", type=float, default=0.0,
                  help="device peak for the utilisation figure (e.g. 989 for H100 bf16)")
  args = ap.parse_args()
  if args.b5:
    backbone, b, size, n_inst = "mit_b5", 8, 400, 16
  elif args.quick:
    backbone, b, size, n_inst = "mit_b0", 2, 192, 6
  else:
    backbone, b, size, n_inst = "mit_b0", 2, 376, 12
  print(f"devices: {jax.devices()}")
  if args.infer:
    c, t, temp = measure_infer(_model_cfg(backbone, True, False), (400, 2048), args.runs)
    print(f"inference {backbone} 1x400x2048: compile {c:.1f} s, run {t:.2f} s, "
          f"XLA temp {temp:.0f} MiB")
    return
  batch = _batch(np.random.default_rng(0), b, size, n_inst)
  print(f"model {backbone}, batch {b}x{size}x{size}, {n_inst} instances/image")
  full = measure(_model_cfg(backbone, True, args.quick), batch, args.runs)
  sem = measure(_model_cfg(backbone, False, args.quick), batch, args.runs)
  for name, (c, t, f) in (("full (sem+modal+amodal)", full), ("semantic only", sem)):
    rate = f / t / 1e12 if t else 0.0
    util = f", {100 * rate / args.peak_tflops:.1f}% of peak" if args.peak_tflops else ""
    print(f"{name:26s} compile {c:7.1f} s  step {t * 1e3:9.1f} ms  "
          f"{f / 1e9:9.1f} GFLOP/step  {rate:.3f} TFLOP/s{util}")
  print(f"instance-branch share of the step: {1 - sem[1] / full[1]:.1%} "
        f"(ratio full/semantic {full[1] / sem[1]:.2f}x)")


if __name__ == "__main__":
  main()
