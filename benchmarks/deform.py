"""Times the two DCNv2 samplers (gather vs dense einsum) at UNLOCK's sizes.

Forward+backward of the stage-2 (100×100×64 -> 50×50×128) and stage-4
(25×25×320 -> 13×13×512) modulated deformable patch-embedding convs of a
400×400 crop, jitted, median of N runs after warm-up; prints the times and the
dense/gather ratio measured in the same run.

    python benchmarks/deform.py [--quick] [--batch 2] [--runs 5]
"""

import argparse
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from unlock_jax.models import deform

# (name, input H, W, Cin, Cout) of the deformable embeddings for 400×400.
CASES = (("stage2", 100, 100, 64, 128), ("stage4", 25, 25, 320, 512))


def _time(fn, args, runs):
  jax.block_until_ready(fn(*args))  # compile + warm-up
  jax.block_until_ready(fn(*args))
  times = []
  for _ in range(runs):
    t0 = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - t0)
  return statistics.median(times)


def bench(batch: int, runs: int, cases=CASES) -> list[dict]:
  rows = []
  for name, h, w, cin, cout in cases:
    rng = np.random.default_rng(0)
    ho, wo = (h - 1) // 2 + 1, (w - 1) // 2 + 1
    x = jnp.asarray(rng.normal(size=(batch, h, w, cin)), jnp.float32)
    max_off = min(h, w) // 4
    offset = jnp.asarray(
        np.clip(rng.normal(size=(batch, ho, wo, 18)) * 3, -max_off, max_off),
        jnp.float32)
    mask = jnp.asarray(rng.uniform(0, 2, size=(batch, ho, wo, 9)),
                       jnp.float32)
    kernel = jnp.asarray(rng.normal(size=(3, 3, cin, cout)) * 0.05,
                         jnp.float32)
    row = {"case": name}
    for impl in deform.IMPLS:
      def loss(x, offset, mask, kernel, impl=impl):
        y = deform.modulated_deform_conv(x, offset, mask, kernel, None,
                                         stride=2, padding=1, impl=impl)
        return jnp.mean(y)
      fn = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2, 3)))
      row[impl] = _time(fn, (x, offset, mask, kernel), runs)
    row["dense/gather"] = row["dense"] / row["gather"]
    row["auto"] = deform.resolve_impl("auto", h, w)
    rows.append(row)
  return rows


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--quick", action="store_true",
                      help="batch 1, 3 runs")
  parser.add_argument("--batch", type=int, default=2)
  parser.add_argument("--runs", type=int, default=5)
  args = parser.parse_args()
  batch, runs = (1, 3) if args.quick else (args.batch, args.runs)
  print(f"device={jax.devices()[0].platform} batch={batch} runs={runs} "
        "(forward+backward, median seconds)")
  for row in bench(batch, runs):
    print(f"{row['case']}: gather {row['gather'] * 1e3:.1f} ms, dense "
          f"{row['dense'] * 1e3:.1f} ms, dense/gather {row['dense/gather']:.2f}"
          f" (default 'auto' uses {row['auto']})")


if __name__ == "__main__":
  main()
