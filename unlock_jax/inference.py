"""Loading a model and running it over whole panoramas: what predict, opll,
adcl_pool, adapt, evaluate and the Python API (``api.py``) share.

* :func:`load_model` (:func:`load_variables` for a model built already):
  ``(model, variables, step)`` of a checkpoint folder (a train run's, a
  converted or exported model's), with one error naming the folder and the
  fix for a damaged or foreign checkpoint.
* :func:`open_target`: the reader of the panoramas ``predict`` reads (a
  user folder, ``config.predict.images``, or the target split); adapt and the
  pseudo-label stages read the same ones. :func:`open_source`,
  :func:`source_iterator`: the labelled source split and its training crops
  (train_source's, and those of adaptation methods that read source data).
* :func:`iterate`: the model's predictions (``models/predict.py``'s
  ``panorama`` function) over a reader, batched and split over processes;
  an unreadable image is reported, not fatal. The predict call runs under
  ``jax.transfer_guard("disallow")`` (as the train step, ``train/loop.py``):
  the image is put explicitly, anything else copied to the devices raises.
* :class:`TargetImages`: the panoramas behind a prediction store's entries.
"""
import jax
import numpy as np

from unlock_jax import checkpoint
from unlock_jax import fileio
from unlock_jax import model_info
from unlock_jax import sharding as shd
from unlock_jax.data import keys
from unlock_jax.data import labels
from unlock_jax.data import layouts
from unlock_jax.data import pipeline
from unlock_jax.data import seam_instances
from unlock_jax.data import transforms
from unlock_jax.data.layouts import common as layouts_common
from unlock_jax.data.layouts import folder
from unlock_jax.models import amodalpass
from unlock_jax.models import defaults as model_defaults
from unlock_jax.models import predict as predict_lib


def load_model(model_cfg, checkpoint_path: str, mesh, step: int | None = None):
  """``(model, variables, step)`` from a train run or converted checkpoint
  (``step``: that step of a run instead of its latest).

  A checkpoint written for another architecture, or a damaged one, fails with
  one message naming the folder and the fix (``checkpoint.CheckpointError``).
  """
  model = amodalpass.build(model_cfg)
  return (model, *load_variables(model, checkpoint_path, mesh, step))


def load_variables(model, checkpoint_path: str, mesh, step: int | None = None):
  """``(variables, step)`` of ``model`` (built already) from a checkpoint, as :func:`load_model`."""
  abstract = checkpoint.abstract_variables(model, (1, 64, 64, 3), mesh)
  return checkpoint.load_variables(checkpoint_path, abstract, step)


def open_target(config, workdir: str):
  """The reader of the panoramas to predict: a user folder or the target split.

  ``config.predict``'s empty entries fall back to ``config.data.target``.
  """
  p = config.predict
  size = tuple(p.image_size or config.data.target.image_size)
  if p.images:
    return folder.Reader(fileio.resolve(p.images, workdir), size)
  root = fileio.resolve(p.root or config.data.target.root, workdir)
  tgt = config.data.target
  # A root of its own is files; otherwise the target domain's format.
  fmt = "files" if p.root else tgt.get("format", "files")
  return pipeline.open_reader(p.layout or tgt.layout, root, p.split, size, format=fmt,
                              data_dir=fileio.resolve(tgt.get("tfds_data_dir", ""), workdir))


def open_source(config, workdir: str):
  """The reader of the labelled source split (``config.data.source``): train_source's."""
  src = config.data.source
  return pipeline.open_reader(src.layout, fileio.resolve(src.root, workdir), src.split,
                              src.get("image_size"), format=src.get("format", "files"),
                              data_dir=fileio.resolve(src.get("tfds_data_dir", ""), workdir),
                              hidden_gt=src.get("hidden_gt", False))


def source_iterator(config, workdir: str, batch_size: int, mesh):
  """Labelled source crops as train_source draws them (``config.input``,
  ``config.seed``; ``batch_size`` global), also for adaptation methods that
  read source data."""
  i = config.input
  return pipeline.train_iterator(
      open_source(config, workdir), batch_size=shd.local_batch_size(batch_size, mesh),
      crop_size=tuple(i.crop_size), seed=config.seed, cat_max_ratio=i.cat_max_ratio,
      flip=i.flip, max_instances=i.max_instances if config.model.instance_heads else 0,
      box_rule=i.box_rule, num_workers=i.num_workers, process_index=jax.process_index(),
      process_count=jax.process_count())


def check_seam(config, stage: str) -> None:
  """``config.seam`` against the width of every full panorama ``stage`` predicts
  (ValueError naming the key); adapt: the panoramas of its evaluations."""
  if stage in ("evaluate", "adapt"):
    names = config.adapt.evals if stage == "adapt" else list(config.evals)
    widths = [config.evals[n].image_size[1] for n in names
              if n in config.evals and config.evals[n].layout in layouts.PANORAMAS]
  else:  # predict, predict_adapted
    widths = [model_info.panorama_size(config)[1]]
  for width in widths or [None]:
    model_defaults.check_seam(config.seam.mode, config.seam.wrap_cols, width)


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


def iterate(reader, indices, *, predict_fn, variables, mesh, batch_size: int,
            on_batch=None, merge_seam: bool = False):
  """Yields ``(example, outputs)`` for this process's share of ``indices``.

  ``predict_fn``: the jitted ``panorama`` function of
  ``models/predict.jit_predict_fns``. ``indices`` must be the same list on
  every process: each process loads its rows of every global batch
  (``pipeline.eval_batches``) and all run the same number of steps.
  ``outputs`` holds numpy ``semantic``, ``confidence``, ``modal``/``amodal``
  (the store's per-branch dicts); it is None for an image that could not be
  read (``example["error"]`` says why). ``merge_seam`` (a seam-aware
  ``config.seam.mode``): each row's detections merged into one instance per
  object across the 360° seam (``data/seam_instances.py``).
  """
  sub = Subset(reader, indices)
  h, w = reader.image_size
  for step, batch in enumerate(pipeline.eval_batches(
      sub, global_batch_size=batch_size, image_size=reader.image_size,
      process_index=jax.process_index(), process_count=jax.process_count())):
    with jax.transfer_guard("disallow"):  # the image put explicitly; nothing else copied
      out = predict_fn(variables, shd.put_array(batch[keys.IMAGE], mesh))
    out = jax.tree.map(shd.local_rows, out)
    for r, ex in enumerate(batch["_host_gt"]):
      if ex is None:  # padding row
        continue
      if "error" in ex:
        yield ex, None
        continue
      row = {"semantic": out["semantic"][r], "confidence": out["confidence"][r]}
      for b in predict_lib.BRANCHES:
        row[b] = detections_row(out.get(b), r, h, w)
        if merge_seam:
          row[b] = seam_instances.merge_seam_instances(row[b])
      yield ex, row
    if on_batch is not None:
      on_batch(step + 1)


class TargetImages:
  """The panoramas behind a prediction store's entries, by entry name."""

  def __init__(self, reader):
    self.reader = reader
    self.index = {k: i for i, k in enumerate(reader.keys)}

  def index_of(self, name) -> int:
    if name not in self.index:
      raise ValueError(f"prediction store entry {name} has no image in the target "
                       f"split ({self.reader.__class__.__module__}); was the store "
                       "written for another data set?")
    return self.index[name]

  def image(self, name) -> np.ndarray:
    """uint8 RGB of a store entry's panorama."""
    return self.reader.load_image(self.index_of(name))

  def images(self, names) -> np.ndarray:
    """Normalised float32 [len(names), H, W, 3]; a None name is a zero (padding) row."""
    h, w = self.reader.image_size
    out = np.zeros((len(names), h, w, 3), np.float32)
    for r, n in enumerate(names):
      if n is not None:
        out[r] = transforms.normalize(self.image(n))
    return out
