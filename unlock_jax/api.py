"""The Python inference API: ``unlock_jax.load(path)`` and ``Model.predict(image)``.

  import unlock_jax
  model = unlock_jax.load("assets/demo_source")   # or <workdir>/adapt/checkpoints
  out = model.predict("pano.jpg")                  # or uint8 [H,W,3], or a PIL image
  out["semantic"]                                  # uint8 [H,W] class ids, the image's size
  out["panoptic"], out["segments"]                 # int32 [H,W] ids and their COCO records
  out["amodal"]["masks"], out["amodal"]["scores"]  # whole objects, occluded parts included

``load(path, config=None, *, tau_m=None, image_size=None, stuff_area=None,
batch_size=None, seam_mode=None, wrap_cols=None)`` takes the folder of a
model's weights:

* an ``export_source`` folder (``assets/demo_source``) or a
  ``tools/convert_torch`` output;
* a run's checkpoints folder (``<workdir>/train_source/checkpoints``,
  ``<workdir>/adapt/checkpoints``): its latest step; or one step folder in it
  (``.../checkpoints/1200``).

The architecture, the panorama size the model predicts at and its panoptic
threshold come from the folder's ``model_config.json``
(``unlock_jax/model_info.py``), written with every checkpoint and export.
For a folder without one (written before it was recorded) pass ``config``:
the experiment's config file as on the command line
(``"configs/demo.py"``, ``"configs/own_panoramas.py:model=b5"``) or its
ConfigDict; a ConfigDict of the ``model`` section alone needs
``image_size`` too. ``tau_m`` (the score a modal detection needs to enter
the panoptic map; default the model's recorded one: 0.95 for a source
model, 0.55 for an adapted one, as the reference evaluates them),
``image_size`` (H, W) and ``stuff_area`` (default: the reference's 2048
pixels of a 400x2048 panorama, scaled to ``image_size``) override the
recorded values. ``seam_mode`` and ``wrap_cols`` (``config.seam``: how the
360° seam is treated, ``models/predict.py``; default: the experiment
config's ``seam`` if ``config`` is one, else ``models/defaults.py``'s for
the panorama width) choose the predict stage's mode; in a seam-aware mode
detections are merged into one instance per object across the seam
(``data/seam_instances.py``), as the predict stage stores them.

``Model.predict(image)`` runs the predict stage's computation
(``unlock_jax/inference.py`` and ``models/predict.py``: the same predict
function, batches and normalisation) on one image, resized to the model's panorama size as the
predict stage resizes the user's own panoramas (``layouts/folder.py``:
EXIF orientation, colour modes to 8-bit RGB, bilinear resize), and returns
at the image's own (height, width) (``pseudo/export.py``: nearest-neighbour
maps and masks, scaled boxes)::

    semantic    uint8 [H,W]    class ids (train ids 0..17, data/labels.py)
    confidence  float32 [H,W]  softmax probability of that class
    panoptic    int32 [H,W]    0 void, else (class + 1) * 1000 + k (k = 0 stuff,
                               k >= 1 the instances of a thing class)
    segments    list of {"id", "category_id", "isthing", "iscrowd", "area", "bbox"}
    modal       {"masks" bool [N,H,W], "boxes" float32 [N,4] (x1, y1, x2, y2),
                 "scores" float32 [N], "classes" int32 [N] (11..17)}: every
                 detection of the visible-part branch, in the model's order
    amodal      the same for the amodal branch (whole objects)

An image of the model's own size gives exactly what ``predict`` stores for it
(the store quantises the confidence to ``thresholds.quantize``); the
``predict`` stage's ``export_dir`` writes the same arrays as files.
``predict_batch(images)`` predicts a list, ``batch_size`` images per step
(default: one per device). The API runs in one process on its local
devices; use the ``predict`` stage for several hosts.
"""
import os

import jax
import ml_collections
import numpy as np
from absl import logging
from PIL import Image
from PIL import ImageOps

from unlock_jax import fileio
from unlock_jax import inference
from unlock_jax import model_info
from unlock_jax import sharding as shd
from unlock_jax.data.layouts import common
from unlock_jax.data.layouts import folder
from unlock_jax.evaluation import report
from unlock_jax.models import defaults as model_defaults
from unlock_jax.models import predict as predict_lib
from unlock_jax.pseudo import export


def _no_record_error(path: str) -> ValueError:
  return ValueError(
      f"{path} has no {model_info.FILE} saying which architecture its weights are for "
      "(checkpoints and exports written before it was recorded). Pass the config the "
      f"model was trained with: unlock_jax.load({path!r}, config='configs/<experiment>.py"
      "[:args]') as given to --config, or that config's ConfigDict (its model section "
      "alone needs image_size=(H, W) too)")


def _architecture(path: str, rec, config, image_size):
  """(model config, panorama size, recorded tau or None) from the record and/or ``config``."""
  if config is None:
    if rec is None:
      raise _no_record_error(path)
    return rec["model"], tuple(image_size or rec["image_size"]), rec["tau"]
  if isinstance(config, (str, os.PathLike)):
    config = model_info.config_from_file(os.fspath(config))
  if not isinstance(config, ml_collections.ConfigDict):
    raise TypeError(f"config must be a config file path or a ConfigDict, got "
                    f"{type(config).__name__}")
  tau = rec["tau"] if rec is not None else None
  if "model" in config:  # a whole experiment config
    return config.model, tuple(image_size or model_info.panorama_size(config)), tau
  size = image_size or (rec["image_size"] if rec is not None else None)
  if size is None:
    raise ValueError(f"config is a model section without the panorama size: pass "
                     f"image_size=(H, W) to unlock_jax.load({path!r}, ...)")
  return config, tuple(size), tau


def _weights(path: str) -> tuple[str, int | None]:
  """(checkpoint folder, step) for a model folder or a run's step folder."""
  base = os.path.basename(path.rstrip("/"))
  parent = os.path.dirname(path.rstrip("/"))
  if base.isdigit() and not fileio.exists(os.path.join(path, "_METADATA")):
    return parent, int(base)  # checkpoints/<step>: the run's folder, that step
  return path, None


def _seam(config, size, seam_mode, wrap_cols) -> dict:
  """``config.seam`` of a whole experiment config, else the default for the width;
  the arguments override it."""
  if isinstance(config, (str, os.PathLike)):
    config = model_info.config_from_file(os.fspath(config))
  has = isinstance(config, ml_collections.ConfigDict) and "seam" in config
  seam = (config.seam if has else model_defaults.default_seam_config(size[1])).to_dict()
  seam.update({k: v for k, v in (("mode", seam_mode), ("wrap_cols", wrap_cols))
               if v is not None})
  model_defaults.check_seam(seam["mode"], seam["wrap_cols"], size[1],
                            what="unlock_jax.load(seam_mode=..., wrap_cols=...): seam")
  return seam


def load(path: str, config=None, *, tau_m: float | None = None, image_size=None,
         stuff_area: int | None = None, batch_size: int | None = None,
         seam_mode: str | None = None, wrap_cols: int | None = None) -> "Model":
  """A model ready to ``predict`` (module docstring)."""
  if jax.process_count() > 1:
    raise RuntimeError("unlock_jax.load runs in one process; predict on several hosts "
                       "with the predict stage (--config.stage=predict)")
  path = fileio.absolute(os.fspath(path))
  if not fileio.isdir(path):
    raise FileNotFoundError(
        f"model folder {path} does not exist: pass an export_source folder (like "
        "assets/demo_source), a run's checkpoints folder (<workdir>/train_source/"
        "checkpoints, <workdir>/adapt/checkpoints) or one of its step folders")
  n_dev = jax.device_count()  # the mesh's
  batch_size = int(batch_size or n_dev)
  if batch_size < 1 or batch_size % n_dev:
    raise ValueError(f"batch_size={batch_size} must be a positive multiple of the "
                     f"{n_dev} devices")
  rec = model_info.read(path)
  model_cfg, size, tau = _architecture(path, rec, config, image_size)
  seam = _seam(config, size, seam_mode, wrap_cols)
  mesh = shd.make_mesh()
  ckpt, step = _weights(path)
  model, variables, step = inference.load_model(model_cfg, ckpt, mesh, step=step)
  return Model(model, variables, mesh, checkpoint=ckpt, step=step,
               model_config=model_cfg, image_size=size,
               tau_m=float(tau_m if tau_m is not None else
                           (tau or report.TAU_ADAPTED)[0]),
               stuff_area=int(stuff_area or export.stuff_area_for(size)),
               batch_size=batch_size, seam=seam)


class _Images:
  """Images already at the model's size, as a reader for ``inference.iterate``."""

  def __init__(self, images, image_size):
    self.images, self.image_size = images, image_size
    self.keys = [str(i) for i in range(len(images))]

  def __len__(self) -> int:
    return len(self.images)

  def load_image(self, i: int) -> np.ndarray:
    return self.images[i]


def to_rgb(image) -> np.ndarray:
  """uint8 [H,W,3] RGB at its own size of a path, a PIL image or a numpy array."""
  if isinstance(image, (str, os.PathLike)):
    return folder.decode(os.fspath(image))
  if isinstance(image, Image.Image):
    return folder.to_rgb(ImageOps.exif_transpose(image), "the PIL image")
  a = np.asarray(image)
  if a.dtype != np.uint8 or a.ndim != 3 or a.shape[2] != 3:
    raise ValueError(f"image must be uint8 [H,W,3] RGB (or a file path or a PIL image), "
                     f"got {a.dtype} {list(a.shape)}")
  return a


class Model:
  """A loaded model; ``predict(image)`` and ``predict_batch(images)`` (module docstring).

  Attributes: ``image_size`` (H, W) the panoramas are resized to, ``tau_m``,
  ``stuff_area``, ``checkpoint`` and ``step`` (None for an exported model),
  ``model_config``, ``batch_size``, ``seam`` (``{"mode", "wrap_cols"}``).
  """

  def __init__(self, model, variables, mesh, *, checkpoint, step, model_config,
               image_size, tau_m, stuff_area, batch_size, seam=None):
    self.model, self.variables, self.mesh = model, variables, mesh
    self.seam = dict(seam or {"mode": "flat", "wrap_cols": 0})
    self._predict_fn = predict_lib.jit_predict_fns(model, mesh, self.seam)["panorama"]
    self.checkpoint, self.step, self.model_config = checkpoint, step, model_config
    self.image_size = tuple(int(v) for v in image_size)
    self.tau_m, self.stuff_area, self.batch_size = tau_m, stuff_area, batch_size
    self._warned: set = set()  # image sizes warned about

  def _check_aspect(self, image, size) -> None:
    """Warns once per image size whose aspect ratio the resize distorts (as ``predict``)."""
    (ih, iw), (h, w) = size, self.image_size
    msg = folder.aspect_problem((iw, ih), (w, h))
    if msg and (iw, ih) not in self._warned:
      self._warned.add((iw, ih))
      what = os.fspath(image) if isinstance(image, (str, os.PathLike)) else "an image"
      logging.warning("%s %s (here: unlock_jax.load(..., image_size=(H, W))). Further %dx%d "
                      "images are resized alike without a warning.", what, msg, iw, ih)

  def __repr__(self) -> str:
    return (f"Model({self.checkpoint!r}, step={self.step}, image_size={self.image_size}, "
            f"tau_m={self.tau_m}, stuff_area={self.stuff_area}, seam={self.seam['mode']!r})")

  def predict(self, image) -> dict:
    """One image → its prediction at its own size (module docstring)."""
    return self.predict_batch([image])[0]

  def predict_batch(self, images) -> list[dict]:
    """Several images (each as ``predict`` takes them) → their predictions, in order."""
    images = list(images)
    out = []
    for start in range(0, len(images), self.batch_size):
      chunk = images[start:start + self.batch_size]
      rgbs = [to_rgb(im) for im in chunk]
      for im, a in zip(chunk, rgbs):
        self._check_aspect(im, a.shape[:2])
      reader = _Images([common.fit_rgb(a, self.image_size) for a in rgbs], self.image_size)
      rows = {ex["name"]: row for ex, row in inference.iterate(
          reader, range(len(reader)), predict_fn=self._predict_fn, variables=self.variables,
          mesh=self.mesh, batch_size=self.batch_size,
          merge_seam=self.seam["mode"] != "flat")}
      for i, a in enumerate(rgbs):
        out.append(export.at_resolution(rows[str(i)], a.shape[:2], tau_m=self.tau_m,
                                        stuff_area=self.stuff_area))
    return out
