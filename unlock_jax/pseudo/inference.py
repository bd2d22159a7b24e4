"""Whole-panorama inference of the source model for the offline stages.

One jitted, batch-sharded function per model returns what the prediction
store keeps (semantic argmax, its max softmax probability, both branches'
detections). As
the reference's ``MaskRCNNPanoptic_PL_ALL`` (docs/method.md §4): whole image, no flip,
logits bilinearly resized to the image before the softmax.
"""
import jax
import jax.numpy as jnp
import numpy as np

from unlock_jax import checkpoint
from unlock_jax import sharding as shd
from unlock_jax.data import keys
from unlock_jax.data import labels
from unlock_jax.data import pipeline
from unlock_jax.data.layouts import common as layouts_common
from unlock_jax.data.layouts import folder
from unlock_jax.models import amodalpass
from unlock_jax.models import layers

_CACHE: dict = {}


def predict_fn(model, mesh):
  """Jitted ``(variables, image [B,H,W,3]) -> dict`` of device arrays.

  Keys: ``semantic`` uint8 [B,H,W], ``confidence`` float32 [B,H,W], and with
  instance heads ``modal``/``amodal`` padded detections (classes 0..6).
  """
  key = (id(model), id(mesh))
  if key not in _CACHE:
    def predict(variables, image):
      out = model.apply(variables, image, train=False)
      logits = layers.resize_bilinear(out["sem_logits"].astype(jnp.float32),
                                      image.shape[1:3])
      probs = jax.nn.softmax(logits, axis=-1)
      res = {"semantic": jnp.argmax(logits, -1).astype(jnp.uint8),
             "confidence": jnp.max(probs, -1)}
      for b in ("modal", "amodal"):
        if b in out:
          res[b] = out[b]
      return res
    _CACHE[key] = (model, jax.jit(predict, out_shardings=shd.data_sharding(mesh)))
  return _CACHE[key][1]


def detections_row(dets: dict, r: int, height: int, width: int) -> dict:
  """Row ``r`` of padded host detections → the store's per-branch dict."""
  if dets is None:
    return {"classes": np.zeros((0,), np.int32), "scores": np.zeros((0,), np.float32),
            "boxes": np.zeros((0, 4), np.float32), "masks": np.zeros((0, height, width), bool)}
  valid = np.asarray(dets["valid"][r]).astype(bool)
  return {"classes": np.asarray(dets["classes"][r])[valid].astype(np.int32) + labels.FIRST_THING,
          "scores": np.asarray(dets["scores"][r])[valid].astype(np.float32),
          "boxes": np.asarray(dets["boxes"][r])[valid].astype(np.float32),
          "masks": np.asarray(dets["masks"][r])[valid].astype(bool)}


class Subset:
  """A reader restricted to ``indices`` (``keys``, ``load_image``, ``image_size`` too).

  ``load`` gives the image to predict, named by its key (a folder reader's
  examples also carry its source path and size, ``layouts/folder.py``). An
  unreadable image does not stop the input pipeline: its example holds
  ``"error"`` (the reason, naming the file) and a black image.
  """

  def __init__(self, reader, indices):
    self.reader, self.indices = reader, [int(i) for i in indices]
    self.keys = [reader.keys[j] for j in self.indices]
    self.image_size = reader.image_size

  def __len__(self) -> int:
    return len(self.indices)

  def load_image(self, i: int) -> np.ndarray:
    return self.reader.load_image(self.indices[i])

  def load(self, i: int) -> dict:
    j = self.indices[i]
    try:
      if isinstance(self.reader, folder.Reader):
        return self.reader.load(j)
      return dict(name=self.reader.keys[j], image=self.reader.load_image(j))
    except layouts_common.DataError as e:
      h, w = self.reader.image_size
      ex = {"name": self.reader.keys[j], "image": np.zeros((h, w, 3), np.uint8),
            "error": str(e)}
      if isinstance(self.reader, folder.Reader):
        ex[folder.SOURCE_PATH] = self.reader.paths[j]
      return ex


def iterate(reader, indices, *, model, variables, mesh, batch_size: int,
            on_batch=None):
  """Yields ``(example, outputs)`` for this process's share of ``indices``.

  ``indices`` must be the same list on every process: each process loads its
  rows of every global batch (``pipeline.eval_batches``) and all run the same
  number of steps. ``outputs`` holds numpy ``semantic``, ``confidence``,
  ``modal``/``amodal`` (the store's per-branch dicts); it is None for an
  image that could not be read (``example["error"]`` says why).
  """
  predict = predict_fn(model, mesh)
  sub = Subset(reader, indices)
  for step, batch in enumerate(pipeline.eval_batches(
      sub, global_batch_size=batch_size, image_size=reader.image_size,
      process_index=jax.process_index(), process_count=jax.process_count())):
    out = jax.tree.map(shd.local_rows,
                       predict(variables, shd.put_array(batch[keys.IMAGE], mesh)))
    h, w = reader.image_size
    for r, ex in enumerate(batch["_host_gt"]):
      if ex is None:  # padding row
        continue
      if "error" in ex:
        yield ex, None
        continue
      row = {"semantic": out["semantic"][r], "confidence": out["confidence"][r]}
      for b in ("modal", "amodal"):
        row[b] = detections_row(out.get(b), r, h, w)
      yield ex, row
    if on_batch is not None:
      on_batch(step + 1)


def load_model(model_cfg, checkpoint_path: str, mesh, step: int | None = None):
  """``(model, variables, step)`` from a train run or converted checkpoint
  (``step``: that step of a run instead of its latest).

  A checkpoint written for another architecture, or a damaged one, fails with
  one message naming the folder and the fix (``checkpoint.CheckpointError``).
  """
  model = amodalpass.build(model_cfg)
  abstract = checkpoint.abstract_variables(model, (1, 64, 64, 3), mesh)
  variables, step = checkpoint.load_variables(checkpoint_path, abstract, step)
  return model, variables, step
