r"""One picture of an object across the 360° seam, before and after: flat vs seam-aware.

  python -m unlock_jax.tools.seam_picture --flat /tmp/unlock_demo \
      --seam /tmp/unlock_demo_seam --data /tmp/unlock_demo_seam \
      --out docs/example_seam.png [--index N | --auto] [--seam_mode circular]

Picks a panorama of the target val split with a ground-truth object across
the seam (pixels in its first and its last column, as ``evaluation/seam.py``
defines it) and predicts it with the ``--flat`` model in mode ``flat`` and
with the ``--seam`` model in its seam mode (``inference.iterate``: the predict
stage's computation, detections merged into one instance per object across
the seam when not flat), each fused as the ``oass`` evaluator does.
``--index N`` takes panorama N; ``--auto`` predicts every panorama with a
crossing object and takes the one where the difference shows plainest: a
crossing object the flat model splits and the seam model keeps whole first,
then one whose piece count differs, then the largest object (the picture
illustrates; the seam metrics of ``evaluate`` measure). The object shown is
that panorama's plainest by the same order.
Rows, each under a text strip: the input, the ground truth's panoptic map,
the flat model's, the seam-aware model's (the evaluator's colours,
``evaluation/pictures.py``: every instance its own shade of its class, white
lines where instances touch, so an object cut in two shows two colours), and
the class legend. Every row is shown rolled by W/2 so the seam runs down the
middle, where a 1-px magenta column is inserted to mark it: left of it the
panorama's last column, right of it its first. The strips say which model and
mode drew each row, and how many predicted segments the crossing object
became (a segment of its class with more than half of its pixels inside it,
the seam metrics' split rule).

``--flat``/``--seam``: a model folder (an export such as assets/demo_source,
a run's checkpoints folder: its latest step), or a run's workdir (its ``adapt/checkpoints``, else ``train_source/checkpoints``).
``--seam_mode`` defaults to the seam run's recorded ``config.seam`` (its
``provenance/``). ``--data``: a synthpass data folder or a run's workdir
(``BlendPASS/`` or ``data/BlendPASS/`` under it) or the BlendPASS folder.
"""
import glob
import json
import os

from absl import app
from absl import flags
import numpy as np
from PIL import Image
from PIL import ImageDraw

from unlock_jax import fileio
from unlock_jax import inference
from unlock_jax import model_info
from unlock_jax import sharding as shd
from unlock_jax.data import labels
from unlock_jax.data.layouts import blendpass
from unlock_jax.evaluation import pictures
from unlock_jax.evaluation import report
from unlock_jax.evaluation import seam
from unlock_jax.models import defaults as model_defaults
from unlock_jax.models import predict as predict_lib
from unlock_jax.pseudo import export

MARKER = np.array([255, 0, 255], np.uint8)  # no class of the palette is magenta
TITLE_HEIGHT = 2 * pictures.LABEL_HEIGHT


def _define_flags():
  # Defined when run as a program only: other tools define --out too, and
  # absl refuses a flag defined twice in one process (the test suite's).
  flags.DEFINE_string("flat", None, "The flat (zero-padded) model: folder or run workdir.")
  flags.DEFINE_string("seam", None, "The seam-aware model: folder or run workdir.")
  flags.DEFINE_string("data", None, "Synthpass data folder or run workdir (target val).")
  flags.DEFINE_string("out", "docs/example_seam.png", "The PNG to write.")
  flags.DEFINE_integer("index", None, "Panorama index in the target val split.")
  flags.DEFINE_bool("auto", False, "Pick the panorama where the difference shows "
                    "plainest (module docstring).")
  flags.DEFINE_string("seam_mode", None, "The seam model's config.seam.mode "
                      "(default: its run's recorded one).")
  flags.DEFINE_integer("wrap_cols", None, "config.seam.wrap_cols for the seam "
                       "model (default: its run's recorded one).")
  flags.DEFINE_float("scale", 1.0, "Picture size relative to the panorama.")


class Predictor:
  """One model's predict stage on full panoramas of ``size`` in one seam mode
  (``inference.iterate``: its batches, normalisation and seam merging).

  ``path``: an export or a run's checkpoints folder with its ``model_config.json``
  (which gives the architecture and the panoptic threshold ``tau_m``).
  """

  def __init__(self, path: str, size, mode: str, wrap_cols: int | None = None):
    rec = model_info.read(path)
    if rec is None:
      raise FileNotFoundError(
          f"{path} has no {model_info.FILE} saying which architecture its weights are "
          "for: pass an export_source folder or a run's checkpoints folder written with it")
    width = int(size[1])
    wrap_cols = int(wrap_cols or model_defaults.wrap_cols_for(width))
    model_defaults.check_seam(mode, wrap_cols, width, what="seam_picture: seam")
    self.seam = {"mode": mode, "wrap_cols": wrap_cols}
    self.mesh = shd.make_mesh()
    self.model, self.variables, _ = inference.load_model(rec["model"], path, self.mesh)
    self.fn = predict_lib.jit_predict_fns(self.model, self.mesh, self.seam)["panorama"]
    self.tau_m = float(rec["tau"][0] if rec.get("tau") else report.TAU_ADAPTED[0])
    self.stuff_area = export.stuff_area_for(size)

  def predict(self, reader, index: int) -> dict:
    """The predict stage's row of panorama ``index`` (``inference.iterate``)."""
    ((_, row),) = inference.iterate(
        reader, [index], predict_fn=self.fn, variables=self.variables, mesh=self.mesh,
        batch_size=self.mesh.size, merge_seam=self.seam["mode"] != "flat")
    return row


def model_folder(path: str) -> str:
  """A run workdir's latest weights (adapt, else train_source); any other folder as is."""
  for stage in ("adapt", "train_source"):
    ckpt = os.path.join(path, stage, "checkpoints")
    if fileio.isdir(ckpt):
      return ckpt
  if not fileio.isdir(path):
    raise FileNotFoundError(f"model {path} does not exist: pass a model folder "
                            "(assets/demo_source, <workdir>/adapt/checkpoints) or a run workdir")
  return path


def recorded_seam(path: str) -> dict | None:
  """``config.seam`` of the run that ``path`` (a workdir or a folder in it) belongs to:
  its newest ``provenance/adapt`` record, else its newest of any stage; None if none."""
  path = os.path.abspath(path.rstrip("/"))
  for _ in range(4):  # <workdir>/adapt/checkpoints/<step> at most
    records = sorted(glob.glob(os.path.join(path, "provenance", "adapt", "*.json")),
                     key=os.path.basename) or sorted(
        glob.glob(os.path.join(path, "provenance", "*", "*.json")), key=os.path.basename)
    if records:
      with open(records[-1]) as f:
        return json.load(f)["config"].get("seam")
    path = os.path.dirname(path)
  return None


def open_val(data: str) -> blendpass.Reader:
  """The BlendPASS val reader of a synthpass folder, a run workdir or a BlendPASS folder."""
  for root in (os.path.join(data, "data", "BlendPASS"), os.path.join(data, "BlendPASS"), data):
    if fileio.exists(os.path.join(root, "Panoptic", "val_trainId_K2B.json")):
      return blendpass.Reader(root, "val", image_size=None)
  raise FileNotFoundError(
      f"no BlendPASS val split under {data}: expected {data}/data/BlendPASS/ (a run "
      f"workdir), {data}/BlendPASS/ (a synthpass data folder) or {data} itself holding "
      "Panoptic/val_trainId_K2B.json")


def crossing_objects(gt: dict) -> list[tuple[int, int]]:
  """``(area, segment id)`` of the panorama's thing instances across the seam, largest first."""
  pan = np.asarray(gt["panoptic"])
  ids = seam.crossing_ids(pan)
  ids = ids[pictures.is_instance(ids)]
  return sorted(((int((pan == i).sum()), int(i)) for i in ids), key=lambda t: (-t[0], t[1]))


def candidates(reader, index: int | None = None) -> list[int]:
  """The panoramas to consider: ``[index]`` if that one has a crossing object, else
  (None) every panorama that has one; ValueError naming the split if there is none."""
  where = f"the BlendPASS val split at {getattr(reader, 'root', '?')}"
  if index is not None:
    if not 0 <= index < len(reader):
      raise ValueError(f"--index={index} is outside {where} (0..{len(reader) - 1})")
    if not crossing_objects(reader.load(index)):
      raise ValueError(f"panorama {index} ({reader.names[index]}) of {where} has no object "
                       "across the seam (pixels in its first and last column); pick another "
                       "--index or use --auto")
    return [index]
  found = [i for i in range(len(reader)) if crossing_objects(reader.load(i))]
  if not found:
    raise ValueError(f"no panorama of {where} ({len(reader)} panoramas) has a ground-truth "
                     "object across the seam (pixels in its first and last column): nothing "
                     "to show")
  return found


def visibility(pieces_flat: int, pieces_seam: int, area: int) -> tuple:
  """How plainly a crossing object shows the difference, larger = plainer: split by the
  flat model and one instance for the seam model first, then any other change, then
  the object's area."""
  return (pieces_flat >= 2 and pieces_seam == 1, pieces_flat != pieces_seam, area)


def evaluator_prediction(out: dict) -> dict:
  """A predict stage row (store classes 11..17, valid rows only) → the ``oass``
  evaluator's ``pred`` (``report.evaluate_image``: instance classes 0..6, ``valid``)."""
  pred = {"sem": np.asarray(out["semantic"], np.int32)}
  for b in ("modal", "amodal"):
    d = out[b]
    pred[b] = {"valid": np.ones(len(d["classes"]), bool),
               "classes": np.asarray(d["classes"], np.int64) - labels.FIRST_THING,
               "scores": d["scores"], "boxes": d["boxes"], "masks": d["masks"]}
  return pred


def panoptic(predictor: Predictor, reader, index: int, gt: dict) -> np.ndarray:
  """The evaluator's fused modal panoptic map of ``predictor``'s prediction of panorama
  ``index`` (``gt``: its ground truth)."""
  metrics = report.OassMetrics(tau_m=predictor.tau_m, stuff_area=predictor.stuff_area)
  pred = evaluator_prediction(predictor.predict(reader, index))
  return report.evaluate_image(gt, pred, metrics)["panoptic"]


def pieces(pred_pan: np.ndarray, gt: dict, seg_id: int) -> int:
  """Predicted segments of the object's class with more than ``seam.PIECE_FRACTION`` of
  their pixels inside GT segment ``seg_id`` (0: missed, 1: one instance, 2+: split)."""
  inside = np.asarray(gt["panoptic"]) == seg_id
  ids, counts = np.unique(pred_pan, return_counts=True)
  in_counts = np.array([(inside & (pred_pan == i)).sum() for i in ids])
  thing = pictures.is_instance(ids) & (ids // labels.LABEL_DIVISOR == seg_id // labels.LABEL_DIVISOR)
  return int((thing & (in_counts > seam.PIECE_FRACTION * counts)).sum())


def roll_to_middle(panel: np.ndarray) -> np.ndarray:
  """``panel`` [H,W,3] rolled by W // 2 columns, so its first column lands at W // 2,
  with a marker column inserted before it: [H, W + 1, 3], the seam at column W // 2."""
  w = panel.shape[1]
  rolled = np.roll(panel, w // 2, axis=1)
  marker = np.broadcast_to(MARKER, (panel.shape[0], 1, 3))
  return np.concatenate([rolled[:, :w // 2], marker, rolled[:, w // 2:]], 1)


def render(image: np.ndarray, rows: list[tuple[np.ndarray, str]], title: str,
           legend_ids, scale: float = 1.0) -> np.ndarray:
  """uint8 picture: the title, each un-rolled ``(panel, caption)`` scaled, rolled to the
  middle under its caption strip, the legend. ``image`` is the first panel."""
  out = []
  for panel, caption in [(image, "input")] + rows:
    panel = pictures.resize_panel(np.asarray(panel, np.uint8), scale)
    row = pictures.label_panel(roll_to_middle(panel), caption)
    row[:pictures.LABEL_HEIGHT, panel.shape[1] // 2] = MARKER  # the line through the strip
    out.append(row)
  width = out[0].shape[1]
  strip = Image.new("RGB", (width, TITLE_HEIGHT), (0, 0, 0))
  draw = ImageDraw.Draw(strip)
  for i, line in enumerate(title.split("\n")[:2]):
    draw.text((3, 1 + i * pictures.LABEL_HEIGHT), line, fill=(255, 255, 255))
  out.insert(0, np.asarray(strip))
  out.append(pictures.legend_rows(legend_ids, width,
                                  "instances in shades of their class, black = ignore"))
  return np.concatenate(out, 0)


def _describe(n: int, name: str) -> str:
  return {0: f"the {name} is missed"}.get(
      n, f"the {name} is one instance" if n == 1 else f"the {name} is split into {n}")


def analyse(flat: Predictor, aware: Predictor, reader, index: int) -> dict:
  """Both models' fused panoptic maps of panorama ``index`` and, per crossing GT object,
  ``(visibility, area, segment id, pieces flat, pieces seam)``, plainest first."""
  gt = reader.load(index)
  preds = {"flat": panoptic(flat, reader, index, gt),
           "seam": panoptic(aware, reader, index, gt)}
  objects = []
  for area, seg_id in crossing_objects(gt):
    n = [pieces(preds[k], gt, seg_id) for k in ("flat", "seam")]
    objects.append((visibility(*n, area), area, seg_id, *n))
  objects.sort(key=lambda o: (o[0], -o[2]), reverse=True)
  return {"gt": gt, "preds": preds, "objects": objects}


def pick(flat: Predictor, aware: Predictor, reader, indices) -> tuple[int, dict]:
  """``(index, analysis)`` of the panorama among ``indices`` whose plainest crossing object
  is the plainest (:func:`visibility`; the first on ties)."""
  best = None
  for i in indices:
    a = analyse(flat, aware, reader, i)
    if best is None or a["objects"][0][0] > best[1]["objects"][0][0]:
      best = (i, a)
  return best


def seam_picture(seam_mode: str, index: int, analysis: dict, scale: float = 1.0):
  """``(picture, info)`` of one analysed panorama (:func:`analyse`): the rows as
  :func:`render` draws them; ``info`` names the panorama, the object and the pieces
  each model made of it."""
  gt, preds = analysis["gt"], analysis["preds"]
  _, area, seg_id, n_flat, n_seam = analysis["objects"][0]
  name = labels.CLASS_NAMES[seg_id // labels.LABEL_DIVISOR]
  n_cross = len(analysis["objects"])
  x = np.flatnonzero((np.asarray(gt["panoptic"]) == seg_id).any(0))
  half = np.asarray(gt["panoptic"]).shape[1] // 2  # the rolled picture's left: x >= half
  rows = [
      (pictures.colour_panoptic(gt["panoptic"]),
       f"ground truth: {n_cross} object(s) across the seam; shown: a {name} ({area} px, "
       f"{int((x >= half).sum())} columns left of the seam, {int((x < half).sum())} right)"),
      (pictures.colour_panoptic(preds["flat"]),
       f"before: flat model, mode flat: {_describe(n_flat, name)}"),
      (pictures.colour_panoptic(preds["seam"]),
       f"after: seam model, mode {seam_mode}: {_describe(n_seam, name)}"),
  ]
  title = (f"panorama {gt['name']} (target val #{index}), rolled by W/2: the seam "
           "(azimuth +-180 deg) is the magenta line\n"
           "left of it the panorama's last column, right of it its first")
  legend_ids = pictures.class_ids(gt["semantic"], *[p // labels.LABEL_DIVISOR
                                                    for p in preds.values()])
  picture = render(gt["image"], rows, title, legend_ids, scale)
  info = {"index": index, "name": gt["name"], "object": name, "segment_id": seg_id,
          "area": area, "crossing_objects": n_cross,
          "pieces": {"flat": n_flat, "seam": n_seam}, "seam_mode": seam_mode}
  return picture, info


FLAGS = flags.FLAGS


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  if (FLAGS.index is None) == (not FLAGS.auto):
    raise app.UsageError("pass exactly one of --index N and --auto")
  rec = recorded_seam(FLAGS.seam) or {}
  mode = FLAGS.seam_mode or rec.get("mode")
  if mode is None:
    raise app.UsageError(f"{FLAGS.seam} belongs to no run with a provenance/ record of "
                         "config.seam: pass --seam_mode (circular, wrap or circular_wrap)")
  if mode == "flat":
    raise app.UsageError(f"the seam model's mode is 'flat' ({FLAGS.seam}'s recorded "
                         "config.seam): pass a seam-aware --seam_mode")
  reader = open_val(FLAGS.data)
  indices = candidates(reader, None if FLAGS.auto else FLAGS.index)
  size = reader.image_size
  flat = Predictor(model_folder(FLAGS.flat), size, "flat")
  aware = Predictor(model_folder(FLAGS.seam), size, mode,
                    FLAGS.wrap_cols or rec.get("wrap_cols"))
  index, analysis = pick(flat, aware, reader, indices)
  picture, info = seam_picture(aware.seam["mode"], index, analysis, FLAGS.scale)
  pictures.save_png(FLAGS.out, picture, optimize=True)
  print(f"wrote {FLAGS.out} ({picture.shape[1]}x{picture.shape[0]}): {json.dumps(info)}")


if __name__ == "__main__":
  _define_flags()
  flags.mark_flags_as_required(["flat", "seam", "data"])
  app.run(main)
