"""The model's predict functions: every forward at inference goes through here.

As big_vision's trainers hand ``predict_fns`` to the evaluators, the stages
build these functions once per model (:func:`jit_predict_fns`) and pass them
to whatever runs the model on whole images: the evaluators
(``evaluation/evaluators.py``), the prediction store's inference
(``unlock_jax/inference.py``, used by ``predict`` and the Python API). The
adaptation step's EMA teacher (:func:`teacher_labels`) uses the same semantic
rule inside its own jitted step.

The rule (the reference's ``MaskRCNNPanoptic_PL_ALL`` and its test-time
forward, docs/method.md §4): whole image, no flip, the semantic logits
bilinearly resized to the image (float32) before the argmax and the softmax.

Full 360° panoramas may be predicted in a seam mode (``config.seam``,
``defaults.SEAM_MODES``): ``flat`` is that rule (zero padding at both ends);
``circular`` runs the network with ``circular=True`` (every horizontal
padding wraps around, the logits are resized across the seam); ``wrap``
predicts on the panorama extended by ``P = wrap_cols`` columns from its
other end on each side (:func:`extend`), crops the logits back and folds the
detections back (:func:`fold_detections`); ``circular_wrap`` does both. The
extension is static: one compile per panorama size. Pinhole images and
training crops are never periodic and always use ``flat``.
"""
import jax
import jax.numpy as jnp

from unlock_jax import sharding as shd
from unlock_jax.models import defaults
from unlock_jax.models import layers
from unlock_jax.models.rcnn import boxes as box_ops
from unlock_jax.models.rcnn import nms

BRANCHES = ("modal", "amodal")

# The predict functions by name: which outputs each returns. An output not
# asked for is not computed (the semantic evaluator never runs the R-CNN
# branches), so each function compiles to no more than its consumer needs.
PREDICT_FNS = {
    "semantic": dict(confidence=False, detections=False),  # semantic evaluator
    "oass": dict(confidence=False, detections=True),  # panoptic/amodal evaluator
    "panorama": dict(confidence=True, detections=True),  # the store, the API
}


def semantic_logits(out: dict, size, circular: bool = False) -> jax.Array:
  """The network's semantic logits, float32, bilinearly resized to ``size`` (H, W)
  (``circular``: interpolating across a full panorama's seam)."""
  return layers.resize_bilinear(out["sem_logits"].astype(jnp.float32), size,
                                circular=circular)


def extend(image: jax.Array, wrap_cols: int) -> jax.Array:
  """``[B,H,W,C]`` -> ``[B,H,W+2P,C]``: the last P columns in front, the first P behind."""
  return layers.wrap_pad_w(image, wrap_cols, wrap_cols)


def fold_masks(masks: jax.Array, wrap_cols: int) -> jax.Array:
  """``[..., W+2P]`` masks of an extended panorama -> ``[..., W]``: each column ORed
  onto the panorama column it is a copy of."""
  p = wrap_cols
  w = masks.shape[-1] - 2 * p
  pad = lambda m, before, after: jnp.pad(m, [(0, 0)] * (m.ndim - 1) + [(before, after)])
  return (masks[..., p:p + w] | pad(masks[..., p + w:], 0, w - p)
          | pad(masks[..., :p], w - p, 0))


def fold_detections(dets: dict, wrap_cols: int) -> dict:
  """Padded detections ``[B, D, ...]`` of an extended panorama -> those of the panorama.

  Boxes move back by P and take the wrapped convention (``x1`` in ``[0, W)``,
  ``x2 = x1 + width``, ``x2 > W``: across the seam), masks are folded
  (:func:`fold_masks`). A detection is kept if its box centre lies within
  ``P/2`` of the panorama's own columns (``[P/2, W + 3P/2)`` of the
  extension): further out it is a copy of an object whose other copy lies
  nearer the middle, or a piece cut off by the extension's end (an object
  across the seam up to 2P wide is whole in one of its copies). Objects
  near the seam may keep both copies, which fold onto the same mask; every
  consumer of a seam-aware forward removes such duplicates, and merges
  pieces across the seam, with ``data/seam_instances.merge_seam_instances``.
  Kept detections come first by descending score, as the model's output.
  """
  p = wrap_cols
  h, w = dets["masks"].shape[-2], dets["masks"].shape[-1] - 2 * p
  boxes = dets["boxes"].astype(jnp.float32)
  centre = (boxes[..., 0] + boxes[..., 2]) / 2
  keep = dets["valid"].astype(bool) & (centre >= p / 2) & (centre < w + 1.5 * p)
  folded = box_ops.wrap_boxes(boxes - jnp.asarray([p, 0, p, 0], jnp.float32), (h, w))
  idx, ok = jax.vmap(lambda sc, k: nms.top_valid(sc, k, sc.shape[0]))(dets["scores"], keep)
  take = lambda x: jax.vmap(lambda a, i: a[i])(x, idx)
  return {"boxes": jnp.where(ok[..., None], take(folded), 0.0),
          "scores": jnp.where(ok, take(dets["scores"]), 0.0),
          "classes": jnp.where(ok, take(dets["classes"]), 0),
          "masks": take(fold_masks(dets["masks"], p)) & ok[..., None, None],
          "valid": ok}


def predict(model, variables, image, *, confidence: bool = True,
            detections: bool = True, circular: bool = False, wrap_cols: int = 0) -> dict:
  """``(variables, image [B,H,W,3]) -> dict`` at inference (dropout off, stored BN statistics).

  ``circular``: the images are full 360° panoramas; the network pads their
  columns by wrapping around and the logits are resized across the seam
  (``AmodalPASS.__call__``). False: the reference's zero padding.
  ``wrap_cols`` P > 0: the forward runs on the panorama extended by P
  columns from its other end on each side (:func:`extend`; the logits are
  resized with the extension, whose columns are the true neighbours, then
  cropped back; detections folded back by :func:`fold_detections`).

  Keys: ``semantic`` uint8 [B,H,W] (the argmax of the logits), with
  ``confidence`` its max softmax probability float32 [B,H,W], with
  ``detections`` and instance heads the padded detections of both branches
  (``modal``/``amodal``: boxes, scores, classes 0..6, masks, valid).
  """
  h, w = image.shape[1:3]
  p = int(wrap_cols)
  if p:
    defaults.check_seam("wrap", p, w)
  x = extend(image, p) if p else image
  # semantic_only: the R-CNN branches are not even traced when not returned.
  out = model.apply(variables, x, train=False, circular=circular, semantic_only=not detections)
  logits = semantic_logits(out, (h, w + 2 * p), circular and not p)[:, :, p:p + w]
  res = {"semantic": jnp.argmax(logits, -1).astype(jnp.uint8)}
  if confidence:
    res["confidence"] = jnp.max(jax.nn.softmax(logits, axis=-1), -1)
  if detections:
    res.update({b: fold_detections(out[b], p) if p else out[b] for b in BRANCHES if b in out})
  return res


def seam_kwargs(seam) -> dict:
  """:func:`predict`'s ``circular``/``wrap_cols`` of a ``config.seam`` (None: flat)."""
  if seam is None:
    return {}
  mode, p = str(seam["mode"]), int(seam["wrap_cols"])
  defaults.check_seam(mode, p)
  return dict(circular=mode in ("circular", "circular_wrap"),
              wrap_cols=p if mode in ("wrap", "circular_wrap") else 0)


def jit_predict_fns(model, mesh, seam=None) -> dict:
  """``{name: jitted (variables, image) -> dict}`` of :data:`PREDICT_FNS`, batch-sharded.

  Built once per model by the caller and passed down, so each compiles once
  per input shape however many evaluators or passes use it. ``seam``: the
  ``config.seam`` (``mode``, ``wrap_cols``) of full panoramas; None: flat,
  as for pinhole images.
  """
  kw_seam = seam_kwargs(seam)
  return {name: jax.jit(lambda v, x, kw=kw: predict(model, v, x, **kw, **kw_seam),
                        out_shardings=shd.data_sharding(mesh))
          for name, kw in PREDICT_FNS.items()}


def jit_predict_fn_sets(model, mesh, seam) -> tuple[dict, dict]:
  """``(flat, panorama)``: :func:`jit_predict_fns` for pinhole images, and for full
  panoramas in ``seam``'s mode (the same functions when it is ``flat``)."""
  flat = jit_predict_fns(model, mesh)
  return flat, (flat if seam["mode"] == "flat" else jit_predict_fns(model, mesh, seam))


def teacher_labels(model, teacher_params, batch_stats, image):
  """``(argmax [B,H,W] int32, max prob [B,H,W])`` of the EMA teacher at ``image``'s size.

  The adaptation's teacher (docs/method.md §7.4): dropout and drop-path off,
  BatchNorm on the batch's own statistics without storing them (the
  reference's teacher in train mode), semantic output only, no gradient.
  The argmax is taken over the probabilities, as the reference does.
  """
  out, _ = model.apply({"params": teacher_params, "batch_stats": batch_stats}, image,
                       train=False, bn_train=True, semantic_only=True,
                       mutable=["batch_stats"])  # batch statistics, discarded
  probs = jax.nn.softmax(jax.lax.stop_gradient(semantic_logits(out, image.shape[1:3])), -1)
  return jnp.argmax(probs, -1).astype(jnp.int32), jnp.max(probs, -1)
