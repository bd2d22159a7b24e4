"""The full network's jitted source step (semantic + modal + amodal R-CNN losses):
sharded over 4 fake CPU devices, compiles once across steps and batches, flags NaN."""
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from tests.support.jit_traces import max_traces
from unlock_jax import sharding as shd
from unlock_jax.data import keys
from unlock_jax.data.layouts.common import boxes_from_masks
from unlock_jax.models import amodalpass
from unlock_jax.models import defaults
from unlock_jax.models import variables as variables_lib
from unlock_jax.train import loop, losses, optim, steps


def _optim_cfg(lr=1e-3):
  return ml_collections.ConfigDict(dict(
      lr=lr, weight_decay=0.01, b1=0.9, b2=0.999, eps=1e-8, power=1.0,
      end_lr=0.0, warmup_steps=0,
      groups=(("head", "decode_head", 10.0, 1.0), ("norm", "norm", 1.0, 0.0))))


def _batch(rng, b=8, h=32, w=32, n=3):
  image = rng.standard_normal((b, h, w, 3)).astype(np.float32)
  sem = rng.integers(0, 18, (b, h, w)).astype(np.int32)
  sem[:, :4] = 255
  out = {keys.IMAGE: image, keys.SEMANTIC: sem}
  for p in ("modal", "amodal"):
    masks = np.zeros((b, n, h, w), np.uint8)
    valid = rng.random((b, n)) < 0.7  # some images with fewer (or no) instances
    for i in range(b):
      for j in range(n):
        y, x = rng.integers(0, h - 12, 2)
        masks[i, j, y:y + 10, x:x + 8] = valid[i, j]
        masks[i, j, y, x] = 255 if valid[i, j] else 0  # an ignore pixel
    out[f"{p}_masks"] = masks
    out[f"{p}_classes"] = rng.integers(0, 7, (b, n)).astype(np.int32)
    out[f"{p}_boxes"] = np.stack([boxes_from_masks(m) for m in masks])
    out[f"{p}_valid"] = valid
  return out


@pytest.fixture(scope="module")
def setup():
  assert jax.device_count() == 4, "conftest must give 4 fake CPU devices"
  mesh = shd.make_mesh()
  cfg = defaults.tiny_model_config()
  cfg.instance_heads = True
  model = amodalpass.build(cfg)
  rng = jax.random.key(0)
  shape = (1, 32, 32, 3)
  params_shape = variables_lib.param_shapes(model, shape)
  tx, sched = optim.make(_optim_cfg(), 100, params_shape)
  state = steps.init_state(model, tx, rng, shape, mesh)
  loss_cfg = ml_collections.ConfigDict(dict(sem_normalize="all_pixels"))
  with max_traces(1):  # every test's calls share one trace: a retrace raises
    step = steps.make_source_step(model, tx, sched, mesh, state, loss_cfg=loss_cfg)
  base = jax.device_put(jax.random.key(1), shd.replicated(mesh))
  fresh = lambda: steps.init_state(model, tx, rng, shape, mesh)
  return mesh, step, base, fresh


def test_step_sharded_over_data_axis(setup):
  mesh, step, base, fresh = setup
  state = fresh()
  np_rng = np.random.default_rng(0)
  before = jax.device_get(state["params"])
  batch = shd.put_batch(_batch(np_rng), mesh)
  assert batch[keys.IMAGE].sharding.spec == jax.sharding.PartitionSpec("data")
  assert len(batch[keys.IMAGE].addressable_shards) == 4
  assert batch[keys.IMAGE].addressable_shards[0].data.shape[0] == 2
  for _ in range(3):
    state, m = step(state, shd.put_batch(_batch(np_rng), mesh), base)
  m = jax.device_get(m)
  assert int(state["step"]) == 3
  assert np.isfinite(m["loss"]) and m["loss"] > 0
  for branch in ("modal", "amodal"):
    for name in ("rpn_cls", "rpn_bbox", "rcnn_cls", "rcnn_bbox", "mask"):
      assert np.isfinite(m[f"loss/{branch}/{name}"]), (branch, name)
    assert m[f"loss/{branch}/rpn_cls"] > 0 and m[f"loss/{branch}/mask"] > 0
  assert int(state["first_bad_step"]) == -1
  # Parameters are replicated and moved.
  leaf = jax.tree.leaves(state["params"])[0]
  assert leaf.sharding.is_fully_replicated
  moved = jax.tree.map(lambda a, b: np.abs(np.asarray(a) - b).max(),
                       jax.device_get(state["params"]), before)
  assert max(jax.tree.leaves(moved)) > 0
  # One compilation for all three steps: `step` is traced at most once
  # (max_traces in the fixture; test_max_traces_catches_a_retrace checks it).


def test_nonfinite_loss_is_recorded_with_its_step(setup):
  mesh, step, base, fresh = setup
  state = fresh()
  np_rng = np.random.default_rng(0)
  state, _ = step(state, shd.put_batch(_batch(np_rng), mesh), base)
  bad = _batch(np_rng)
  bad[keys.IMAGE][0, 0, 0, 0] = np.nan
  state, m = step(state, shd.put_batch(bad, mesh), base)
  state, _ = step(state, shd.put_batch(_batch(np_rng), mesh), base)
  assert int(state["first_bad_step"]) == 1  # 0-based index of the NaN step


def test_max_traces_catches_a_retrace():
  with max_traces(1):
    f = jax.jit(lambda x: x * 2)
  np.testing.assert_array_equal(f(np.ones(2, np.float32)), [2, 2])
  f(np.zeros(2, np.float32))  # same shapes: no new trace
  with pytest.raises(AssertionError, match="traced > 1 times"):
    f(np.ones(3, np.float32))


def test_semantic_ce_upsamples_as_torch():
  """Stride-4 logits: bilinear (align_corners=False) upsampling, then CE / all pixels."""
  torch = pytest.importorskip("torch")
  rng = np.random.default_rng(3)
  logits = rng.standard_normal((2, 5, 7, 4)).astype(np.float32)
  target = rng.integers(0, 4, (2, 20, 28))
  target[1, 5:9] = 255
  got = float(losses.semantic_ce(jnp.asarray(logits), jnp.asarray(target)))
  up = torch.nn.functional.interpolate(torch.from_numpy(logits).permute(0, 3, 1, 2),
                                       size=(20, 28), mode="bilinear", align_corners=False)
  nll = torch.nn.functional.cross_entropy(up, torch.from_numpy(target), ignore_index=255,
                                          reduction="none")
  np.testing.assert_allclose(got, float(nll.sum()) / target.size, rtol=1e-5)


def test_semantic_ce_matches_numpy():
  rng = np.random.default_rng(0)
  logits = rng.standard_normal((2, 8, 8, 5)).astype(np.float32)
  target = rng.integers(0, 5, (2, 8, 8))
  target[0, :2] = 255
  got_all = float(losses.semantic_ce(jnp.asarray(logits), jnp.asarray(target)))
  got_valid = float(losses.semantic_ce(jnp.asarray(logits), jnp.asarray(target),
                                       normalize="valid_pixels"))
  z = logits - logits.max(-1, keepdims=True)
  logp = z - np.log(np.exp(z).sum(-1, keepdims=True))
  valid = target != 255
  nll = -np.take_along_axis(logp, np.where(valid, target, 0)[..., None], -1)[..., 0]
  np.testing.assert_allclose(got_all, (nll * valid).sum() / target.size, rtol=1e-5)
  np.testing.assert_allclose(got_valid, (nll * valid).sum() / valid.sum(), rtol=1e-5)


def test_poly_schedule_and_groups():
  sched = optim.poly_schedule(1.0, 100, power=1.0)
  assert float(sched(0)) == pytest.approx(1.0)
  assert float(sched(50)) == pytest.approx(0.5)
  assert float(sched(100)) == pytest.approx(0.0)
  warm = optim.poly_schedule(1.0, 100, warmup_steps=10, warmup_ratio=0.0)
  assert float(warm(5)) == pytest.approx(0.5 * (1 - 5 / 100), rel=1e-5)
  params = {"decode_head": {"conv": {"kernel": 0}}, "backbone": {"norm1": {"scale": 0},
                                                                "q": {"kernel": 0}}}
  labels = optim.group_labels(params, _optim_cfg().groups)
  assert labels == {"decode_head": {"conv": {"kernel": "head"}},
                    "backbone": {"norm1": {"scale": "norm"}, "q": {"kernel": "default"}}}


def test_logged_losses_are_interval_means():
  per_step = [{"loss": 1.0, "loss/sem": 0.5, "grad_norm": 2.0, "lr": 1e-3},
              {"loss": 3.0, "loss/sem": 1.5, "grad_norm": 4.0, "lr": 5e-4}]
  total = per_step[0]
  for m in per_step[1:]:
    total = loop._accumulate(total, m)
  got = loop.interval_means(per_step[-1], jax.device_get(total), len(per_step))
  assert got == pytest.approx({"loss": 2.0, "loss/sem": 1.0, "grad_norm": 3.0, "lr": 5e-4})
