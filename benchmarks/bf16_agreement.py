r"""bfloat16 vs float32 training: do a few steps agree?

    python benchmarks/bf16_agreement.py [--step source|adapt] [--steps 5] \
        [--tiny | --depths 1,1,1,1] [--size 128] [--batch 2]

Runs the same step (``benchmarks/realsize.build``: the source step or UNLOCK's
adapt step, both Mask R-CNN branches, synthetic batches, the reference's
optimisers) from the same initial state on the same batch, once with
``model.compute_dtype="float32"`` and once with ``"bfloat16"`` (float32
parameters, logits and losses in both), and prints each step's losses side
by side with their relative difference, then the relative L2 distance of the
final parameters (to each other, and as a fraction of how far float32 moved
them). Agreement means the bf16 run follows the float32 trajectory within
bf16's rounding: loss differences of a few per cent, parameter distances far
below the distance travelled.
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _run(args, dtype):
  import jax
  import numpy as np
  import realsize
  args = argparse.Namespace(**{**vars(args), "dtype": dtype})
  fn, _, concrete = realsize.build(args)
  inputs = concrete()
  start = jax.device_get(inputs[0]["params"])
  losses = []
  for _ in range(args.steps):
    state, measurements = fn(*inputs)
    inputs = (state,) + tuple(inputs[1:])
    m = jax.device_get(measurements)
    losses.append({k: float(np.asarray(v)) for k, v in m.items() if k.startswith("loss")})
  return start, jax.device_get(inputs[0]["params"]), losses


def _l2(tree):
  import jax
  import numpy as np
  return float(np.sqrt(sum(float(np.sum(np.square(np.asarray(x, np.float64))))
                           for x in jax.tree.leaves(tree))))


def main():
  import jax
  import realsize
  ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  realsize._one_parser(ap)  # pylint: disable=protected-access
  ap.set_defaults(step="source", steps=5, size="128", scan=1)
  for action in ap._actions:  # pylint: disable=protected-access
    if action.dest == "step":
      action.required = False
  args = ap.parse_args()
  start, p32, l32 = _run(args, "float32")
  _, p16, l16 = _run(args, "bfloat16")
  keys = sorted(l32[0])
  print(f"{args.step} step, {'tiny' if args.tiny else args.depths or 'B5'} network, "
        f"batch {args.batch} x {args.size}², {args.steps} steps from the same state")
  for i, (a, b) in enumerate(zip(l32, l16)):
    rel, worst = max((abs(a[k] - b[k]) / max(abs(a[k]), 1e-6), k) for k in keys)
    print(f"step {i + 1}: loss f32 {a['loss']:.5f}  bf16 {b['loss']:.5f}  "
          f"rel diff {abs(a['loss'] - b['loss']) / abs(a['loss']):.2%} "
          f"(worst term {worst} {rel:.2%})")
  diff = jax.tree.map(lambda x, y: x - y, p32, p16)
  moved = jax.tree.map(lambda x, y: x - y, p32, start)
  print(f"final params: |p32 - p16| / |p32| = {_l2(diff) / _l2(p32):.2e}; "
        f"|p32 - p16| / |p32 - p0| = {_l2(diff) / max(_l2(moved), 1e-30):.2%}")


if __name__ == "__main__":
  main()
