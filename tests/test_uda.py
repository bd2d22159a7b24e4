"""The source-dependent UDA baseline (methods/uda.py; the reference's dacsam.py).

Oracles written here: the reference's object erasing (dacsam.py L171-209),
``get_class_masks`` / ``generate_class_mask`` / ``one_mix`` (dacs_transforms.py)
and ``downscale_label_ratio`` (mmdet/utils/utils.py) transcribed in PyTorch
with the draws injected; the pseudo-weight, the feature distance and the EMA
recursion in float64 numpy. The draws themselves are JAX's (the reference's
are Python/NumPy RNG calls): the tests pin what is done with them and the
ranges they come from.

Two compilations: the full tiny model's step (both R-CNN branches; one trace
for every call, on the 4 fake devices) and the semantic-only tiny model's
step with the ImageNet feature distance on.
"""
import types

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from configs import default
from tests.support import networks
from tests.support.jit_traces import max_traces
from unlock_jax import constants
from unlock_jax import methods
from unlock_jax import sharding as shd
from unlock_jax.data import keys
from unlock_jax.data.layouts.common import boxes_from_masks
from unlock_jax.methods import uda
from unlock_jax.models import amodalpass
from unlock_jax.models import defaults
from unlock_jax.models import predict as predict_lib
from unlock_jax.models import variables as variables_lib
from unlock_jax.train import adapt
from unlock_jax.train import classmix

B, H, W, N = 4, 32, 32, 4


def _cfg(**uda_overrides):
  c = default.get_config().adapt
  c.uda.optim.lr = 1e-4
  c.uda.update(uda_overrides)
  return c


def _flat(tree) -> dict:
  leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
  return {"/".join(str(getattr(k, "key", k)) for k in path): np.asarray(v)
          for path, v in leaves}


def _instances(rng, b=B, n=N, h=H, w=W):
  """Disjoint modal masks (a partition, as the panoptic-derived ones), amodal = bigger boxes.

  Image 1 has no instance (its erasing must be a no-op, its shapes none).
  """
  out = {}
  modal = np.zeros((b, n, h, w), np.uint8)
  amodal = np.zeros((b, n, h, w), np.uint8)
  valid = np.zeros((b, n), bool)
  for i in range(b):
    if i == 1:
      continue
    taken = np.zeros((h, w), bool)
    for j in range(n - 1):
      y, x = rng.integers(0, h - 12), rng.integers(0, w - 12)
      hh, ww = rng.integers(6, 12, 2)
      amodal[i, j, y:y + hh, x:x + ww] = 1
      m = amodal[i, j].astype(bool) & ~taken
      modal[i, j] = m
      taken |= m
      valid[i, j] = m.sum() > 0
  for p, masks in (("modal", modal), ("amodal", amodal)):
    out[f"{p}_masks"] = masks
    out[f"{p}_classes"] = rng.integers(0, 7, (b, n)).astype(np.int32)
    out[f"{p}_boxes"] = np.stack([boxes_from_masks(m) for m in masks])
    out[f"{p}_valid"] = valid.copy()
  return out


def _batch(rng, instances=True):
  """A UDA batch: source_* (labels from {0, 2, 5, 13, 255}) + unlabeled_image."""
  sem = rng.choice([0, 2, 5, 13], (B, H, W)).astype(np.int32)
  sem[:, :2] = 255
  src = {keys.IMAGE: rng.standard_normal((B, H, W, 3)).astype(np.float32), keys.SEMANTIC: sem}
  if instances:
    src |= _instances(rng)
  batch = {uda.SOURCE + k: v for k, v in src.items()}
  batch[keys.UNLABELED_IMAGE] = rng.standard_normal((B, H, W, 3)).astype(np.float32)
  return batch


# --- object erasing vs the reference --------------------------------------------------------------

def _reference_erase(img, gt_masks, perm, scales, oys, oxs):
  """dacsam.py L171-209 with the shuffle, scale and pad draws given; img [B,3,H,W]."""
  masks_all_batch = list(gt_masks)
  masks_all_sum_batch = [np.sum(m, axis=0) for m in masks_all_batch]
  masks_all_batch = [masks_all_batch[p] for p in perm]      # random.shuffle
  out = []
  for mask_index, masks_all in enumerate(masks_all_batch):
    if len(masks_all):
      scale_factor = scales[mask_index]
      t = torch.from_numpy(masks_all).unsqueeze(0)
      down = F.interpolate(t, scale_factor=scale_factor, mode="nearest")
      ph, pw = int(oys[mask_index]), int(oxs[mask_index])
      pad = (pw, t.size(3) - down.size(3) - pw, ph, t.size(2) - down.size(2) - ph)
      assert min(pad) >= 0, pad
      s = torch.sum(torch.nn.ZeroPad2d(pad)(down), dim=1)
      s[0, torch.from_numpy(masks_all_sum_batch[mask_index] != 1)] = 0
    else:
      s = torch.zeros((1,) + img.shape[2:], dtype=torch.int64)
    out.append(s)
  out = torch.stack(out)
  return (torch.from_numpy(img) * (1 - out)).numpy()


def test_erasing_matches_the_reference():
  rng = np.random.default_rng(0)
  inst = _instances(rng)
  img = rng.standard_normal((B, H, W, 3)).astype(np.float32)
  valid = inst["modal_valid"]
  gt = [inst["modal_masks"][i][valid[i]] for i in range(B)]
  erase = jax.jit(uda.erase_with)
  sample = jax.jit(uda.sample_erase_params, static_argnums=(1, 2, 3))
  erased_total = 0
  for seed in range(12):
    p = jax.device_get(sample(jax.random.key(seed), B, H, W))
    assert sorted(p["perm"].tolist()) == list(range(B))
    scales = p["k"] / 10
    assert np.all((p["k"] >= 1) & (p["k"] <= 8))
    # np.random.randint(0, H·(1−s)): offsets below int(H·(1−s)).
    assert all(0 <= p["oy"][i] < int(H * (1 - scales[i])) for i in range(B))
    assert all(0 <= p["ox"][i] < int(W * (1 - scales[i])) for i in range(B))
    got, mask = jax.device_get(erase(img, inst["modal_masks"], valid, p))
    want = _reference_erase(img.transpose(0, 3, 1, 2), gt, p["perm"], scales, p["oy"], p["ox"])
    np.testing.assert_array_equal(got, want.transpose(0, 2, 3, 1), err_msg=f"seed {seed}")
    np.testing.assert_array_equal(mask, (got == 0).all(-1))
    assert not mask[1].any()                      # no instances of its own: nothing erased
    erased_total += mask.sum()
  assert erased_total > 50                        # not vacuous


def test_erase_scale_law():
  """k = round(10·U(0.1, 0.8)): 1 and 8 half as likely as 2..7 (1/14 vs 1/7)."""
  k = np.asarray(jax.jit(lambda key: uda.sample_erase_params(key, 20000, H, W)["k"])(
      jax.random.key(3)))
  freq = np.bincount(k, minlength=9)[1:] / k.size
  np.testing.assert_allclose(freq, [1 / 14] + [1 / 7] * 6 + [1 / 14], atol=0.01)


# --- ClassMix of source classes into target crops, the pseudo-weight ------------------------------

def _reference_get_class_masks(labels, class_choices):
  """dacs_transforms.get_class_masks with ``np.random.choice`` replaced by ``class_choices[i]``."""
  class_masks = []
  for i, label in enumerate(labels):
    classes = torch.unique(labels)
    nclasses = classes.shape[0]
    assert len(class_choices[i]) == int((nclasses + nclasses % 2) / 2)
    classes = classes[torch.Tensor(class_choices[i]).long()]
    label, cls = torch.broadcast_tensors(label, classes.unsqueeze(1).unsqueeze(2))
    class_masks.append(label.eq(cls).sum(0, keepdims=True).unsqueeze(0))
  return class_masks


def _one_mix(mask, data=None, target=None):
  """dacs_transforms.one_mix."""
  if data is not None:
    m, _ = torch.broadcast_tensors(mask[0], data[0])
    data = (m * data[0] + (1 - m) * data[1]).unsqueeze(0)
  if target is not None:
    m, _ = torch.broadcast_tensors(mask[0], target[0])
    target = (m * target[0] + (1 - m) * target[1]).unsqueeze(0)
  return data, target


@pytest.fixture(scope="module")
def sem_model():
  mcfg = defaults.tiny_model_config()
  mcfg.instance_heads = False
  mcfg.drop_path_rate = 0.0
  model = amodalpass.build(mcfg)
  variables = jax.device_get(jax.jit(
      lambda r: variables_lib.init_variables(model, r, (1, H, W, 3)))(jax.random.key(0)))
  return types.SimpleNamespace(model=model, variables=variables)


def test_classmix_draws_source_classes_and_mixes_source_into_target(sem_model):
  rng = np.random.default_rng(1)
  batch = _batch(rng, instances=False)
  src = uda.source_batch(batch)
  x_u = batch[keys.UNLABELED_IMAGE]
  params, bs = sem_model.variables["params"], sem_model.variables["batch_stats"]
  t_lab, t_conf = jax.device_get(jax.jit(
      lambda p, b, x: predict_lib.teacher_labels(sem_model.model, p, b, x))(params, bs, x_u))
  # A threshold equal to one confidence value: the rule is >= (ps_large_p = prob.ge(thr)).
  conf_sorted = np.sort(t_conf.ravel())
  thr = float(conf_sorted[int(0.6 * conf_sorted.size)])
  pw = np.sum(t_conf >= thr) / t_conf.size                     # the reference's scalar
  assert 0.2 < pw < 0.6 and np.sum(t_conf == np.float32(thr)) >= 1
  cfg = _cfg(jitter_p=0.0, blur_p=0.0, teacher_threshold=thr)
  run = jax.jit(lambda p, b, s, x, k: uda.mixed_batch(sem_model.model, p, b, s, x, k, cfg=cfg))
  source_set = np.unique(src[keys.SEMANTIC])
  n = len(source_set)                                          # {0, 2, 5, 13, 255}
  for seed in range(4):
    key = jax.random.key(seed)
    out = jax.device_get(run(params, bs, src, x_u, key))
    # The ClassMix key is the first half of the mix key (adapt.teacher_classmix).
    chosen = np.asarray(jax.device_get(jax.jit(classmix.choose_classes)(
        jnp.asarray(src[keys.SEMANTIC]), jax.random.split(key)[0])))
    choices = []
    for i in range(B):
      picked = np.flatnonzero(chosen[i])
      assert set(picked) <= set(source_set.tolist()) and len(picked) == (n + 1) // 2
      choices.append([int(np.flatnonzero(source_set == c)[0]) for c in picked])
    masks = _reference_get_class_masks(torch.from_numpy(src[keys.SEMANTIC]), choices)
    for i in range(B):
      img, lab = _one_mix(masks[i], torch.from_numpy(
          np.stack([src[keys.IMAGE][i], x_u[i]]).transpose(0, 3, 1, 2)),
          torch.from_numpy(np.stack([src[keys.SEMANTIC][i], t_lab[i]])))
      _, w = _one_mix(masks[i], target=torch.from_numpy(
          np.stack([np.ones((H, W)), np.full((H, W), pw)])))
      np.testing.assert_array_equal(out["image"][i], img[0].numpy().transpose(1, 2, 0))
      np.testing.assert_array_equal(out["labels"][i], lab[0, 0].numpy())
      np.testing.assert_allclose(out["weights"][i], w[0, 0].numpy(), rtol=1e-6)
    np.testing.assert_allclose(float(out["teacher_confident"]), pw, rtol=1e-6)
    m = np.stack([mk[0, 0].numpy() for mk in masks]).astype(bool)
    assert 0.1 < m.mean() < 0.9                                  # both sides of the mix present


# --- the step: one compilation on 4 devices, EMA teacher ---------------------------------------------

@pytest.fixture(scope="module")
def full():
  assert jax.device_count() == 4, "conftest must give 4 fake CPU devices"
  mesh, model, variables, _ = networks.tiny_detector(H, W, batch=1)
  variables = jax.device_get(variables)
  cfg = _cfg()
  method = methods.get("uda")
  tx, sched = method.optimizer(model, cfg, 100, variables["params"])
  fresh = lambda: method.init_state(variables, tx, mesh)
  with max_traces(1):
    step = method.make_step(model, tx, sched, mesh, fresh(), cfg=cfg)
  repl = shd.replicated(mesh)
  return types.SimpleNamespace(mesh=mesh, model=model, tx=tx, sched=sched, variables=variables,
                               fresh=fresh, step=step, repl=repl,
                               base=jax.device_put(jax.random.key(1), repl))


def test_step_compiles_once_runs_and_keeps_an_ema_teacher(full):
  rng = np.random.default_rng(2)
  state = full.fresh()
  t0 = jax.tree.map(lambda p: (p + 0.05 * rng.standard_normal(p.shape)).astype(np.float32),
                    jax.device_get(state["params"]))
  state = dict(state, teacher=jax.device_put(t0, full.repl))
  expected = {k: v.astype(np.float64) for k, v in _flat(t0).items()}
  erased = 0.0
  for t in range(3):
    student = {k: v.astype(np.float64) for k, v in _flat(jax.device_get(state["params"])).items()}
    if t >= 1:
      a = min(1.0 - 1.0 / (t + 1.0), 0.999)
      expected = {k: a * expected[k] + (1.0 - a) * student[k] for k in expected}
    state, m = full.step(state, shd.put_batch(_batch(rng), full.mesh), {}, full.base)
    got = _flat(jax.device_get(state["teacher"]))
    for k in expected:
      np.testing.assert_allclose(got[k], expected[k], rtol=1e-5, atol=1e-6, err_msg=f"t={t} {k}")
    m = jax.device_get(m)
    # Both branches' losses on the source ground truth (box regression may be 0:
    # the tiny RPN can have no positive anchor).
    for name in ["src/sem", "mix/sem"] + [f"src/{b}/{k}" for b in ("modal", "amodal")
                                          for k in ("rpn_cls", "rpn_bbox", "rcnn_cls",
                                                    "rcnn_bbox", "mask")]:
      assert np.isfinite(m[f"loss/{name}"]), (name, sorted(m))
      assert m[f"loss/{name}"] > 0 or "bbox" in name, name
    assert "loss/src/fdist" not in m and "loss/param_reg" not in m
    assert 0 <= m["erased_fraction"] < 0.5 and 0 <= m["teacher_pseudo_weight"] <= 1
    erased += m["erased_fraction"]
  assert erased > 0
  new_student = _flat(jax.device_get(state["params"]))
  assert max(np.abs(got[k] - new_student[k]).max() for k in got) > 1e-3
  assert int(state["step"]) == 3 and int(state["first_bad_step"]) == -1


def test_crop_sizes_must_agree(full):
  batch = _batch(np.random.default_rng(3))
  batch[keys.UNLABELED_IMAGE] = batch[keys.UNLABELED_IMAGE][:, :16]
  state = full.fresh()
  step = uda.make_step(full.model, full.tx, full.sched, full.mesh, state, cfg=_cfg())
  with pytest.raises(ValueError, match="input.crop_size and config.adapt.crop_size"):
    step(state, shd.put_batch(batch, full.mesh), {}, full.base)  # refused while tracing


def test_defaults_are_the_references():
  u = default.get_config().adapt.uda
  assert (u.ema_max, u.teacher_threshold, u.ignore_top, u.ignore_bottom) == (0.999, 0.968, 0, 0)
  assert (u.jitter_p, u.blur_p, u.jitter_strength) == (0.8, 0.5, 0.2)
  assert (u.fdist_lambda, tuple(u.fdist_classes), u.fdist_scale_min_ratio) == (
      0.005, tuple(range(11, 18)), 0.75)
  assert u.imnet_checkpoint == "" and u.optim.groups == constants.SOURCE_GROUPS
  assert methods.get("uda").streams == ("source_labelled", "target_unlabelled")


# --- ImageNet feature distance ----------------------------------------------------------------------

def _reference_downscale_label_ratio(gt, scale_factor, min_ratio, n_classes, ignore_index=255):
  """mmdet/utils/utils.py downscale_label_ratio; gt [B,1,H,W] int64."""
  out = gt.clone()
  out[out == ignore_index] = n_classes
  out = F.one_hot(out.squeeze(1), num_classes=n_classes + 1).permute(0, 3, 1, 2)
  out = F.avg_pool2d(out.float(), kernel_size=scale_factor)
  gt_ratio, out = torch.max(out, dim=1, keepdim=True)
  out[out == n_classes] = ignore_index
  out[gt_ratio < min_ratio] = ignore_index
  return out


def test_downscale_label_ratio_matches_the_reference():
  rng = np.random.default_rng(4)
  # Blocky labels (mostly pure cells) with noise and ignore, a size not a multiple of 8.
  lab = np.kron(rng.choice([0, 3, 11, 12, 255], (2, 6, 7)), np.ones((8, 8), np.int64))
  lab = lab[:, :45, :50]
  noise = rng.random(lab.shape) < 0.15
  lab[noise] = rng.choice([1, 11, 255], noise.sum())
  for scale, ratio in ((8, 0.75), (5, 0.5), (3, 0.9)):
    want = _reference_downscale_label_ratio(torch.from_numpy(lab)[:, None], scale, ratio, 18)
    got = uda.downscale_label_ratio(jnp.asarray(lab), scale, ratio)
    np.testing.assert_array_equal(np.asarray(got), want[:, 0].numpy())
    assert (np.asarray(got) != 255).any() and (np.asarray(got) == 255).any()


def test_feature_distance_value_and_gradient():
  rng = np.random.default_rng(5)
  feat = rng.standard_normal((2, 4, 4, 6)).astype(np.float32)
  imnet = rng.standard_normal((2, 4, 4, 6)).astype(np.float32)
  imnet[0, 0, 0] = feat[0, 0, 0]              # a zero difference inside the mask
  lab = np.kron(rng.choice([0, 11, 13], (2, 4, 4)), np.ones((8, 8), np.int64))
  lab[0, :8, :8] = 11
  want_mask = np.isin(lab[:, ::8, ::8], range(11, 18))
  d = np.sqrt(((feat.astype(np.float64) - imnet) ** 2).sum(-1))
  fd = lambda f: uda.feature_distance(f, imnet, jnp.asarray(lab), classes=range(11, 18),
                                      min_ratio=0.75)
  np.testing.assert_allclose(float(fd(feat)), d[want_mask].mean(), rtol=1e-6)
  g = np.asarray(jax.grad(fd)(feat))
  assert np.isfinite(g).all() and not g[~want_mask].any() and not g[0, 0, 0].any()
  diff = feat - imnet
  want_g = diff / np.maximum(d[..., None], 1e-30) / want_mask.sum() * want_mask[..., None]
  np.testing.assert_allclose(g, want_g, rtol=1e-5, atol=1e-7)
  # No thing cell: 0 and no gradient (the reference logs NaN; its gradient is 0 too).
  stuff = np.zeros_like(lab)
  assert float(uda.feature_distance(feat, imnet, jnp.asarray(stuff), classes=range(11, 18),
                                    min_ratio=0.75)) == 0.0


def test_step_with_feature_distance(sem_model):
  """Semantic-only model, the ImageNet backbone a perturbed copy: the logged term is
  λ·(numpy masked mean of the stride-32 feature distance) at the step's parameters.
  (``mix_weight`` 0 keeps this second compilation small: no teacher, no mixed forward.)"""
  mesh = shd.make_mesh()
  rng = np.random.default_rng(6)
  model, variables = sem_model.model, sem_model.variables
  cfg = _cfg(imnet_checkpoint="/not/read/by/the/step", fdist_lambda=0.5, mix_weight=0.0)
  tx, sched = uda.make_optimizer(model, cfg, 10, variables["params"])
  state = adapt.init_state(variables, tx, mesh)
  imnet = jax.tree.map(lambda p: (p + 0.1 * rng.standard_normal(p.shape)).astype(np.float32),
                       variables["params"]["backbone"])
  batch = _batch(rng, instances=False)
  sem = batch[uda.SOURCE + keys.SEMANTIC]
  sem[:2, 2:] = 11                            # images 0, 1: a thing cell; 2, 3: stuff only
  feats = jax.jit(lambda p, x: model.apply({"params": p}, x, method=uda._last_backbone_map))
  x = batch[uda.SOURCE + keys.IMAGE]
  f_s = np.asarray(feats(variables["params"], x), np.float64)
  f_i = np.asarray(feats({"backbone": imnet}, x), np.float64)
  lab = _reference_downscale_label_ratio(torch.from_numpy(sem.astype(np.int64))[:, None],
                                         W // f_s.shape[2], 0.75, 18)[:, 0].numpy()
  mask = np.isin(lab, range(11, 18))
  assert mask[:2].all() and not mask[2:].any()
  want = 0.5 * np.sqrt(((f_s - f_i) ** 2).sum(-1))[mask].mean()
  step = uda.make_step(model, tx, sched, mesh, state, cfg=cfg)
  repl = shd.replicated(mesh)
  state, m = step(state, shd.put_batch(batch, mesh), jax.device_put({"backbone": imnet}, repl),
                  jax.device_put(jax.random.key(0), repl))
  np.testing.assert_allclose(float(m["loss/src/fdist"]), want, rtol=1e-4)
  assert want > 0 and "loss/mix/sem" not in m and int(state["first_bad_step"]) == -1
