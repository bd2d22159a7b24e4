"""Plain MiT backbone: ours (jax.jit) vs HF transformers' PyTorch SegformerModel.

Forward+backward of the scalar loss = sum over the 4 feature maps of their
means, on a [2, 3, 400, 400] input (NHWC for ours), with the same MiT config
(b0, then b2) on both sides, the same number of CPU threads, warm-up runs, and
the median of N timed runs interleaved (torch, ours, torch, ...); prints both times and torch/ours (target >= 1.5).

    python benchmarks/backbone.py [--quick] [--runs 5] [--sizes mit_b0,mit_b2]
        [--threads N] [--parts]

`--quick` times b0 only, batch 1, 3 runs, 1 thread (< 1 min on a 2-core CPU).

Measured on the 2-core development VM (AMD EPYC, AVX2, no AVX-512):
  * quiet machine, 2 threads each (the default): b0 torch 361 ms / ours
    593 ms, torch/ours 0.61; b2 torch 1604 ms / ours 2359 ms, 0.68.
  * 1 thread (`--threads 1`): b0 0.55-0.70, b2 0.55 (earlier runs, load from
    other jobs).
  * `--parts --threads 1`, quiet: attention core torch 39 / ours 53 ms
    (0.80); one stage-1 block torch 119 / ours 159 ms (0.78).
  The target (>= 1.5) is NOT met on CPU: the attention core alone and a
  whole stage-1 block each run ~1.3x slower under XLA:CPU than under
  PyTorch's oneDNN/ATen kernels (the whole backbone ~1.6x), so no single
  rewrite closes the 2.4x that is missing.
Changes kept (each measured): the depthwise 3×3 conv as shift-adds with a
custom VJP (grouped conv fwd+bwd 300 ms -> 16 ms at 100×100×128), its kernel
gradient as contiguous windows under `lax.map` (38 -> 11 ms), and an exact
GELU with an explicit derivative (Mix-FFN 64 -> 31 ms).
Tried and dropped (slower or inexact): scores laid out [b, heads, keys,
queries] for a major-axis softmax (attention core 59 -> 81 ms); a
flash-style attention VJP normalising after the value product (76 ms); a
fused depthwise-conv+GELU VJP with a materialised pre-activation and per-tap
padding (30 -> 69 ms); an optimisation barrier after the Mix-FFN depthwise
conv so XLA stops recomputing it in three fusions (block 136 -> 135 ms); XLA
flags `--xla_cpu_prefer_vector_width=512` (no
change), `--xla_cpu_use_fusion_emitters=false` and no YNNPACK fusions (no
gain), `--xla_cpu_use_onednn`/`--xla_cpu_use_xnnpack` (0.81, 0.66),
`--xla_cpu_enable_fast_math=true` (0.67, but approximate erf/exp); glibc
`MALLOC_MMAP_MAX_=0` (faster standalone elementwise ops, block unchanged).
"""

import argparse
import os
import statistics
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from unlock_jax.models import mit as mit_lib  # noqa: E402


def ours_step(name: str, batch: int, size: int):
  """A zero-argument callable running one jitted forward+backward of ours."""
  model = mit_lib.mit(name, drop_path_rate=0.0, norm_eps=1e-5)
  x = jnp.asarray(np.random.default_rng(0).normal(
      size=(batch, size, size, 3)), jnp.float32)
  params = jax.jit(lambda k: model.init(k, x, train=False))(
      jax.random.key(0))["params"]

  def loss(p, x):
    feats = model.apply({"params": p}, x, train=False)
    return sum(jnp.mean(f) for f in feats)

  step_fn = jax.jit(jax.value_and_grad(loss))
  return lambda: jax.block_until_ready(step_fn(params, x))


def torch_step(name: str, batch: int, size: int, threads: int):
  """The same for HF transformers' PyTorch SegformerModel."""
  import torch  # pylint: disable=g-import-not-at-top
  import transformers  # pylint: disable=g-import-not-at-top

  torch.set_num_threads(threads)
  model = transformers.SegformerModel(_hf_config(name)).train()
  x = torch.from_numpy(np.random.default_rng(0).normal(
      size=(batch, 3, size, size)).astype(np.float32))

  def step():
    model.zero_grad(set_to_none=True)
    out = model(x, output_hidden_states=True)
    loss = sum(h.mean() for h in out.hidden_states)
    loss.backward()

  return step


def part_steps(part: str, batch: int, size: int, threads: int) -> dict:
  """One stage-1 piece of MiT-b0 (the stage where the gap is), both sides.

  ``attend``: softmax(q·kᵀ)·v over the 10^4 tokens and 12² reduced keys of a
  400² input; ``block``: one whole transformer block (HF `SegformerLayer`).
  """
  import torch  # pylint: disable=g-import-not-at-top
  from transformers.models.segformer import modeling_segformer as hf  # pylint: disable=g-import-not-at-top

  torch.set_num_threads(threads)
  s = mit_lib.mit_size("mit_b0")
  c, heads, sr, n = s.dims[0], s.heads[0], s.sr_ratios[0], size // 4
  m = (n // sr) ** 2
  rng = np.random.default_rng(0)
  if part == "attend":
    shapes = [(batch, n * n, heads, c // heads)] + [(batch, m, heads, c // heads)] * 2
    args = [jnp.asarray(rng.normal(size=sh), jnp.float32) for sh in shapes]
    f = jax.jit(jax.grad(lambda *a: jnp.mean(mit_lib.attend(*a) ** 2), argnums=(0, 1, 2)))
    ours = lambda: jax.block_until_ready(f(*args))  # noqa: E731
    targs = [torch.tensor(np.asarray(a)).permute(0, 2, 1, 3).contiguous().requires_grad_()
             for a in args]
    scale = (c // heads) ** -0.5

    def theirs():
      q, k, v = targs
      out = torch.softmax(q @ k.transpose(-1, -2) * scale, -1) @ v
      (out ** 2).mean().backward()
  elif part == "block":
    block = mit_lib.Block(c, heads, sr, 4, 0.0, False, 1e-5)
    x = jnp.asarray(rng.normal(size=(batch, n, n, c)), jnp.float32)
    params = block.init(jax.random.key(0), x, False)["params"]
    # x is an argument, not a closed-over constant XLA could fold.
    f = jax.jit(jax.grad(lambda p, x: jnp.mean(block.apply({"params": p}, x, False) ** 2)))
    ours = lambda: jax.block_until_ready(f(params, x))  # noqa: E731
    cfg = _hf_config("mit_b0")
    layer = hf.SegformerLayer(cfg, hidden_size=c, num_attention_heads=heads,
                              drop_path=0.0, sequence_reduction_ratio=sr,
                              mlp_ratio=4)
    xt = torch.from_numpy(np.asarray(x).reshape(batch, n * n, c))

    def theirs():
      layer.zero_grad(set_to_none=True)
      (layer(xt, n, n)[0] ** 2).mean().backward()
  else:
    raise ValueError(f"unknown part {part!r}")
  return {"torch": theirs, "ours": ours}


def _hf_config(name: str):
  import transformers  # pylint: disable=g-import-not-at-top
  s = mit_lib.mit_size(name)
  return transformers.SegformerConfig(
      depths=list(s.depths), hidden_sizes=list(s.dims),
      num_attention_heads=list(s.heads), sr_ratios=list(s.sr_ratios),
      hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
      drop_path_rate=0.0)


def compare(name: str, batch: int, size: int, runs: int, threads: int,
            warmup: int = 2) -> dict:
  """Interleaves torch and ours run by run, so load changes hit both."""
  if name.startswith("part:"):
    steps = part_steps(name[5:], batch, size, threads)
  else:
    steps = {"torch": torch_step(name, batch, size, threads),
             "ours": ours_step(name, batch, size)}
  for step in steps.values():
    for _ in range(warmup):
      step()
  times = {k: [] for k in steps}
  for _ in range(runs):
    for k, step in steps.items():
      t0 = time.perf_counter()
      step()
      times[k].append(time.perf_counter() - t0)
  ratios = [t / o for t, o in zip(times["torch"], times["ours"])]
  return {"torch": statistics.median(times["torch"]),
          "ours": statistics.median(times["ours"]),
          "ratio": statistics.median(ratios)}


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--quick", action="store_true")
  parser.add_argument("--runs", type=int, default=5)
  parser.add_argument("--batch", type=int, default=2)
  parser.add_argument("--size", type=int, default=400)
  parser.add_argument("--sizes", default="mit_b0,mit_b2")
  parser.add_argument("--parts", action="store_true",
                      help="time stage-1 pieces of b0 instead (attention "
                      "core, one block)")
  parser.add_argument("--threads", type=int, default=None,
                      help="CPU threads for both (default: all cores, 1 with "
                      "--quick); 1 also makes XLA single-threaded (steadier "
                      "on a shared machine)")
  args = parser.parse_args()
  if args.threads is None:
    args.threads = 1 if args.quick else (os.cpu_count() or 1)
  if args.threads == 1:
    # Must precede the first JAX computation (backends start lazily).
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                               " --xla_cpu_multi_thread_eigen=false")
  sizes = args.sizes.split(",")
  batch, runs = args.batch, args.runs
  if args.quick:
    sizes, batch, runs = ["mit_b0"], 1, 3
  if args.parts:
    sizes = ["part:attend", "part:block"]
    runs = max(runs, 10)
  threads = args.threads
  print(f"CPU threads {threads}, input [{batch}, 3, {args.size}, "
        f"{args.size}], forward+backward, median of {runs}")
  for name in sizes:
    r = compare(name, batch, args.size, runs, threads)
    print(f"{name}: torch {r['torch'] * 1e3:.0f} ms, ours {r['ours'] * 1e3:.0f}"
          f" ms (medians), torch/ours {r['ratio']:.2f} (median of per-run "
          "ratios)", flush=True)

if __name__ == "__main__":
  main()
