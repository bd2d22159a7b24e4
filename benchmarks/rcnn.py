"""Mask R-CNN branch cost on the local backend: compile time, step time and
XLA's peak-memory estimate for mask pasting, RoIAlign, inference and the
train loss.

Usage: python benchmarks/rcnn.py [paste|roi|infer|loss ...] [--batch B]
Sizes follow the reference: panoramas 400×2048 for paste/inference, crops
400×400 for the loss, default (reference) budgets unless --tiny.
``roi`` times the exact RoIAlign (``roi_max_samples=0``) against the capped
form (2 samples per axis) in the same run, at the B5 sizes and at the tiny
CPU config's, and prints exact / capped.
"""
import argparse
import resource
import time

import jax
import jax.numpy as jnp
import numpy as np

from unlock_jax.data.layouts import common as layouts_common
from unlock_jax.models import defaults
from unlock_jax.models.rcnn import branch
from unlock_jax.models.rcnn import roi_align
from unlock_jax.models.rcnn import roi_heads

STRIDES = (4, 8, 16, 32, 64)


def _mem(compiled) -> str:
  m = compiled.memory_analysis()
  if m is None:
    return "memory analysis unavailable"
  mib = lambda b: b / 2**20
  return (f"args {mib(m.argument_size_in_bytes):.1f} MiB, out "
          f"{mib(m.output_size_in_bytes):.1f} MiB, temp "
          f"{mib(m.temp_size_in_bytes):.1f} MiB")


def _time(fn, *args, reps=3):
  t0 = time.perf_counter()
  compiled = jax.jit(fn).lower(*args).compile()
  t_compile = time.perf_counter() - t0
  jax.block_until_ready(compiled(*args))
  t0 = time.perf_counter()
  for _ in range(reps):
    jax.block_until_ready(compiled(*args))
  return compiled, t_compile, (time.perf_counter() - t0) / reps


def _fpn(b, h, w, c):
  rs = np.random.RandomState(0)
  return [jnp.asarray(rs.normal(size=(b, -(-h // s), -(-w // s), c)),
                      jnp.float32) for s in STRIDES]


def bench_paste(args):
  h, w, d = 400, 2048, 100
  rs = np.random.RandomState(0)
  probs = jnp.asarray(rs.uniform(size=(args.batch, d, 28, 28)), jnp.float32)
  xy = rs.uniform(0, 300, (args.batch, d, 2))
  wh = rs.uniform(10, 200, (args.batch, d, 2))
  boxes = jnp.asarray(np.concatenate([xy, xy + wh], -1), jnp.float32)
  for chunk in (1, 10, 100):
    fn = lambda p, b, chunk=chunk: jax.vmap(
        lambda pp, bb: roi_heads.paste_masks(pp, bb, (h, w), 0.5, chunk))(
            p, b)
    compiled, tc, ts = _time(fn, probs, boxes)
    print(f"paste {args.batch}x{d} masks into {h}x{w}, chunk {chunk}: "
          f"compile {tc:.1f}s, run {ts * 1e3:.0f} ms, {_mem(compiled)}")


def _rois(rs, n, h, w):
  """Proposal-like boxes: log-uniform sizes 8..min(H, W) px, aspect ratio
  e^U(-1, 1), clipped to the image."""
  side = np.exp(rs.uniform(np.log(8), np.log(min(h, w)), n))
  ar = np.exp(rs.uniform(-1, 1, n))
  bw, bh = side * np.sqrt(ar), side / np.sqrt(ar)
  x0, y0 = rs.uniform(0, w, n) - bw / 2, rs.uniform(0, h, n) - bh / 2
  b = np.stack([x0, y0, x0 + bw, y0 + bh], -1)
  b[:, 0::2] = np.clip(b[:, 0::2], 0, w)
  b[:, 1::2] = np.clip(b[:, 1::2], 0, h)
  return jnp.asarray(b, jnp.float32)


def bench_roi(args):
  """Exact vs capped RoIAlign of one batch: train crops (features and their
  gradient; sampled RoIs and positives) and panorama inference (proposals,
  detections), at the B5 sizes and at the tiny config's."""
  big, tiny = defaults.default_rcnn_config(), defaults.tiny_rcnn_config()
  p_big = int(big.rcnn_samples * big.rcnn_pos_fraction)
  p_tiny = int(tiny.rcnn_samples * tiny.rcnn_pos_fraction)
  cases = (  # name, (H, W), channels, [(RoIs, output size)], with gradient
      ("B5 train 400x400", (400, 400), 256,
       [(big.rcnn_samples, 7), (p_big, 14)], True),
      ("B5 infer 400x2048", (400, 2048), 256,
       [(big.max_proposals_test, 7), (big.max_dets, 14)], False),
      ("tiny train 64x128", (64, 128), 16,
       [(tiny.rcnn_samples, 7), (p_tiny, 14)], True),
      ("tiny infer 64x128", (64, 128), 16,
       [(tiny.max_proposals_test, 7), (tiny.max_dets, 14)], False))
  rs = np.random.RandomState(0)
  dt = jnp.dtype(args.dtype)
  for name, (h, w), c, jobs, grad in cases:
    feats = [f.astype(dt) for f in _fpn(args.batch, h, w, c)[:4]]
    rois = [jnp.stack([_rois(rs, n, h, w) for _ in range(args.batch)])
            for n, _ in jobs]
    times = {}
    for slots in (0, 2):
      def fwd(fs, rois, slots=slots):
        outs = []
        for r, (_, size) in zip(rois, jobs):
          fn = lambda f, b, size=size: roi_align.multilevel_roi_align(
              f, b, size, STRIDES[:4], 0, 56.0, slots)
          outs.append(jax.vmap(fn)(fs, r))
        return sum(jnp.sum(o.astype(jnp.float32) ** 2) for o in outs)
      fn = jax.grad(fwd) if grad else fwd
      compiled, tc, ts = _time(fn, feats, rois)
      times[slots] = ts
      print(f"roi {name} B={args.batch} {'fwd+bwd' if grad else 'fwd'} "
            f"{'exact' if slots == 0 else 'capped 2'}: compile {tc:.1f}s, "
            f"run {ts * 1e3:.1f} ms, {_mem(compiled)}")
    print(f"roi {name}: exact / capped = {times[0] / times[2]:.2f}")


def _model(args):
  cfg = defaults.tiny_rcnn_config() if args.tiny else (
      defaults.default_rcnn_config())
  if args.roi_max_samples is not None:
    cfg.roi_max_samples = args.roi_max_samples
  model = branch.MaskRCNNBranch(branch.freeze(cfg), dtype=jnp.dtype(args.dtype))
  return model, cfg


def bench_infer(args):
  model, cfg = _model(args)
  h, w = 400, 2048
  fpn = _fpn(args.batch, h, w, args.channels)
  v = jax.jit(lambda k: model.init({"params": k}, fpn,
                                   method=branch.MaskRCNNBranch.init_heads))(
                                       jax.random.key(0))
  fn = lambda v, f: model.apply(v, f, (h, w), train=False)
  compiled, tc, ts = _time(fn, v, fpn, reps=1)
  print(f"inference B={args.batch} {h}x{w} ({args.dtype}): compile "
        f"{tc:.1f}s, run {ts:.2f}s, {_mem(compiled)}")


def bench_loss(args):
  model, cfg = _model(args)
  h = w = 400
  n = 16
  fpn = _fpn(args.batch, h, w, args.channels)
  rs = np.random.RandomState(1)
  masks = np.zeros((args.batch, n, h, w), np.uint8)
  for b in range(args.batch):
    for i in range(8):
      y, x = rs.randint(0, 300, 2)
      hh, ww = rs.randint(10, 100, 2)
      masks[b, i, y:y + hh, x:x + ww] = 1
      masks[b, i, y:y + 2, x:x + ww] = 255
  targets = dict(masks=jnp.asarray(masks),
                 classes=jnp.asarray(rs.randint(0, 7, (args.batch, n)),
                                     jnp.int32),
                 boxes=jnp.asarray(np.stack(
                     [layouts_common.boxes_from_masks(m) for m in masks])),
                 valid=jnp.asarray(np.arange(n)[None].repeat(args.batch, 0)
                                   < 8))
  v = jax.jit(lambda k: model.init({"params": k}, fpn,
                                   method=branch.MaskRCNNBranch.init_heads))(
                                       jax.random.key(0))

  # Targets are arguments (as in training), not folded-in constants.
  def fn(p, f, t):
    def total(p):
      out = model.apply({"params": p}, f, (h, w), train=True,
                        targets=t, rngs={"sampling": jax.random.key(1)})
      return sum(out.values())
    return jax.value_and_grad(total)(p)

  compiled, tc, ts = _time(fn, v["params"], fpn, targets, reps=1)
  print(f"loss+grad B={args.batch} {h}x{w} N={n} ({args.dtype}): compile "
        f"{tc:.1f}s, run {ts:.2f}s, {_mem(compiled)}")


def main():
  p = argparse.ArgumentParser()
  p.add_argument("what", nargs="*", default=["paste"])
  p.add_argument("--batch", type=int, default=1)
  p.add_argument("--channels", type=int, default=256)
  p.add_argument("--dtype", default="float32")
  p.add_argument("--tiny", action="store_true")
  p.add_argument("--roi-max-samples", type=int, default=None,
                 help="infer/loss: 0 exact RoIAlign, K capped (config default)")
  args = p.parse_args()
  print(jax.devices()[0].platform, jax.__version__)
  for w in args.what:
    {"paste": bench_paste, "roi": bench_roi, "infer": bench_infer,
     "loss": bench_loss}[w](args)
  peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
  print(f"process peak RSS {peak:.0f} MiB")


if __name__ == "__main__":
  main()
