"""Stage 1: predict every target panorama whole and keep it compactly (docs/method.md §4).

Per panorama the store (``config.predict.store_dir``; ``pseudo/store.py``)
keeps the semantic argmax (uint8), its max softmax probability as a uint16
code (``thresholds.quantize``; OPLL thresholds are exact on the stored
values), the per-class histogram of those codes (which OPLL's threshold pass
reads instead of the maps) and both branches' detections with box-cropped,
bit-packed masks, a small fraction of the reference's float maps. Entries are
written atomically; a rerun skips complete ones, so a killed run resumes
where it stopped.

``config.predict.images`` set to a folder predicts the user's own
equirectangular JPG/PNG panoramas instead (any depth, names and conversions
in ``data/layouts/folder.py``; resized to the configured size) and draws the
first ``num_pictures`` of them. An image that cannot be read does not stop
the run (``on_bad_image="skip"``, the default): ``<store_dir>/skipped.json``
and the log name it and why; ``"fail"`` stops at the first one instead.
``export_dir`` set also writes every prediction at its image's own size
(``pseudo/export.py``: semantic PNG, COCO panoptic PNG and JSON, COCO
instances JSON), the panoptic maps fused at ``export_tau_m`` (default: the
checkpoint's ``model_config.json``). The run itself: ``pseudo/predictions.py``.
"""
from unlock_jax import fingerprint
from unlock_jax import provenance
from unlock_jax.pseudo import predictions


def run(config, workdir: str) -> dict:
  provenance.record(workdir, "predict", config,
                    fingerprint.begin(config, workdir, "predict"))
  return predictions.predict_into_store(config, workdir)
