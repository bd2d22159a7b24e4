"""The five headline numbers (mIoU, mPQ, mAP, mAAP, mAPQ) and their per-class table.

``OassMetrics`` bundles the five accumulators of one evaluation run; ``evaluate_image``
feeds one panorama (GT dict + prediction dict, both numpy) to all of them and returns the
fused panoptic predictions so pictures can reuse them.
"""
import math

import numpy as np

from unlock_jax import constants
from unlock_jax.data import labels
from unlock_jax.evaluation import instance_ap
from unlock_jax.evaluation import panoptic_fusion
from unlock_jax.evaluation import pq
from unlock_jax.evaluation import semantic

# Score thresholds for fusing detections, (tau_m, tau_a) (constants.py).
TAU_ADAPTED = constants.TAU_ADAPTED
TAU_SOURCE_ONLY = constants.TAU_SOURCE_ONLY
HEADLINE = ("mIoU", "mPQ", "mAP", "mAAP", "mAPQ")


class OassMetrics:
  """The five accumulators of the reference's ``evaluate_oass_for_maskrcnn``.

  tau_m / tau_a only affect mPQ and mAPQ (mAP/mAAP use every detection).
  ``one_to_one=True`` switches mAPQ to the published APQ matching.
  """

  def __init__(self, tau_m: float = TAU_ADAPTED[0], tau_a: float = TAU_ADAPTED[1],
               categories=None, stuff_area: int = panoptic_fusion.STUFF_AREA,
               one_to_one: bool = False,
               min_region_size: int = instance_ap.MIN_REGION_SIZE):
    self.tau_m, self.tau_a, self.stuff_area = tau_m, tau_a, stuff_area
    self.semantic = semantic.SemanticAccumulator()
    self.panoptic = pq.PanopticAccumulator(categories)
    self.amodal_panoptic = pq.AmodalPanopticAccumulator(categories, one_to_one)
    self.instance = instance_ap.InstanceAPAccumulator(False, min_region_size)
    self.amodal_instance = instance_ap.InstanceAPAccumulator(True, min_region_size)
    self.num_images = 0

  def add(self, gt: dict, pred: dict) -> dict:
    return evaluate_image(gt, pred, self)

  def merge(self, other: "OassMetrics") -> None:
    for name in ("semantic", "panoptic", "amodal_panoptic", "instance", "amodal_instance"):
      getattr(self, name).merge(getattr(other, name))
    self.num_images += other.num_images

  def result(self) -> dict:
    """Headline numbers (percent), flags for undefined ones, per-class rows, details."""
    sem = self.semantic.result()
    pan = self.panoptic.result()
    apan = self.amodal_panoptic.result()
    ins = self.instance.result()
    ains = self.amodal_instance.result()
    rows = []
    for c, name in enumerate(labels.CLASS_NAMES):
      row = {"id": c, "name": name, "IoU": float(sem["class_iou"][c]),
             "PQ": _get_pq(pan, c), "APQ": _get_pq(apan, c), "AP": math.nan,
             "AAP": math.nan}
      if labels.is_thing(c):
        t = c - labels.FIRST_THING
        row["AP"] = float(ins["class_ap"][t])
        row["AAP"] = float(ains["class_ap"][t])
      rows.append(row)
    return {
        "mIoU": float(sem["mIoU"]), "mPQ": float(pan["mPQ"]), "mAP": float(ins["mAP"]),
        "mAAP": float(ains["mAAP"]), "mAPQ": float(apan["mAPQ"]),
        # At IoU 0.5 only: the reading a young detector is judged by.
        "AP50": float(ins["AP50"]), "AAP50": float(ains["AP50"]),
        "undefined": {"mIoU": sem["mIoU_undefined"], "mPQ": pan["mPQ_undefined"],
                      "mAP": ins["mAP_undefined"], "mAAP": ains["mAAP_undefined"],
                      "mAPQ": apan["mAPQ_undefined"]},
        "num_images": self.num_images,
        "tau_m": self.tau_m, "tau_a": self.tau_a,
        "per_class": rows,
        "details": {"semantic": sem, "panoptic": pan, "amodal_panoptic": apan,
                    "instance": ins, "amodal_instance": ains},
    }


def _get_pq(res, c):
  row = res["per_class"].get(c)
  return float(row["pq"]) if row is not None and row["counted"] else math.nan


def evaluate_image(gt: dict, pred: dict, metrics: OassMetrics) -> dict:
  """Adds one panorama to every accumulator.

  ``gt``: semantic, panoptic, segments, instance_ids, amodal (see the dataset readers).
  ``pred``: ``sem`` [H,W] argmax and ``modal``/``amodal`` padded detection dicts.
  Returns the fused predictions: ``{"panoptic", "amodal_panoptic", "instance_map"}``.
  """
  modal = panoptic_fusion.prepare_detections(pred["modal"])
  amodal = panoptic_fusion.prepare_detections(pred["amodal"])
  metrics.semantic.add(pred["sem"], gt["semantic"])
  ins_map = panoptic_fusion.modal_instance_map(modal, metrics.tau_m)
  pan = panoptic_fusion.merge_semantic_and_instance(pred["sem"], ins_map,
                                                    metrics.stuff_area)
  metrics.panoptic.add(gt["panoptic"], gt["segments"], pan)
  layered = panoptic_fusion.amodal_panoptic(pred["sem"], amodal, metrics.tau_a,
                                            metrics.stuff_area)
  metrics.amodal_panoptic.add(gt["semantic"], gt["amodal"], layered)
  metrics.instance.add(gt, modal)
  metrics.amodal_instance.add(gt, amodal)
  metrics.num_images += 1
  return {"panoptic": pan, "amodal_panoptic": layered, "instance_map": ins_map}


def _fmt(v) -> str:
  return "    -" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:5.1f}"


_COLUMNS = ("IoU", "PQ", "APQ", "AP", "AAP")
# The reference's log line, then the IoU-0.5 readings.
_SUMMARY_LINES = (("mIoU", "mAPQ", "mPQ", "mAAP", "mAP"), ("AP50", "AAP50"))


def format_table(result: dict) -> str:
  """Per-class rows and the headline numbers, in the reference's log order.

  ``result`` is :meth:`OassMetrics.result` or :func:`semantic_result`; columns
  and numbers it does not have are left out.
  """
  rows = result["per_class"]
  cols = [k for k in _COLUMNS if k in rows[0]]
  header = f"{'class':16s}" + "".join(f" {k:>5s}" for k in cols)
  lines = [header]
  for r in rows:
    lines.append(f"{r['name']:16s}" + "".join(f" {_fmt(r[k])}" for k in cols))
  lines.append("-" * len(header))
  for names in _SUMMARY_LINES:
    if any(k in result for k in names):
      lines.append(" ".join(f"-{k}: {result[k]:<8.2f}" for k in names
                            if k in result).rstrip())
  flags = [k for k, v in result["undefined"].items() if v]
  if flags:
    lines.append("undefined (no GT/prediction at all, reported as 0): " + ", ".join(flags))
  return "\n".join(lines)


def semantic_result(sem: dict) -> dict:
  """A ``SemanticAccumulator`` result shaped as :meth:`OassMetrics.result`
  (mIoU and per-class IoU only; NaN for a class in neither GT nor prediction)."""
  rows = [{"id": c, "name": name,
           "IoU": float(sem["class_iou"][c]) if sem["class_counted"][c] else math.nan}
          for c, name in enumerate(labels.CLASS_NAMES)]
  return {"mIoU": float(sem["mIoU"]), "undefined": {"mIoU": sem["mIoU_undefined"]},
          "per_class": rows, "details": {"semantic": sem}}


def to_jsonable(obj):
  """Plain-Python copy for json.dump: numpy → lists/scalars, NaN/inf → None."""
  if isinstance(obj, dict):
    return {str(k): to_jsonable(v) for k, v in obj.items()}
  if isinstance(obj, (list, tuple)):
    return [to_jsonable(v) for v in obj]
  if isinstance(obj, np.ndarray):
    return to_jsonable(obj.tolist())
  if isinstance(obj, (np.bool_, bool)):
    return bool(obj)
  if isinstance(obj, (np.integer, int)):
    return int(obj)
  if isinstance(obj, (np.floating, float)):
    return float(obj) if math.isfinite(obj) else None
  return obj


def comparison_table(runs: dict) -> str:
  """Headline metrics of every evaluator, then its seam metrics (``seam/*``, where
  computed), one column per named run (``evaluate``'s runs)."""
  names = list(runs)
  keys = [k for k in next(iter(runs.values()))["results"]
          if k.split("/")[-1] in HEADLINE and k.count("/") == 1]
  keys += sorted({k for r in runs.values() for k in r["results"] if "/seam/" in k})
  width = max([len(k) for k in keys] + [6])
  lines = [f"{'metric':<{width}}" + "".join(f"  {n:>12}" for n in names)]
  for k in keys:
    lines.append(f"{k:<{width}}" + "".join(
        f"  {runs[n]['results'].get(k, float('nan')):12.2f}" for n in names))
  return "\n".join(lines)
