"""Evaluation of occlusion-aware panoramic segmentation as the UNLOCK reference scores it.

Modules (one job each): ``semantic`` (mIoU), ``panoptic_fusion`` (semantic + detections
→ modal panoptic map / amodal panoptic layers), ``pq`` (mPQ, mAPQ), ``instance_ap``
(mAP, mAAP), ``report`` (``OassMetrics``: the five accumulators, headline table, JSON),
``seam`` (the 360° seam metrics beside the five), ``pictures`` (per-panorama
diagnostic image), ``masks`` (cropped-mask primitives),
``evaluators`` (the configured evaluators, run with the model's predict functions
from ``models/predict.py``).
Random GT/prediction pairs for tests and benchmarks: ``tests/support/synthetic.py``.
"""
