"""A model's predictions of a set of panoramas, into the prediction store (``store.py``).

:func:`predict_into_store` is the run behind the ``predict`` and
``predict_adapted`` stages (``config.predict`` says which model, which
panoramas and where): it writes one store entry per panorama, atomically,
skipping complete ones, so a killed run resumes where it stopped; with
several processes each predicts its rows of every global batch of the
(shared) to-do list. An image that cannot be read does not stop the run
(``on_bad_image="skip"``): it gets no entry, and ``<store_dir>/skipped.json``
and the log name it and why (:func:`read_skipped`; a rerun tries it again).
``export_dir`` set also writes every prediction at its image's own size
(``export.py``). The panoramas are predicted in ``config.seam.mode``
(``models/predict.py``); in a seam-aware mode (not ``"flat"``) the
detections of each panorama are merged into one instance per object
across the 360° seam before they are stored
(``data/seam_instances.merge_seam_instances``). Later stages open the store
with :func:`open_store` and name what it lacks with :func:`unpredicted`.
"""
import hashlib
import json
import os
import signal
import time

import jax
from absl import logging
from clu import metric_writers

from unlock_jax import distributed
from unlock_jax import fileio
from unlock_jax import inference
from unlock_jax import model_info
from unlock_jax import progress as progress_lib
from unlock_jax import sharding as shd
from unlock_jax.data import pipeline
from unlock_jax.data import synthpass
from unlock_jax.data.layouts import common
from unlock_jax.data.layouts import folder
from unlock_jax.evaluation import pictures
from unlock_jax.evaluation import report
from unlock_jax.models import predict as predict_lib
from unlock_jax.pseudo import export
from unlock_jax.pseudo import store
from unlock_jax.pseudo import thresholds
from unlock_jax.pseudo import viewer

ON_BAD_IMAGE = ("skip", "fail")
SKIPPED_FILE = "skipped.json"  # in the store folder: the images the last run skipped


def debug_kill(config, n: int) -> None:
  """Tests' stand-in for a killed process: SIGKILL after ``n`` outputs."""
  if n == int(config.debug.get("kill_after_entries", -1)):
    os.kill(os.getpid(), signal.SIGKILL)


def store_meta(config, reader, ckpt_path: str, step) -> dict:
  """What a store is of: one model's predictions of one set of panoramas."""
  return {"image_size": list(reader.image_size), "quant": thresholds.QUANT,
          "checkpoint": ckpt_path, "checkpoint_step": step,
          "num_classes": int(config.model.num_classes),
          "instance_heads": bool(config.model.instance_heads),
          "source": config.predict.images or config.predict.split}


def store_key(names, meta: dict, settings: dict) -> str:
  """Keys results computed from a store: its entries, its meta and the settings."""
  h = hashlib.sha256()
  h.update(json.dumps([list(names), meta, settings], sort_keys=True, default=str).encode())
  return h.hexdigest()[:16]


def open_store(store_dir: str):
  """``(names, meta)`` of the prediction store; an empty one is a clear error."""
  names = store.list_predictions(store_dir)
  if not names:
    raise FileNotFoundError(f"the prediction store {store_dir} is empty: run the "
                            "`predict` stage first (--config.stage=predict)")
  return names, store.read_meta(store_dir)


def read_skipped(store_dir: str) -> dict:
  """``{name: reason}`` of the images the last ``predict`` into ``store_dir`` skipped."""
  path = os.path.join(store_dir, SKIPPED_FILE)
  if not fileio.exists(path):
    return {}
  return {s["name"]: s["reason"] for s in fileio.read_json(path)["skipped"]}


def unpredicted(keys, names, store_dir: str, stage: str) -> list[str]:
  """The reader's ``keys`` without a store entry among ``names``, logged with the reason.

  Images ``predict`` skipped as unreadable are left out (named in the log);
  an image neither predicted nor skipped is left out with a warning to run
  ``predict``.
  """
  have = set(names)
  missing = [k for k in keys if k not in have]
  if missing:
    skipped = read_skipped(store_dir)
    bad = [k for k in missing if k in skipped]
    new = [k for k in missing if k not in skipped]
    logging.warning(
        "%s: %d of %d images have no prediction in %s and are left out: %s%s", stage,
        len(missing), len(keys), store_dir,
        (f"{len(bad)} unreadable ({', '.join(bad[:10])}{', ...' if len(bad) > 10 else ''}; "
         f"reasons in {os.path.join(store_dir, SKIPPED_FILE)})") if bad else "",
        (f"{'; ' if bad else ''}{len(new)} not predicted yet ({', '.join(new[:10])}"
         f"{', ...' if len(new) > 10 else ''}): run the predict stage") if new else "")
  return missing


def _write_skipped(store_dir: str, skipped: list[dict], total: int) -> None:
  skipped = sorted(skipped, key=lambda s: s["name"])
  if jax.process_index() == 0:
    fileio.atomic_write_json(os.path.join(store_dir, SKIPPED_FILE),
                             {"total": total, "skipped": skipped})
  if skipped:
    logging.warning("predict: skipped %d unreadable image(s) of %d (listed in %s; fix or "
                    "remove them and rerun predict, which tries them again):\n%s",
                    len(skipped), total, os.path.join(store_dir, SKIPPED_FILE),
                    "\n".join(f"  {s['path'] or s['name']}: {s['reason']}" for s in skipped))


def predict_into_store(config, workdir: str) -> dict:
  """Predicts ``inference.open_target`` with ``config.predict.checkpoint`` into its store."""
  p = config.predict
  if p.on_bad_image not in ON_BAD_IMAGE:
    raise ValueError(f"config.predict.on_bad_image must be one of {ON_BAD_IMAGE}, "
                     f"got {p.on_bad_image!r}")
  store_dir = fileio.resolve(p.store_dir, workdir)
  mesh = shd.make_mesh()
  reader = inference.open_target(config, workdir)
  ckpt_path = fileio.resolve(p.checkpoint, workdir)
  synthpass.check_trained_on(ckpt_path, fileio.resolve(config.synthpass.out_dir, workdir))
  model, variables, step = inference.load_model(config.model, ckpt_path, mesh)
  meta = store_meta(config, reader, ckpt_path, step)
  if fileio.exists(os.path.join(store_dir, store.META_FILE)):
    store.check_meta(store_dir, meta)  # never mix two models in one store
  elif jax.process_index() == 0:
    store.write_meta(store_dir, meta)

  # Every process must agree on the to-do list: take the union of theirs.
  todo = distributed.union_all(i for i, name in enumerate(reader.keys)
                               if not store.is_complete(store_dir, name))
  logging.info("predict: %d of %d panoramas to do (%d already in %s)", len(todo),
               len(reader), len(reader) - len(todo), store_dir)
  writer = metric_writers.create_default_writer(
      os.path.join(store_dir, "logs"), just_logging=jax.process_index() > 0)
  bs = int(p.batch_size)
  prog = progress_lib.Progress(pipeline.num_eval_steps(len(todo), bs), "predict",
                               writer=writer, unit="batch")
  pictures_dir = fileio.resolve(p.pictures_dir, workdir)
  picture = lambda name: os.path.join(pictures_dir, name.replace("/", "_") + ".png")
  num_pictures = int(p.num_pictures) if p.images else 0
  # The first panoramas without a picture yet: drawn by whichever process
  # predicts them, or by process 0 from the store when they are in it already.
  to_draw = {k for k in reader.keys[:num_pictures] if not fileio.exists(picture(k))}
  predict_fn = predict_lib.jit_predict_fns(model, mesh, config.seam)["panorama"]
  t0, n, nbytes, skipped = time.monotonic(), 0, 0, []
  for ex, row in inference.iterate(reader, todo, predict_fn=predict_fn, variables=variables,
                                   mesh=mesh, batch_size=bs, on_batch=prog.update,
                                   merge_seam=config.seam.mode != "flat"):
    if row is None:  # unreadable
      if p.on_bad_image == "fail":
        raise common.DataError(f"{ex['error']} (--config.predict.on_bad_image=skip "
                               "skips unreadable images and lists them)")
      skipped.append({"name": ex["name"], "path": ex.get(folder.SOURCE_PATH),
                      "reason": ex["error"]})
      continue
    nbytes += store.write_prediction(
        store_dir, ex["name"], row["semantic"],
        thresholds.quantize(row["confidence"]), row["modal"], row["amodal"],
        source_path=ex.get(folder.SOURCE_PATH), source_size=ex.get(folder.SOURCE_SIZE))
    n += 1
    debug_kill(config, n)
    if ex["name"] in to_draw:
      pictures.save_png(picture(ex["name"]),
                        viewer.render_prediction(ex["image"], row, title=ex["name"]))
  secs = time.monotonic() - t0
  if jax.process_index() == 0:
    for i in sorted(reader.keys.index(k) for k in to_draw):
      if i not in todo:  # predicted by an earlier run
        pictures.save_png(picture(reader.keys[i]), viewer.render_prediction(
            reader.load_image(i), store.load_prediction(store_dir, reader.keys[i]),
            title=reader.keys[i]))
  # All processes' counts; also a barrier: the next stage lists the whole store.
  gathered = shd.gather_objects((n, nbytes, skipped))
  n, nbytes = sum(g[0] for g in gathered), sum(g[1] for g in gathered)
  skipped = [s for g in gathered for s in g[2]]
  _write_skipped(store_dir, skipped, len(reader))
  summary = {"predicted": n, "skipped": len(skipped), "total": len(reader), "seconds": secs,
             "panoramas_per_sec": n / secs if secs > 0 else 0.0,
             "bytes_per_panorama": nbytes / n if n else 0.0}
  logging.info("predict: %s", summary)
  writer.write_scalars(0, {f"predict/{k}": v for k, v in summary.items()})
  writer.flush()
  if p.export_dir:
    summary["export"] = export_predictions(config, workdir, reader, ckpt_path)
  return summary


def export_predictions(config, workdir: str, reader, ckpt_path: str) -> dict:
  """The store's entries of ``reader``'s panoramas, at their own sizes, into ``export_dir``.

  The panoptic maps are fused at ``export_tau_m`` (default: the tau in the
  checkpoint's ``model_config.json``, ``model_info.py``).
  """
  p = config.predict
  rec = model_info.read(ckpt_path)
  if p.export_tau_m is not None:
    tau_m, origin = float(p.export_tau_m), "config.predict.export_tau_m"
  elif rec is not None:
    tau_m, origin = rec["tau"][0], rec["path"]
  else:
    tau_m, origin = report.TAU_ADAPTED[0], (
        f"the default: {ckpt_path} has no {model_info.FILE}; set "
        "--config.predict.export_tau_m")
  store_dir = fileio.resolve(p.store_dir, workdir)
  have = set(store.list_predictions(store_dir))
  names = [k for k in reader.keys if k in have]  # less the unreadable ones
  logging.info("predict: exporting %d panoramas, panoptic maps fused at tau_m %.2f (%s)",
               len(names), tau_m, origin)
  return export.export_store(store_dir, fileio.resolve(p.export_dir, workdir), names,
                             tau_m=tau_m, stuff_area=export.stuff_area_for(reader.image_size))
