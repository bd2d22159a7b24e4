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
"""
import jax
import jax.numpy as jnp

from unlock_jax import sharding as shd
from unlock_jax.models import layers

BRANCHES = ("modal", "amodal")

# The predict functions by name: which outputs each returns. An output not
# asked for is not computed (the semantic evaluator never runs the R-CNN
# branches), so each function compiles to no more than its consumer needs.
PREDICT_FNS = {
    "semantic": dict(confidence=False, detections=False),  # semantic evaluator
    "oass": dict(confidence=False, detections=True),  # panoptic/amodal evaluator
    "panorama": dict(confidence=True, detections=True),  # the store, the API
}


def semantic_logits(out: dict, size) -> jax.Array:
  """The network's semantic logits, float32, bilinearly resized to ``size`` (H, W)."""
  return layers.resize_bilinear(out["sem_logits"].astype(jnp.float32), size)


def predict(model, variables, image, *, confidence: bool = True,
            detections: bool = True) -> dict:
  """``(variables, image [B,H,W,3]) -> dict`` at inference (dropout off, stored BN statistics).

  Keys: ``semantic`` uint8 [B,H,W] (the argmax of the logits), with
  ``confidence`` its max softmax probability float32 [B,H,W], with
  ``detections`` and instance heads the padded detections of both branches
  (``modal``/``amodal``: boxes, scores, classes 0..6, masks, valid).
  """
  out = model.apply(variables, image, train=False)
  logits = semantic_logits(out, image.shape[1:3])
  res = {"semantic": jnp.argmax(logits, -1).astype(jnp.uint8)}
  if confidence:
    res["confidence"] = jnp.max(jax.nn.softmax(logits, axis=-1), -1)
  if detections:
    res.update({b: out[b] for b in BRANCHES if b in out})
  return res


def jit_predict_fns(model, mesh) -> dict:
  """``{name: jitted (variables, image) -> dict}`` of :data:`PREDICT_FNS`, batch-sharded.

  Built once per model by the caller and passed down, so each compiles once
  per input shape however many evaluators or passes use it.
  """
  return {name: jax.jit(lambda v, x, kw=kw: predict(model, v, x, **kw),
                        out_shardings=shd.data_sharding(mesh))
          for name, kw in PREDICT_FNS.items()}


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
