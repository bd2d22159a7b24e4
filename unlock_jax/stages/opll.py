"""Stage 2: OPLL pseudo-labels from the prediction store (docs/method.md §5).

1. Class-wise thresholds over the whole store: semantic exactly on the
   stored uint16 confidence codes, in two passes over per-entry histograms
   (pixel counts per class and 1024-code block, then the codes of the one
   block per class holding the quantile; the maps are not decoded),
   modal/amodal from per-class score lists; each process reads its share and
   the accumulators are merged, so every process gets the same thresholds.
   Written to ``<out>/thresholds.json``.
2. Optional prototype filter (``config.opll.prototype_filter``; see
   ``pseudo/prototypes.py`` for the rule and its cost): prototypes from the
   thresholded labels over the whole set, then a per-panorama feature test.
3. Labels per panorama (§5.2, §5.3) written in the reference's layout under
   ``<out>/OPLL/`` and in the packed form the adaptation reads
   (``<out>/packed/<name>.npz``, written last, so it marks completion).
4. With hidden ground truth (synthpass ``BlendPASS/_synth_gt``), a quality
   report (``<out>/quality.json``, a table, TensorBoard scalars) for raw
   argmax/all detections, OPLL, and OPLL + prototypes; and pictures of the
   first ``num_pictures`` panoramas (a rerun with more labels the missing
   ones again to draw them).

Resume: the threshold passes (seconds) restart from the beginning if killed;
their merged result, and the prototypes, are saved with a fingerprint of the
store and the settings (the prototypes' partial sums every ``state_every``
panoramas too), so a rerun does not redo them; labels, the long part, are
skipped per panorama when complete.
"""
import hashlib
import io
import json
import os
import pickle

import jax
import numpy as np
from absl import logging
from clu import metric_writers

from unlock_jax import fileio
from unlock_jax import fingerprint
from unlock_jax import progress as progress_lib
from unlock_jax import provenance
from unlock_jax import sharding as shd
from unlock_jax.data import labels as labels_lib
from unlock_jax.data import packed_labels
from unlock_jax.data import pipeline
from unlock_jax.data import transforms
from unlock_jax.data.layouts import blendpass
from unlock_jax.evaluation import pictures
from unlock_jax.pseudo import inference
from unlock_jax.pseudo import labels
from unlock_jax.pseudo import pool
from unlock_jax.pseudo import prototypes
from unlock_jax.pseudo import quality
from unlock_jax.pseudo import store
from unlock_jax.pseudo import thresholds
from unlock_jax.pseudo import viewer
from unlock_jax.stages import predict as predict_stage

BRANCHES = ("modal", "amodal")


def cache_key(names, meta: dict, settings: dict) -> str:
  """Keys the saved threshold statistics and prototypes: the store's entries and settings."""
  h = hashlib.sha256()
  h.update(json.dumps([list(names), meta, settings], sort_keys=True, default=str).encode())
  return h.hexdigest()[:16]


def my_share(items):
  """This process's items (strided, so shares stay balanced)."""
  return items[jax.process_index()::jax.process_count()]


def merge_all(obj):
  parts = shd.gather_objects(obj)
  out = parts[0]
  for p in parts[1:]:
    out.merge(p)
  return out


def compute_thresholds(store_dir, names, out_dir, cfg, fp: str) -> dict:
  """The merged threshold statistics of the whole store: two exact passes.

  Semantic (§5.1, ``thresholds`` two-level): pass 1 sums every entry's
  pixel counts per (class, 1024-code block) with the detection scores
  (``store.load_blocks``: a ~10 kB read, ~0.15 ms per 400x2048 panorama);
  after the merge over processes each class's quantile lies in one known
  block, and pass 2 sums only those <= 18 blocks' code counts
  (``store.load_fine``, ~0.3 ms); merged again, they give the exact
  quantile code, as the full histogram would. Entries without the block
  table (older stores) are read through ``store.load_summary`` in both
  passes. Each process reads its share; every process gets the same result.

  Resume: the passes take seconds even at N = 2000, so a killed run redoes
  them from the start; the merged result is saved (``_state/``, with ``fp``)
  and a rerun whose processes all find it does not read the store again.
  """
  state_path = os.path.join(out_dir, "_state", f"thresholds2_p{jax.process_index()}.pkl")
  done = None
  if fileio.exists(state_path):
    saved = pickle.loads(fileio.read_bytes(state_path))
    if isinstance(saved, dict) and saved.get("fp") == fp:
      done = saved["acc"]
  if all(shd.gather_objects(done is not None)):  # collective: all skip, or none does
    logging.info("opll: threshold statistics already computed (%s)", state_path)
    return done
  p_sem = float(cfg.semantic.p)
  mine = my_share(names)
  coarse = thresholds.BlockCounts()
  scores = {b: thresholds.ScoreLists() for b in BRANCHES}
  prog = progress_lib.Progress(2 * len(mine), "opll/thresholds", unit="read")
  for i, name in enumerate(mine):
    summ = store.load_blocks(store_dir, name)
    coarse.add(summ["blocks"])
    for b in BRANCHES:
      scores[b].add(summ[b]["classes"], summ[b]["scores"])
    prog.update(i + 1)
  coarse = merge_all(coarse)
  blocks, _ = coarse.locate(p_sem)
  fine = thresholds.FineCounts(blocks)
  for i, name in enumerate(mine):
    fine.add(store.load_fine(store_dir, name, blocks))
    prog.update(len(mine) + i + 1)
  acc = {"semantic": thresholds.SemanticQuantiles(coarse, merge_all(fine), p_sem),
         **{b: merge_all(scores[b]) for b in BRANCHES}}
  fileio.atomic_write_bytes(state_path, pickle.dumps({"fp": fp, "acc": acc}))
  return acc


def _batches(n: int, global_bs: int):
  """This process's rows (-1 = padding) of every global batch over ``range(n)``."""
  return pipeline.process_rows(n, global_bs, jax.process_index(), jax.process_count())


class TargetImages:
  """The panoramas behind the store's entries, by entry name."""

  def __init__(self, config, workdir):
    self.reader = predict_stage.open_target(config, workdir)
    self.index = {k: i for i, k in enumerate(self.reader.keys)}

  def index_of(self, name) -> int:
    if name not in self.index:
      raise ValueError(f"prediction store entry {name} has no image in the target "
                       f"split ({self.reader.__class__.__module__}); was the store "
                       "written for another data set?")
    return self.index[name]

  def images(self, names):
    h, w = self.reader.image_size
    out = np.zeros((len(names), h, w, 3), np.float32)
    for r, n in enumerate(names):
      if n is not None:
        out[r] = transforms.normalize(self.image(n))
    return out

  def image(self, name) -> np.ndarray:
    """uint8 RGB of a store entry's panorama."""
    return self.reader.load_image(self.index_of(name))


def compute_prototypes(model, variables, mesh, images, store_dir, names, th_sem,
                       out_dir, cfg, fp):
  """Whole-set prototypes (one network pass, resumable per batch)."""
  path = os.path.join(out_dir, "prototypes.npz")
  found = None
  if fileio.exists(path):
    z = fileio.load_npz(path)
    if str(z["fingerprint"]) == fp:
      found = z["prototypes"], z["present"]
  state_path = os.path.join(out_dir, "_state", f"prototypes_p{jax.process_index()}.pkl")
  acc, start = prototypes.Sums(), 0
  if fileio.exists(state_path):
    saved = pickle.loads(fileio.read_bytes(state_path))
    if saved["fp"] == fp:
      acc, start = saved["sums"], saved["step"]
  # Collective: all processes skip, or all resume from one batch (a kill can
  # fall between two processes' state saves: then all restart).
  agreed = shd.gather_objects((found is not None, start))
  if all(f for f, _ in agreed):
    return found
  if len({s for _, s in agreed}) > 1:
    acc, start = prototypes.Sums(), 0
  fn = prototypes.sums_fn(model, mesh)
  plan = _batches(len(names), int(cfg.batch_size))
  prog = progress_lib.Progress(len(plan), "opll/prototypes", unit="batch")
  h, w = images.reader.image_size
  for step in range(start, len(plan)):
    rows = [names[i] if i >= 0 else None for i in plan[step]]
    lab = np.full((len(rows), h, w), labels_lib.IGNORE, np.int32)
    wt = np.zeros((len(rows), h, w), np.float32)
    for r, n in enumerate(rows):
      if n is not None:
        pred = store.load_prediction(store_dir, n)
        lab[r] = labels.semantic_labels(pred, th_sem)
        wt[r] = pred["confidence"]
    put = lambda x: shd.put_array(x, mesh)
    s, wsum = fn(variables, put(images.images(rows)), put(lab), put(wt))
    acc.add(shd.local_rows(s).sum(0), shd.local_rows(wsum).sum(0))
    if (step + 1) % max(1, int(cfg.state_every) // int(cfg.batch_size)) == 0:
      fileio.atomic_write_bytes(state_path, pickle.dumps({"fp": fp, "sums": acc,
                                                          "step": step + 1}))
    prog.update(step + 1)
  merged = merge_all(acc)
  protos, present = merged.prototypes()
  if jax.process_index() == 0:
    buf = io.BytesIO()
    np.savez(buf, prototypes=protos, present=present, weights=merged.weights,
             fingerprint=np.asarray(fp))
    fileio.atomic_write_bytes(path, buf.getvalue())
  return protos, present


def _padded_masks(dets, n_max, h, w):
  m = np.zeros((n_max, h, w), bool)
  c = np.zeros((n_max,), np.int32)
  k = min(len(dets["classes"]), n_max)
  m[:k], c[:k] = dets["masks"][:k], dets["classes"][:k]
  return m, c


def _variant(sem, inst, pool_entries):
  return {"semantic": sem, "pool": pool_entries,
          **{b: {k: inst[b][k] for k in ("masks", "classes", "scores")} for b in BRANCHES},
          "uncertain_modal": inst["modal"]["uncertain"],
          "uncertain_amodal": inst["amodal"]["uncertain"]}


def open_store(config, workdir: str):
  """``(store_dir, names, meta)`` of the prediction store; empty → a clear error."""
  store_dir = fileio.resolve(config.predict.store_dir, workdir)
  names = store.list_predictions(store_dir)
  if not names:
    raise FileNotFoundError(f"the prediction store {store_dir} is empty: run the "
                            "`predict` stage first (--config.stage=predict)")
  return store_dir, names, store.read_meta(store_dir)


def run(config, workdir: str) -> dict:
  provenance.record(workdir, "opll", config, fingerprint.begin(config, workdir, "opll"))
  shd.connect_processes()
  o = config.opll
  store_dir, names, meta = open_store(config, workdir)
  out_dir = fileio.resolve(o.out_dir, workdir)
  pt = {b: (float(o[b].p), float(o[b].t)) for b in ("semantic", "modal", "amodal")}
  settings = {"pt": pt, "proto": bool(o.prototype_filter), "margin": float(o.prototype_margin),
              "adcl": tuple(config.adcl_pool.pt)}
  fp = cache_key(names, meta, settings)
  writer = metric_writers.create_default_writer(
      out_dir, just_logging=jax.process_index() > 0)

  acc = compute_thresholds(store_dir, names, out_dir, o, fp)
  th = {b: acc[b].thresholds(*pt[b]) for b in pt}
  th_adcl = acc["amodal"].thresholds(*settings["adcl"])
  if jax.process_index() == 0:
    fileio.atomic_write_json(os.path.join(out_dir, "thresholds.json"),
                             {b: thresholds.to_json(th[b]) for b in th} | {"fingerprint": fp})
  logging.info("opll thresholds (semantic tau): %s",
               {labels_lib.CLASS_NAMES[c]: round(v["tau"], 4) for c, v in th["semantic"].items()})

  gt_reader = None
  root = fileio.resolve(config.predict.root or config.data.target.root, workdir)
  if (o.quality and not config.predict.images and config.predict.split == "train"
      and fileio.isdir(os.path.join(root, blendpass.HIDDEN_DIR))):
    gt_reader = blendpass.Reader(root, "train", tuple(meta["image_size"]), hidden_gt=True)
    gt_index = {k: i for i, k in enumerate(gt_reader.keys)}
  use_proto = bool(o.prototype_filter) or gt_reader is not None
  mesh = shd.make_mesh()
  images = TargetImages(config, workdir)
  predict_stage.unpredicted(images.reader.keys, names, store_dir, "opll")
  if use_proto:
    ckpt = fileio.resolve(config.predict.checkpoint, workdir)
    model, variables, _ = inference.load_model(config.model, ckpt, mesh)
    protos, present = compute_prototypes(model, variables, mesh, images, store_dir, names,
                                         th["semantic"], out_dir, o, fp)
    filt = prototypes.filter_fn(model, mesh)
    n_max = int(config.model.rcnn.max_dets) if config.model.instance_heads else 1

  ref_root = os.path.join(out_dir, "OPLL")
  packed = lambda n: os.path.join(out_dir, "packed", n + ".npz")
  part = lambda n: os.path.join(out_dir, "_quality_parts", n + ".pkl")
  pictures_dir = os.path.join(out_dir, "pictures")
  picture = lambda n: os.path.join(pictures_dir, n.replace("/", "_") + ".png")
  first = set(names[:int(o.num_pictures)])
  mine = [n for n in names if not fileio.exists(packed(n))
          or (gt_reader is not None and not fileio.exists(part(n)))
          or (n in first and not fileio.exists(picture(n)))]
  todo = sorted(set().union(*shd.gather_objects(mine)))
  logging.info("opll: labels for %d of %d panoramas to write", len(todo), len(names))
  plan = _batches(len(todo), int(o.batch_size))
  prog = progress_lib.Progress(len(plan), "opll/labels", unit="batch")
  # Pictures are drawn by whichever process labels them (one writer per file).
  h, w = meta["image_size"]
  zero_tau = {c: {"tau": 0.0, "tau_code": 0} for c in range(labels_lib.NUM_CLASSES)}
  no_dets = inference.detections_row(None, 0, h, w)
  put = lambda x: shd.put_array(x, mesh)
  written = 0
  for step, rows in enumerate(plan):
    rows = [todo[i] if i >= 0 else None for i in rows]
    preds = [store.load_prediction(store_dir, n) if n else None for n in rows]
    sems = [labels.semantic_labels(p, th["semantic"]) if p else None for p in preds]
    if use_proto:
      lab = np.stack([s.astype(np.int32) if s is not None else
                      np.full((h, w), labels_lib.IGNORE, np.int32) for s in sems])
      padded = {b: [_padded_masks(p[b] if p else no_dets, n_max, h, w) for p in preds]
                for b in BRANCHES}
      mm, cm = (np.stack(x) for x in zip(*padded["modal"]))
      ma, ca = (np.stack(x) for x in zip(*padded["amodal"]))
      pk, km, ka = jax.tree.map(shd.local_rows, filt(
          variables, put(images.images(rows)), put(lab), put(mm), put(cm),
          put(ma), put(ca), protos, present, np.float32(o.prototype_margin)))
    for r, (n, pred, sem) in enumerate(zip(rows, preds, sems)):
      if n is None:
        continue
      reject = {b: None for b in BRANCHES}
      sem_p = sem
      if use_proto:
        sem_p = np.where(pk[r], sem, labels_lib.IGNORE).astype(np.uint8)
        reject = {"modal": ~km[r][:len(pred["modal"]["classes"])],
                  "amodal": ~ka[r][:len(pred["amodal"]["classes"])]}
      inst = {b: labels.instance_labels(pred, b, th[b]) for b in BRANCHES}
      inst_p = ({b: labels.instance_labels(pred, b, th[b], reject=reject[b]) for b in BRANCHES}
                if use_proto else inst)
      chosen_sem, chosen = (sem_p, inst_p) if o.prototype_filter else (sem, inst)
      labels.write_reference_layout(ref_root, n, chosen_sem, chosen["modal"], chosen["amodal"])
      variants = None
      if gt_reader is not None or n in first:
        raw_inst = {b: labels.instance_labels(pred, b, zero_tau) for b in BRANCHES}
        # The pool is not prototype-filtered (its own thresholds are strict):
        # the OPLL + prototypes row shows the same pool as OPLL.
        opll_pool = pool.pool_entries(pred, th_adcl)
        variants = {
            "raw": _variant(pred["semantic"], raw_inst, pool.pool_entries(pred, zero_tau)),
            "opll": _variant(sem, inst, opll_pool)}
        if use_proto:
          variants["opll+proto"] = _variant(sem_p, inst_p, opll_pool)
      if gt_reader is not None:
        q = quality.QualityAccumulator()
        q.add(gt_reader.load(gt_index[n]), variants)
        fileio.atomic_write_bytes(part(n), pickle.dumps(q))
      if n in first:
        shown = variants["opll+proto" if o.prototype_filter else "opll"]
        pic = viewer.render_pseudo_labels(images.image(n), shown, title=n)
        pictures.save_png(picture(n), pic)
        writer.write_images(0, {f"opll/{n}": pic[None]})
      packed_labels.write_packed(packed(n), n, chosen_sem, chosen["modal"], chosen["amodal"])
      written += 1
      predict_stage.debug_kill(config, written)
    prog.update(step + 1)

  summary = {"panoramas": len(names), "fingerprint": fp,
             "prototype_filter": bool(o.prototype_filter)}
  if gt_reader is not None:
    # Parts are written by whichever process labelled the panorama: wait for all.
    shd.barrier("opll quality parts written")
    q = quality.QualityAccumulator()
    for n in my_share(names):
      q.merge(pickle.loads(fileio.read_bytes(part(n))))
    q = merge_all(q)
    res = q.result()
    summary["quality"] = res
    if jax.process_index() == 0:
      fileio.atomic_write_json(os.path.join(out_dir, "quality.json"), res)
      print(quality.format_table(res), flush=True)
    writer.write_scalars(0, quality.scalars(res))
  writer.flush()
  shd.barrier("opll labels written")  # adapt reads every process's labels
  return summary
