"""The reference's source-dependent UDA baseline: DACS with amodal Mask R-CNN (docs/method.md §7.10).

The reference ships it as ``mmdet/models/uda/dacsam.py`` with
``configs/_base_/uda/dacsam_a999_fdthings.py`` (``dacsam.py`` base: threshold
0.968, no ignored rows, jitter s 0.2 / p 0.8, blur p 0.5; α 0.999, ImageNet
feature distance λ 0.005 on the thing classes 11..17 at min ratio 0.75).
Inputs: labelled source crops (stream ``source_labelled``: ``source_image``,
``source_semantic``, ``source_modal_*``, ``source_amodal_*``) and unlabelled
target crops of the same size (``target_unlabelled``). State: student and EMA
teacher (``train/adapt.init_state``); no parameter regulariser. Keys:
``config.adapt.uda.*``, ``config.adapt.sem_normalize`` and
``config.adapt.blur_sigma_scale``.

Per step ``t``:

1. EMA teacher as UNLOCK's: ``a = min(1 − 1/(t+1), uda.ema_max)``, before the
   forward, for ``t ≥ 1``, parameters only.
2. Object erasing on the source crops (``erase_objects``, dacsam L171-209):
   the batch's modal masks are shuffled between images; each image takes its
   partner's masks shrunk by ``s = round(U(0.1, 0.8), 1)`` (nearest, PyTorch's
   index rule), placed at a random offset, and its pixels covered by exactly
   one of its *own* modal masks are set to 0 (the mean colour) where a placed
   mask lands. Labels are unchanged: objects partly occluded by "nothing".
3. Source forward on the erased crops: semantic CE + both Mask R-CNN branches
   on the source ground truth.
4. ImageNet feature distance (``uda.imnet_checkpoint`` set and ``uda.fdist_lambda``
   > 0): ``λ · mean ‖f_student − f_imnet‖₂`` over the stride-32 backbone cells
   whose source label (``downscale_label_ratio``: majority class if its share
   ≥ ``fdist_scale_min_ratio``) is a thing class; the ImageNet backbone in
   eval mode on the same erased crops.
5. Teacher labels and one pseudo-weight scalar (fraction of confidences ≥
   0.968) on the target crops; ClassMix of half the **source** batch's classes
   from the erased source crops into the target crops; colour jitter and blur
   (``train/adapt.teacher_classmix``, UNLOCK's with the source in the PL's place).
6. ``L = L_src + L_fd + L_mix``, ``L_mix`` the pixel-weighted CE on the mixed
   crops (semantic only); one gradient, equal to the reference's three
   backwards before one optimiser step. BatchNorm statistics move by the
   source forward, then the mixed one.

Differences from the reference (docs/reference_differences.md items U1-U6;
the intended behaviour by default, a key where the reference's can be had):

* U1: student and teacher start from the source model (``adapt.source_checkpoint``)
  and train ``adapt.total_steps`` with ``uda.optim`` (the source recipe); the
  reference trains DACS from ImageNet for 40k iterations
  (``adapt.source_checkpoint=<converted ImageNet MiT>``, ``adapt.total_steps=40000``).
* U2: an empty feature-distance mask gives 0: the reference's ``mean`` of an
  empty tensor logs NaN (its gradient is 0 either way); here a NaN would stop
  the run.
* U3: shuffle, ClassMix class set and pseudo-weight are over the global
  batch; the reference's over one GPU's batch (4 crops).
* U4: erasing uses ``mask == 1`` and the union of the placed masks; the
  reference multiplies by ``1 − count`` of placed masks, which differs only
  where a crop's modal masks overlap (never: modal masks are a partition).
* U5: the feature distance is off unless ``uda.imnet_checkpoint`` names an
  ImageNet-initialised checkpoint (synthpass has none).
* U6: the debug mosaics every 1000 iterations are not ported.

``uda.mix_weight`` 0 (an ablation, not in the reference) skips the teacher
and the mixed forward altogether; ``uda.erase_objects`` False skips step 2.
"""
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

from unlock_jax import fileio
from unlock_jax import inference
from unlock_jax import methods
from unlock_jax.data import keys
from unlock_jax.data import labels as labels_lib
from unlock_jax.train import adapt as adapt_lib
from unlock_jax.train import losses as losses_lib
from unlock_jax.train import optim
from unlock_jax.train import steps

SOURCE = "source_"                      # the source_labelled stream's key prefix
ERASE_SCALES = tuple(k / 10 for k in range(1, 9))   # np.around(U(0.1, 0.8), 1)


# --- object erasing (dacsam.py L171-209) ------------------------------------------------------

def sample_erase_params(key, batch: int, height: int, width: int) -> dict:
  """The draws of one erasing: partner permutation, scale index, offsets.

  ``perm[i]``: whose masks image i takes (``random.shuffle`` of the batch's
  mask lists); ``k[i]`` in 1..8, ``s = k/10`` (``np.around(U(0.1, 0.8), 1)``);
  offsets ``oy[i] ∈ [0, int(H·(1−s)))`` as ``np.random.randint(0, H·(1−s))``.
  """
  kp, ks, ky, kx = jax.random.split(key, 4)
  k = jnp.clip(jnp.round(jax.random.uniform(ks, (batch,), minval=0.1, maxval=0.8) * 10), 1, 8)
  k = k.astype(jnp.int32)
  span = lambda n: jnp.asarray([max(int(n * (1.0 - s)), 1) for s in (1.0,) + ERASE_SCALES])
  return {"perm": jax.random.permutation(kp, batch), "k": k,
          "oy": jax.random.randint(ky, (batch,), 0, span(height)[k]),
          "ox": jax.random.randint(kx, (batch,), 0, span(width)[k])}


def _placed_index(n: int, k, offset):
  """Per image, for each of ``n`` output positions: (inside the shrunk mask, source index).

  PyTorch's nearest rule for ``interpolate(scale_factor=s)``: output size
  ``floor(n·s)``, source ``min(floor(float32(j) · float32(1/s)), n − 1)``.
  """
  size = jnp.asarray([0] + [int(math.floor(n * s)) for s in ERASE_SCALES])[k]
  inv = jnp.asarray(np.asarray([0.0] + [1.0 / s for s in ERASE_SCALES], np.float32))[k]
  j = jnp.arange(n)[None, :] - offset[:, None]
  inside = (j >= 0) & (j < size[:, None])
  src = jnp.floor(jnp.maximum(j, 0).astype(jnp.float32) * inv[:, None]).astype(jnp.int32)
  return inside, jnp.minimum(src, n - 1)


def erase_with(image, masks, valid, params):
  """Erased images ``[B,H,W,3]`` and the erased pixels ``[B,H,W]`` for given draws."""
  _, _, hgt, wid = masks.shape
  count = jnp.sum((masks == 1) & valid[:, :, None, None], axis=1, dtype=jnp.int32)  # [B,H,W]
  in_y, sy = _placed_index(hgt, params["k"], params["oy"])
  in_x, sx = _placed_index(wid, params["k"], params["ox"])
  partner = count[params["perm"]]
  partner = jnp.take_along_axis(partner, sy[:, :, None], axis=1)
  partner = jnp.take_along_axis(partner, sx[:, None, :], axis=2)
  erase = in_y[:, :, None] & in_x[:, None, :] & (partner > 0) & (count == 1)
  return jnp.where(erase[..., None], jnp.zeros((), image.dtype), image), erase


def erase_objects(image, masks, valid, key):
  """Object erasing of the source crops with fresh draws (``sample_erase_params``)."""
  b, _, h, w = masks.shape
  return erase_with(image, masks, valid, sample_erase_params(key, b, h, w))


# --- ImageNet feature distance (dacsam.py calc_feat_dist) --------------------------------------

def downscale_label_ratio(label, scale: int, min_ratio: float,
                          num_classes: int = labels_lib.NUM_CLASSES):
  """The reference's ``downscale_label_ratio``: per ``scale``×``scale`` cell its majority label,
  255 where that label's share is below ``min_ratio`` or is 255 (ignore counts as a class)."""
  b, h, w = label.shape
  th, tw = h // scale, w // scale
  lab = jnp.where(label == labels_lib.IGNORE, num_classes, label)[:, :th * scale, :tw * scale]
  onehot = jax.nn.one_hot(lab, num_classes + 1, dtype=jnp.float32)
  counts = onehot.reshape(b, th, scale, tw, scale, num_classes + 1).sum((2, 4))
  ratio = counts / jnp.float32(scale * scale)
  best = jnp.argmax(ratio, -1)
  keep = (best != num_classes) & (jnp.max(ratio, -1) >= min_ratio)
  return jnp.where(keep, best, labels_lib.IGNORE).astype(jnp.int32)


def feature_distance(feat, feat_imnet, label, *, classes, min_ratio: float):
  """``mean ‖feat − feat_imnet‖₂`` over the cells whose downscaled label is in ``classes``.

  ``feat`` ``[B,h,w,C]`` (the last backbone stage), ``label`` ``[B,H,W]``;
  the scale is ``W // w`` as the reference's. 0 for an empty mask. The
  norm's gradient at a zero difference is 0, as PyTorch's.
  """
  scale = label.shape[2] // feat.shape[2]
  lab = downscale_label_ratio(label, scale, min_ratio)
  if lab.shape != feat.shape[:3]:
    raise ValueError(f"feature distance: labels {label.shape[1:]} downscaled by {scale} are "
                     f"{lab.shape[1:]}, the features {feat.shape[1:3]}: choose a crop size "
                     "whose stride-32 map is H // (W // w) (as the reference requires)")
  mask = jnp.isin(lab, jnp.asarray(classes, jnp.int32))
  sq = jnp.sum(jnp.square(feat.astype(jnp.float32) - feat_imnet.astype(jnp.float32)), -1)
  dist = jnp.where(sq > 0, jnp.sqrt(jnp.where(sq > 0, sq, 1.0)), 0.0)
  return jnp.sum(jnp.where(mask, dist, 0.0)) / jnp.maximum(jnp.sum(mask), 1)


def _last_backbone_map(module, image):
  return module.backbone(image, train=False)[-1]


def fd_enabled(cfg) -> bool:
  """Static: the feature distance runs (an ImageNet checkpoint and λ > 0)."""
  return bool(cfg.uda.imnet_checkpoint) and cfg.uda.fdist_lambda > 0


def frozen_params(config, workdir: str, source_variables, mesh):
  """The step's frozen argument: the ImageNet backbone (feature distance on), else nothing."""
  del source_variables  # no regulariser
  if not fd_enabled(config.adapt):
    return {}
  path = fileio.resolve(config.adapt.uda.imnet_checkpoint, workdir)
  _, variables, _ = inference.load_model(config.model, path, mesh)
  return {"backbone": variables["params"]["backbone"]}


# --- the step ------------------------------------------------------------------------------------

def source_batch(batch: dict) -> dict:
  """The ``source_`` keys of a batch without their prefix (train_source's batch)."""
  return {k[len(SOURCE):]: v for k, v in batch.items() if k.startswith(SOURCE)}


def source_loss(model, params, batch_stats, frozen, src, rngs, *, cfg):
  """Source terms (semantic CE, both R-CNN branches, the feature distance) and
  the BN statistics after the source forward; ``rngs``: (dropout, sampling)."""
  out, mut = model.apply(
      {"params": params, "batch_stats": batch_stats}, src[keys.IMAGE], train=True,
      targets=steps.instance_targets(src), rngs={"dropout": rngs[0], "sampling": rngs[1]},
      mutable=["batch_stats"])
  terms = {f"src/{k}": v for k, v in
           steps.supervised_terms(out, src, sem_normalize=cfg.sem_normalize).items()}
  if fd_enabled(cfg):
    u = cfg.uda
    f_imnet = jax.lax.stop_gradient(model.apply(
        {"params": frozen}, src[keys.IMAGE], method=_last_backbone_map))
    terms["src/fdist"] = u.fdist_lambda * feature_distance(
        out["features"][-1], f_imnet, src[keys.SEMANTIC], classes=tuple(u.fdist_classes),
        min_ratio=u.fdist_scale_min_ratio)
  return terms, mut.get("batch_stats", batch_stats)


def uda_loss(model, params, batch_stats, frozen, src, mixed, rng, *, cfg):
  """``L_src + L_fd + L_mix`` and its terms; the twice-updated BN statistics.
  ``mixed`` None (``mix_weight`` 0): the source terms alone."""
  r = jax.random.split(rng, 3)
  terms, bs = source_loss(model, params, batch_stats, frozen, src, r[:2], cfg=cfg)
  if mixed is not None:
    out, mut = model.apply(
        {"params": params, "batch_stats": bs}, mixed["image"], train=True,
        semantic_only=True, rngs={"dropout": r[2]}, mutable=["batch_stats"])
    bs = mut.get("batch_stats", bs)
    terms["mix/sem"] = cfg.uda.mix_weight * losses_lib.semantic_ce(
        out["sem_logits"], mixed["labels"], normalize=cfg.sem_normalize,
        weight=mixed["weights"])
  return sum(terms.values()), (terms, bs)


def mixed_batch(model, teacher, batch_stats, src, x_u, rng, *, cfg):
  """Teacher labels on the target crops, ClassMix of the (erased) source crops into them."""
  u = cfg.uda
  return adapt_lib.teacher_classmix(
      model, teacher, batch_stats, src[keys.IMAGE], src[keys.SEMANTIC], x_u, rng,
      threshold=u.teacher_threshold, ignore_top=u.ignore_top, ignore_bottom=u.ignore_bottom,
      crop_height=x_u.shape[1], jitter_p=u.jitter_p, blur_p=u.blur_p,
      strength=u.jitter_strength, sigma_scale=cfg.blur_sigma_scale)


def step_keys(base_rng, step) -> dict:
  """The keys of step ``step``: erasing, ClassMix + augmentation, the student forwards."""
  r_erase, r_mix, r_loss = jax.random.split(jax.random.fold_in(base_rng, step), 3)
  return {"erase": r_erase, "mix": r_mix, "loss": r_loss}


def make_step(model, tx, schedule, mesh, state, *, cfg):
  """Jitted ``(state, batch, frozen, base_rng) -> (state, measurements)``, state donated.

  ``frozen``: :func:`frozen_params` (the ImageNet backbone, or ``{}``).
  """
  u = cfg.uda
  with_classmix = u.mix_weight != 0

  def step_fn(state, batch, frozen, base_rng):
    step = state["step"]
    src, x_u = source_batch(batch), batch[keys.UNLABELED_IMAGE]
    if src[keys.IMAGE].shape != x_u.shape:
      raise ValueError(
          f"uda mixes source crops {src[keys.IMAGE].shape[1:3]} into target crops "
          f"{x_u.shape[1:3]}: set config.input.crop_size and config.adapt.crop_size equal "
          "(the reference crops both 376x376)")
    r = step_keys(base_rng, step)
    teacher = adapt_lib.ema_update(state["teacher"], state["params"], step, u.ema_max)
    erased = None
    if u.erase_objects and keys.MODAL_MASKS in src:
      src[keys.IMAGE], erased = erase_objects(
          src[keys.IMAGE], src[keys.MODAL_MASKS], src[keys.MODAL_VALID], r["erase"])
    mixed = (mixed_batch(model, teacher, state["batch_stats"], src, x_u, r["mix"], cfg=cfg)
             if with_classmix else None)
    grad_fn = jax.value_and_grad(functools.partial(uda_loss, model, cfg=cfg), has_aux=True)
    (loss, (terms, new_bs)), grads = grad_fn(
        state["params"], state["batch_stats"], frozen, src, mixed, r["loss"])
    new_state, m = steps.apply_gradients(dict(state, teacher=teacher), grads, loss, tx,
                                         schedule)
    new_state["batch_stats"] = new_bs
    m |= {f"loss/{k}": v for k, v in terms.items()}
    if with_classmix:
      m["teacher_pseudo_weight"] = mixed["teacher_confident"]
    if erased is not None:
      m["erased_fraction"] = jnp.mean(erased.astype(jnp.float32))
    return new_state, m

  return adapt_lib.jit_step(step_fn, mesh, state)


def make_optimizer(model, cfg, total_steps: int, params):
  """``uda.optim``: DACS trains with the source recipe, not UNLOCK's tiny multipliers."""
  del model
  return optim.make(cfg.uda.optim, total_steps, params)


CONFIG_KEYS = ("uda", "sem_normalize", "blur_sigma_scale")

METHOD = methods.Method(
    name="uda", streams=("source_labelled", "target_unlabelled"), config_keys=CONFIG_KEYS,
    init_state=adapt_lib.init_state, make_step=make_step, make_optimizer=make_optimizer,
    frozen_params=frozen_params)
