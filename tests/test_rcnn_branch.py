"""MaskRCNNBranch end to end on tiny shapes: losses, padding invariance,
empty images, one compile, gradients, inference outputs, bf16."""
import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from unlock_jax.data.layouts import common as layouts_common
from unlock_jax.models import defaults
from unlock_jax.models.rcnn import branch

B, H, W, C = 2, 64, 128, 16
STRIDES = (4, 8, 16, 32, 64)


def _fpn(seed, b=B, c=C):
  rs = np.random.RandomState(seed)
  return [jnp.asarray(rs.normal(size=(b, -(-H // s), -(-W // s), c)),
                      jnp.float32) for s in STRIDES]


def _host_boxes(masks, rule):
  """The data pipeline's boxes (``box_rule``) of masks [B, N, H, W]."""
  return np.stack([layouts_common.boxes_from_masks(m, rule) for m in masks])


def _targets(seed, n=4, garbage_pad_to=None):
  """Two images: image 0 has 3 instances (one with ignore pixels), image 1
  has 1. Optionally padded to ``garbage_pad_to`` rows of garbage."""
  rs = np.random.RandomState(seed)
  masks = np.zeros((B, n, H, W), np.uint8)
  masks[0, 0, 10:30, 20:60] = 1
  masks[0, 0, 10:13, 20:60] = 255
  masks[0, 1, 30:60, 70:120] = 1
  masks[0, 2, 5:25, 90:110] = 1
  masks[1, 0, 5:50, 5:40] = 1
  masks[1, 0, 40:45, 60:70] = 255  # ignore pixels away from the object
  classes = np.array([[2, 3, 6, 0], [1, 0, 0, 0]], np.int32)[:, :n]
  valid = np.array([[1, 1, 1, 0], [1, 0, 0, 0]], bool)[:, :n]
  boxes = _host_boxes(masks, "positive")
  if garbage_pad_to:
    extra = garbage_pad_to - n
    gm = rs.choice([0, 1, 255], size=(B, extra, H, W)).astype(np.uint8)
    masks = np.concatenate([masks, gm], 1)
    classes = np.concatenate(
        [classes, rs.randint(0, 7, (B, extra)).astype(np.int32)], 1)
    boxes = np.concatenate(
        [boxes, rs.uniform(0, 60, (B, extra, 4)).astype(np.float32)], 1)
    valid = np.concatenate([valid, np.zeros((B, extra), bool)], 1)
    # Garbage also in the invalid rows of the original part.
    masks[0, 3] = gm[0, 0]
    classes[1, 1:] = 5
  return dict(masks=jnp.asarray(masks), classes=jnp.asarray(classes),
              boxes=jnp.asarray(boxes), valid=jnp.asarray(valid))


@pytest.fixture(scope="module")
def setup():
  model = branch.MaskRCNNBranch(branch.freeze(defaults.tiny_rcnn_config()))
  variables = jax.jit(lambda k: model.init(
      {"params": k}, _fpn(0), method=branch.MaskRCNNBranch.init_heads))(
          jax.random.key(0))
  traces = []

  @jax.jit
  def loss_fn(variables, fpn, targets, key):
    traces.append(1)
    return model.apply(variables, fpn, (H, W), train=True, targets=targets,
                       rngs={"sampling": key})

  return model, variables, loss_fn, traces


def test_init_heads_matches_full_init(setup):
  model, variables, _, _ = setup
  full = jax.eval_shape(lambda k: model.init(
      {"params": k, "sampling": k}, _fpn(0), (H, W), train=False),
                        jax.random.key(0))
  assert (jax.tree.map(lambda x: (x.shape, x.dtype), full)
          == jax.tree.map(lambda x: (x.shape, x.dtype), variables))


def test_param_names_follow_checkpoint_keys(setup):
  _, variables, _, _ = setup
  flat = flax.traverse_util.flatten_dict(variables["params"], sep="/")
  names = {k.rsplit("/", 1)[0] for k in flat}
  want = {"rpn_head/rpn_conv", "rpn_head/rpn_cls", "rpn_head/rpn_reg",
          "roi_head/bbox_head/shared_fcs_0", "roi_head/bbox_head/shared_fcs_1",
          "roi_head/bbox_head/fc_cls", "roi_head/bbox_head/fc_reg",
          "roi_head/mask_head/upsample", "roi_head/mask_head/conv_logits"}
  want |= {f"roi_head/mask_head/convs_{i}" for i in range(4)}
  assert names == want
  assert flat["roi_head/bbox_head/fc_cls/kernel"].shape[-1] == 8
  assert flat["roi_head/bbox_head/shared_fcs_0/kernel"].shape[0] == 7 * 7 * C
  assert flat["rpn_head/rpn_reg/kernel"].shape[-1] == 12


def test_losses_finite_and_one_compile(setup):
  _, variables, loss_fn, traces = setup
  before = len(traces)
  out1 = loss_fn(variables, _fpn(1), _targets(0), jax.random.key(1))
  out2 = loss_fn(variables, _fpn(2), _targets(1), jax.random.key(2))
  assert len(traces) - before <= 1  # the fixture may already have traced
  for out in (out1, out2):
    assert set(out) == set(branch.LOSS_KEYS)
    for k, v in out.items():
      assert v.shape == () and v.dtype == jnp.float32
      assert np.isfinite(float(v)) and float(v) > 0, k
  # Same shapes again: no new trace.
  n = len(traces)
  loss_fn(variables, _fpn(3), _targets(2), jax.random.key(3))
  assert len(traces) == n


def test_padded_instances_do_not_change_the_loss(setup):
  _, variables, loss_fn, _ = setup
  fpn, key = _fpn(4), jax.random.key(7)
  a = loss_fn(variables, fpn, _targets(0), key)
  b = loss_fn(variables, fpn, _targets(0, garbage_pad_to=12), key)
  for k in branch.LOSS_KEYS:
    np.testing.assert_allclose(float(a[k]), float(b[k]), rtol=1e-5,
                               atol=1e-6, err_msg=k)


def test_no_instances_gives_zero_finite_losses(setup):
  _, variables, loss_fn, _ = setup
  t = _targets(0)
  t["valid"] = jnp.zeros_like(t["valid"])
  out = loss_fn(variables, _fpn(5), t, jax.random.key(0))
  for k, v in out.items():
    assert float(v) == 0.0, k


def test_box_rule_sets_the_boxes_the_loss_sees(setup):
  """The boxes come from the data pipeline only: its rule ("positive" or the
  reference's "nonzero", inflated by ignore pixels) is what the RPN and
  R-CNN targets use, the masks do not override it."""
  model, variables, loss_fn, _ = setup
  t = _targets(0)
  masks = np.asarray(t["masks"])
  seen = {}
  for rule in ("positive", "nonzero"):
    host = _host_boxes(masks, rule)
    t["boxes"] = jnp.asarray(host)
    boxes, _, valid = model.apply(variables, t,
                                  method=branch.MaskRCNNBranch._gt)
    valid = np.asarray(valid)
    np.testing.assert_array_equal(valid, np.asarray(t["valid"]))
    np.testing.assert_array_equal(np.asarray(boxes)[valid], host[valid])
    seen[rule] = loss_fn(variables, _fpn(1), t, jax.random.key(1))
  # Image 1's ignore pixels lie outside its object: a larger box.
  assert not np.array_equal(_host_boxes(masks, "positive")[1, 0],
                            _host_boxes(masks, "nonzero")[1, 0])
  assert float(seen["positive"]["rpn_bbox"]) != float(
      seen["nonzero"]["rpn_bbox"])
  # Degenerate boxes (x1 == x2, as a one-pixel mask gives) are not GT.
  t["boxes"] = t["boxes"].at[0, 1].set(jnp.asarray([5.0, 3.0, 5.0, 9.0]))
  _, _, valid = model.apply(variables, t, method=branch.MaskRCNNBranch._gt)
  assert not bool(valid[0, 1]) and bool(valid[0, 0])


@pytest.fixture(scope="module")
def grad_fn(setup):
  model = setup[0]

  @jax.jit
  def fn(params, fpn, targets, key):
    def total(p, f):
      out = model.apply({"params": p}, f, (H, W), train=True,
                        targets=targets, rngs={"sampling": key})
      return sum(out.values()), out
    (_, out), g = jax.value_and_grad(total, argnums=(0, 1), has_aux=True)(
        params, fpn)
    return out, g

  return fn


def test_gradients_finite_and_empty_image_has_no_effect(setup, grad_fn):
  _, variables, _, _ = setup
  t = _targets(0)
  t["valid"] = t["valid"].at[1].set(False)  # image 1: no instance
  _, (gp, gf) = grad_fn(variables["params"], _fpn(6), t, jax.random.key(3))
  leaves = jax.tree.leaves(gp)
  assert all(np.all(np.isfinite(np.asarray(g))) for g in leaves)
  assert any(np.any(np.asarray(g) != 0) for g in leaves)
  for g in gf:
    assert np.all(np.isfinite(np.asarray(g)))
    np.testing.assert_array_equal(np.asarray(g[1]), 0.0)
  assert any(np.any(np.asarray(g[0]) != 0) for g in gf)


def _synthetic_problem():
  """One image with 2 coloured boxes (repeated over the batch); FPN maps are
  a fixed random 3×3 conv + ReLU of the average-pooled image."""
  img = np.zeros((H, W, 3), np.float32)
  img[12:40, 16:56] = (1.0, 0.2, -0.5)
  img[20:56, 76:116] = (-0.6, 1.0, 0.4)
  rs = np.random.RandomState(0)
  kernel = rs.normal(0, 0.5, (3, 3, 3, C)).astype(np.float32)
  feats = []
  for s in STRIDES:
    h, w = -(-H // s), -(-W // s)
    pooled = img.reshape(H // s, s, W // s, s, 3).mean((1, 3)) if s <= 32 \
        else img.mean((0, 1))[None, None].repeat(h, 0).repeat(w, 1)
    f = jax.lax.conv_general_dilated(
        jnp.asarray(pooled)[None], jnp.asarray(kernel), (1, 1), "SAME",
        dimension_numbers=("NHWC", "HWIO", "NHWC"))
    feats.append(jnp.repeat(jax.nn.relu(f), B, 0))
  masks = np.zeros((B, 4, H, W), np.uint8)
  masks[:, 0, 12:40, 16:56] = 1
  masks[:, 1, 20:56, 76:116] = 1
  targets = dict(masks=jnp.asarray(masks),
                 classes=jnp.asarray(np.tile([[2, 5, 0, 0]], (B, 1)),
                                     jnp.int32),
                 boxes=jnp.asarray(_host_boxes(masks, "positive")),
                 valid=jnp.asarray(np.tile([[1, 1, 0, 0]], (B, 1)), bool))
  return feats, targets


def test_tiny_overfit_reduces_losses(setup, grad_fn):
  optax = pytest.importorskip("optax")
  _, variables, _, _ = setup
  feats, targets = _synthetic_problem()
  params = variables["params"]
  opt = optax.adam(3e-3)
  state = opt.init(params)
  update = jax.jit(lambda g, s, p: opt.update(g, s, p))
  first = last = None
  for step in range(80):
    out, (gp, _) = grad_fn(params, feats, targets, jax.random.key(step))
    det = {k: float(v) for k, v in out.items()}
    if first is None:
      first = det
    last = det
    upd, state = update(gp, state, params)
    params = optax.apply_updates(params, upd)
  box_terms = ("rpn_cls", "rpn_bbox", "rcnn_cls", "rcnn_bbox")
  f0 = sum(first[k] for k in box_terms)
  f1 = sum(last[k] for k in box_terms)
  print("first", first, "\nlast", last)
  assert f1 < f0 / 3, (first, last)
  assert last["mask"] < first["mask"]


def test_inference_outputs(setup):
  model, variables, _, _ = setup
  cfg = model.cfg
  out = jax.jit(lambda v, f: model.apply(v, f, (H, W), train=False))(
      variables, _fpn(8))
  d = cfg.max_dets
  assert out["boxes"].shape == (B, d, 4) and out["boxes"].dtype == jnp.float32
  assert out["scores"].shape == (B, d)
  assert out["classes"].shape == (B, d) and out["classes"].dtype == jnp.int32
  assert out["masks"].shape == (B, d, H, W) and out["masks"].dtype == bool
  assert out["valid"].shape == (B, d) and out["valid"].dtype == bool
  boxes, scores = np.asarray(out["boxes"]), np.asarray(out["scores"])
  valid, classes = np.asarray(out["valid"]), np.asarray(out["classes"])
  masks = np.asarray(out["masks"])
  assert valid.any()  # random init: near-uniform scores > 0.05 survive
  assert np.all(scores[valid] > cfg.score_thr)
  assert np.all((classes >= 0) & (classes < cfg.num_classes))
  assert np.all(boxes[..., 0::2] >= 0) and np.all(boxes[..., 0::2] <= W)
  assert np.all(boxes[..., 1::2] >= 0) and np.all(boxes[..., 1::2] <= H)
  assert not masks[~valid].any()
  for b in range(B):
    s = scores[b][valid[b]]
    assert np.all(np.diff(s) <= 0)  # sorted by descending score
    # Valid detections are packed first.
    assert np.all(valid[b][:valid[b].sum()])
  # Pasted masks stay inside their (slightly enlarged) boxes.
  for b, i in zip(*np.nonzero(valid)):
    ys, xs = np.nonzero(masks[b, i])
    if len(ys):
      x1, y1, x2, y2 = boxes[b, i]
      assert xs.min() >= np.floor(x1) - 1 and xs.max() <= np.ceil(x2) + 1
      assert ys.min() >= np.floor(y1) - 1 and ys.max() <= np.ceil(y2) + 1


def test_bf16_compute_with_f32_params_and_losses(setup):
  _, variables, loss_fn, _ = setup
  model = branch.MaskRCNNBranch(branch.freeze(defaults.tiny_rcnn_config()),
                                dtype=jnp.bfloat16)
  assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(variables))
  key = jax.random.key(0)
  out = jax.jit(lambda v, f, t: model.apply(
      v, f, (H, W), train=True, targets=t, rngs={"sampling": key}))(
          variables, _fpn(1), _targets(0))
  ref = loss_fn(variables, _fpn(1), _targets(0), key)
  for k, x in out.items():
    assert x.dtype == jnp.float32 and np.isfinite(float(x)), k
  # Same sampling; bf16 rounding may flip a few proposals/samples, so only
  # the losses that do not depend on proposals are compared tightly.
  np.testing.assert_allclose(float(out["rpn_cls"]), float(ref["rpn_cls"]),
                             rtol=0.05)
