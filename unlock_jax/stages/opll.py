"""Stage 2: OPLL pseudo-labels from the prediction store (docs/method.md §5).

Class-wise thresholds over the whole store (``<out>/thresholds.json``), the
optional prototype filter (``config.opll.prototype_filter``), then labels per
panorama in the reference's layout (``<out>/OPLL/``) and packed for the
adaptation (``<out>/packed/``). With hidden ground truth (synthpass
``BlendPASS/_synth_gt``) a quality report (``<out>/quality.json``, a table,
TensorBoard scalars) of raw argmax/all detections, OPLL and OPLL +
prototypes; pictures of the first ``num_pictures`` panoramas. The passes,
their resume and their cost: ``pseudo/opll.py``.
"""
import os

import jax
from absl import logging
from clu import metric_writers

from unlock_jax import fileio
from unlock_jax import fingerprint
from unlock_jax import inference
from unlock_jax import provenance
from unlock_jax import sharding as shd
from unlock_jax.data import labels as labels_lib
from unlock_jax.pseudo import opll
from unlock_jax.pseudo import predictions
from unlock_jax.pseudo import quality
from unlock_jax.pseudo import thresholds


def run(config, workdir: str) -> dict:
  provenance.record(workdir, "opll", config, fingerprint.begin(config, workdir, "opll"))
  shd.connect_processes()
  o = config.opll
  store_dir = fileio.resolve(config.predict.store_dir, workdir)
  names, meta = predictions.open_store(store_dir)
  out_dir = fileio.resolve(o.out_dir, workdir)
  pt = {b: (float(o[b].p), float(o[b].t)) for b in ("semantic", "modal", "amodal")}
  settings = {"pt": pt, "proto": bool(o.prototype_filter), "margin": float(o.prototype_margin),
              "adcl": tuple(config.adcl_pool.pt)}
  fp = predictions.store_key(names, meta, settings)
  writer = metric_writers.create_default_writer(out_dir, just_logging=jax.process_index() > 0)

  acc = opll.compute_thresholds(store_dir, names, out_dir, float(o.semantic.p), fp)
  th = {b: acc[b].thresholds(*pt[b]) for b in pt}
  th_adcl = acc["amodal"].thresholds(*settings["adcl"])
  if jax.process_index() == 0:
    fileio.atomic_write_json(os.path.join(out_dir, "thresholds.json"),
                             {b: thresholds.to_json(th[b]) for b in th} | {"fingerprint": fp})
  logging.info("opll thresholds (semantic tau): %s",
               {labels_lib.CLASS_NAMES[c]: round(v["tau"], 4) for c, v in th["semantic"].items()})

  gt = None  # synthpass's hidden ground truth of the target train split, if there
  if o.quality and not config.predict.images and config.predict.split == "train":
    gt = opll.hidden_ground_truth(
        fileio.resolve(config.predict.root or config.data.target.root, workdir),
        meta["image_size"])
  mesh = shd.make_mesh()
  images = inference.TargetImages(inference.open_target(config, workdir))
  predictions.unpredicted(images.reader.keys, names, store_dir, "opll")
  proto_test = None
  if o.prototype_filter or gt is not None:  # the report shows the filter's effect
    ckpt = fileio.resolve(config.predict.checkpoint, workdir)
    model, variables, _ = inference.load_model(config.model, ckpt, mesh)
    protos, present = opll.compute_prototypes(
        model, variables, mesh, images, store_dir, names, th["semantic"], out_dir, fp,
        batch_size=int(o.batch_size), state_every=int(o.state_every))
    n_max = int(config.model.rcnn.max_dets) if config.model.instance_heads else 1
    proto_test = opll.PrototypeTest(model, variables, mesh, protos, present,
                                    float(o.prototype_margin), n_max)

  outputs = opll.Outputs(out_dir, int(o.num_pictures), names, with_quality=gt is not None)
  todo = outputs.incomplete(names)
  logging.info("opll: labels for %d of %d panoramas to write", len(todo), len(names))
  opll.write_labels(todo, store_dir=store_dir, outputs=outputs, th=th, th_adcl=th_adcl,
                    images=images, batch_size=int(o.batch_size), proto_test=proto_test,
                    filter_labels=bool(o.prototype_filter), gt=gt, writer=writer,
                    on_written=lambda k: predictions.debug_kill(config, k),
                    merge_seam=config.seam.mode != "flat")

  summary = {"panoramas": len(names), "fingerprint": fp,
             "prototype_filter": bool(o.prototype_filter)}
  if gt is not None:
    summary["quality"] = res = opll.merge_quality(outputs, names)
    if jax.process_index() == 0:
      fileio.atomic_write_json(os.path.join(out_dir, "quality.json"), res)
      print(quality.format_table(res), flush=True)
    writer.write_scalars(0, quality.scalars(res))
  writer.flush()
  shd.barrier("opll labels written")  # adapt reads every process's labels
  return summary
