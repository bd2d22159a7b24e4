"""OPLL over a whole prediction store (docs/method.md §5): the ``opll`` stage's passes.

1. :func:`compute_thresholds`: class-wise threshold statistics, semantic
   exactly on the stored uint16 confidence codes in two passes over
   per-entry histograms (pixel counts per class and 1024-code block, then the
   codes of the one block per class holding the quantile; the maps are not
   decoded), modal/amodal from per-class score lists. Each process reads its
   share and the accumulators are merged, so every process gets the same.
2. :func:`compute_prototypes`: the optional prototype filter's whole-set
   prototypes (``prototypes.py`` has the rule and its cost), one network pass.
3. :func:`write_labels`: labels per panorama (§5.2, §5.3) in the reference's
   layout under ``<out>/OPLL/`` and in the packed form the adaptation reads
   (``<out>/packed/<name>.npz``, written last, so it marks completion); with
   hidden ground truth a quality part per panorama (``quality.py``; merged by
   :func:`merge_quality`), and pictures of the first panoramas.

Resume: the threshold passes (seconds) restart from the beginning if killed;
their merged result, and the prototypes, are saved with a fingerprint of the
store and the settings (the prototypes' partial sums every ``state_every``
panoramas too), so a rerun does not redo them; labels, the long part, are
skipped per panorama when complete (:meth:`Outputs.incomplete`).
"""
import io
import os
import pickle

import jax
import numpy as np
from absl import logging

from unlock_jax import distributed
from unlock_jax import fileio
from unlock_jax import inference
from unlock_jax import progress as progress_lib
from unlock_jax import sharding as shd
from unlock_jax.data import keys
from unlock_jax.data import labels as labels_lib
from unlock_jax.data import packed_labels
from unlock_jax.data import pipeline
from unlock_jax.data.layouts import blendpass
from unlock_jax.evaluation import pictures
from unlock_jax.pseudo import labels
from unlock_jax.pseudo import pool
from unlock_jax.pseudo import predictions
from unlock_jax.pseudo import prototypes
from unlock_jax.pseudo import quality
from unlock_jax.pseudo import store
from unlock_jax.pseudo import thresholds
from unlock_jax.pseudo import viewer

BRANCHES = keys.BRANCHES
# Every class at tau 0: the "raw" variant (argmax, all detections) of the report.
ZERO_TAU = {c: {"tau": 0.0, "tau_code": 0} for c in range(labels_lib.NUM_CLASSES)}


def _batches(n: int, global_bs: int):
  """This process's rows (-1 = padding) of every global batch over ``range(n)``."""
  return pipeline.process_rows(n, global_bs, jax.process_index(), jax.process_count())


def compute_thresholds(store_dir, names, out_dir, p_sem: float, fp: str) -> dict:
  """The merged threshold statistics of the whole store: two exact passes.

  Semantic (§5.1, ``thresholds`` two-level): pass 1 sums every entry's
  pixel counts per (class, 1024-code block) with the detection scores
  (``store.load_blocks``: a small read per panorama); after the merge over
  processes each class's quantile lies in one known block, and pass 2 sums
  only those <= 18 blocks' code counts (``store.load_fine``); merged again,
  they give the exact quantile code, as the full histogram would.

  Resume: the passes are short, so a killed run redoes them from the start;
  the merged result is saved (``_state/``, with ``fp``) and a rerun whose
  processes all find it does not read the store again.
  """
  state_path = os.path.join(out_dir, "_state", f"thresholds2_p{jax.process_index()}.pkl")
  done = None
  if fileio.exists(state_path):
    saved = pickle.loads(fileio.read_bytes(state_path))
    if isinstance(saved, dict) and saved.get("fp") == fp:
      done = saved["acc"]
  if distributed.all_true(done is not None):  # collective: all skip, or none does
    logging.info("opll: threshold statistics already computed (%s)", state_path)
    return done
  mine = distributed.share(names)
  coarse = thresholds.BlockCounts()
  scores = {b: thresholds.ScoreLists() for b in BRANCHES}
  prog = progress_lib.Progress(2 * len(mine), "opll/thresholds", unit="read")
  for i, name in enumerate(mine):
    summ = store.load_blocks(store_dir, name)
    coarse.add(summ["blocks"])
    for b in BRANCHES:
      scores[b].add(summ[b]["classes"], summ[b]["scores"])
    prog.update(i + 1)
  coarse = distributed.merge_all(coarse)
  blocks, _ = coarse.locate(p_sem)
  fine = thresholds.FineCounts(blocks)
  for i, name in enumerate(mine):
    fine.add(store.load_fine(store_dir, name, blocks))
    prog.update(len(mine) + i + 1)
  acc = {"semantic": thresholds.SemanticQuantiles(coarse, distributed.merge_all(fine), p_sem),
         **{b: distributed.merge_all(scores[b]) for b in BRANCHES}}
  fileio.atomic_write_bytes(state_path, pickle.dumps({"fp": fp, "acc": acc}))
  return acc


def compute_prototypes(model, variables, mesh, images, store_dir, names, th_sem,
                       out_dir, fp, *, batch_size: int, state_every: int):
  """Whole-set prototypes ``(protos [K,C], present [K])``: one network pass, resumable per batch.

  ``images``: the store's panoramas (``inference.TargetImages``). Written to
  ``<out_dir>/prototypes.npz`` with ``fp``; a rerun with the same ``fp`` reads it.
  """
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
  plan = _batches(len(names), batch_size)
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
    with jax.transfer_guard("disallow"):  # every input is on the devices already
      s, wsum = fn(variables, put(images.images(rows)), put(lab), put(wt))
    acc.add(shd.local_rows(s).sum(0), shd.local_rows(wsum).sum(0))
    if (step + 1) % max(1, state_every // batch_size) == 0:
      fileio.atomic_write_bytes(state_path, pickle.dumps({"fp": fp, "sums": acc,
                                                          "step": step + 1}))
    prog.update(step + 1)
  merged = distributed.merge_all(acc)
  protos, present = merged.prototypes()
  if jax.process_index() == 0:
    buf = io.BytesIO()
    np.savez(buf, prototypes=protos, present=present, weights=merged.weights,
             fingerprint=np.asarray(fp))
    fileio.atomic_write_bytes(path, buf.getvalue())
  return protos, present


def hidden_ground_truth(root: str, image_size):
  """``(reader, {name: index})`` of synthpass's hidden target-train ground truth, or None.

  Synthpass writes it beside the BlendPASS layout (``blendpass.HIDDEN_DIR``);
  real data sets have none, and get no quality report.
  """
  if not fileio.isdir(os.path.join(root, blendpass.HIDDEN_DIR)):
    return None
  reader = blendpass.Reader(root, "train", tuple(image_size), hidden_gt=True)
  return reader, {k: i for i, k in enumerate(reader.keys)}


class Outputs:
  """Where the labels of one panorama go under ``out_dir``."""

  def __init__(self, out_dir: str, num_pictures: int, names, with_quality: bool):
    self.out_dir, self.with_quality = out_dir, with_quality
    self.reference_root = os.path.join(out_dir, "OPLL")
    self.first = set(names[:num_pictures])  # the panoramas drawn

  def packed(self, n: str) -> str:
    return os.path.join(self.out_dir, "packed", n + ".npz")

  def part(self, n: str) -> str:
    return os.path.join(self.out_dir, "_quality_parts", n + ".pkl")

  def picture(self, n: str) -> str:
    return os.path.join(self.out_dir, "pictures", n.replace("/", "_") + ".png")

  def incomplete(self, names) -> list[str]:
    """The same list on every process: the panoramas any output is missing of."""
    return distributed.union_all(
        n for n in names if not fileio.exists(self.packed(n))
        or (self.with_quality and not fileio.exists(self.part(n)))
        or (n in self.first and not fileio.exists(self.picture(n))))


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


class PrototypeTest:
  """The prototype filter of one batch (``prototypes.filter_fn``) and its settings."""

  def __init__(self, model, variables, mesh, protos, present, margin: float, n_max: int):
    self.fn = prototypes.filter_fn(model, mesh)
    self.variables, self.mesh, self.n_max = variables, mesh, n_max
    # On the devices once, not copied implicitly with every batch.
    self.protos, self.present, self.margin = shd.replicate(
        (protos, present, np.float32(margin)), mesh)

  def __call__(self, images, sems, preds, h, w):
    """``(pixel_keep [B,H,W], keep_modal [B,N], keep_amodal [B,N])`` of this process's rows."""
    lab = np.stack([s.astype(np.int32) if s is not None else
                    np.full((h, w), labels_lib.IGNORE, np.int32) for s in sems])
    no_dets = inference.detections_row(None, 0, h, w)
    padded = {b: [_padded_masks(p[b] if p else no_dets, self.n_max, h, w) for p in preds]
              for b in BRANCHES}
    mm, cm = (np.stack(x) for x in zip(*padded["modal"]))
    ma, ca = (np.stack(x) for x in zip(*padded["amodal"]))
    put = lambda x: shd.put_array(x, self.mesh)
    with jax.transfer_guard("disallow"):  # every input is on the devices already
      out = self.fn(self.variables, put(images), put(lab), put(mm), put(cm), put(ma),
                    put(ca), self.protos, self.present, self.margin)
    return jax.tree.map(shd.local_rows, out)


def write_labels(todo, *, store_dir, outputs: Outputs, th: dict, th_adcl: dict, images,
                 batch_size: int, proto_test: PrototypeTest | None, filter_labels: bool,
                 gt=None, writer=None, on_written=None, merge_seam: bool = False) -> None:
  """Labels of the panoramas ``todo`` (the same list on every process), each process its rows.

  ``th``: thresholds per branch (``semantic``, ``modal``, ``amodal``);
  ``th_adcl``: the pool's, for the report's pool rows. ``proto_test`` given,
  the report also shows OPLL + prototypes, and ``filter_labels`` makes the
  filtered labels the ones written. ``gt``: ``(reader, {name: index})`` of the
  hidden ground truth (quality parts), or None. Pictures are drawn by
  whichever process labels them (one writer per file). ``on_written(k)`` is
  called after this process's k-th panorama (the tests' simulated kill).
  ``merge_seam`` (a seam-aware ``config.seam.mode``): each entry's detections
  are first merged into one instance per object across the 360° seam
  (``store.load_merged``), so such an object is one label, with one
  uncertain area.
  """
  plan = _batches(len(todo), batch_size)
  prog = progress_lib.Progress(len(plan), "opll/labels", unit="batch")
  h, w = images.reader.image_size
  written = 0
  for step, rows in enumerate(plan):
    rows = [todo[i] if i >= 0 else None for i in rows]
    preds = [store.load_merged(store_dir, n, merge_seam) if n else None for n in rows]
    sems = [labels.semantic_labels(p, th["semantic"]) if p else None for p in preds]
    if proto_test is not None:
      pk, km, ka = proto_test(images.images(rows), sems, preds, h, w)
    for r, (n, pred, sem) in enumerate(zip(rows, preds, sems)):
      if n is None:
        continue
      reject = {b: None for b in BRANCHES}
      sem_p = sem
      if proto_test is not None:
        sem_p = np.where(pk[r], sem, labels_lib.IGNORE).astype(np.uint8)
        reject = {"modal": ~km[r][:len(pred["modal"]["classes"])],
                  "amodal": ~ka[r][:len(pred["amodal"]["classes"])]}
      inst = {b: labels.instance_labels(pred, b, th[b]) for b in BRANCHES}
      inst_p = ({b: labels.instance_labels(pred, b, th[b], reject=reject[b]) for b in BRANCHES}
                if proto_test is not None else inst)
      chosen_sem, chosen = (sem_p, inst_p) if filter_labels else (sem, inst)
      labels.write_reference_layout(outputs.reference_root, n, chosen_sem, chosen["modal"],
                                    chosen["amodal"])
      variants = None
      if gt is not None or n in outputs.first:
        raw_inst = {b: labels.instance_labels(pred, b, ZERO_TAU) for b in BRANCHES}
        # The pool is not prototype-filtered (its own thresholds are strict):
        # the OPLL + prototypes row shows the same pool as OPLL.
        opll_pool = pool.pool_entries(pred, th_adcl)
        variants = {
            "raw": _variant(pred["semantic"], raw_inst, pool.pool_entries(pred, ZERO_TAU)),
            "opll": _variant(sem, inst, opll_pool)}
        if proto_test is not None:
          variants["opll+proto"] = _variant(sem_p, inst_p, opll_pool)
      if gt is not None:
        q = quality.QualityAccumulator()
        q.add(gt[0].load(gt[1][n]), variants)
        fileio.atomic_write_bytes(outputs.part(n), pickle.dumps(q))
      if n in outputs.first:
        shown = variants["opll+proto" if filter_labels else "opll"]
        pic = viewer.render_pseudo_labels(images.image(n), shown, title=n)
        pictures.save_png(outputs.picture(n), pic)
        if writer is not None:
          writer.write_images(0, {f"opll/{n}": pic[None]})
      packed_labels.write_packed(outputs.packed(n), n, chosen_sem, chosen["modal"],
                                 chosen["amodal"])
      written += 1
      if on_written is not None:
        on_written(written)
    prog.update(step + 1)


def merge_quality(outputs: Outputs, names) -> dict:
  """The quality report over every panorama's part (all processes' parts: a barrier first)."""
  shd.barrier("opll quality parts written")
  q = quality.QualityAccumulator()
  for n in distributed.share(names):
    q.merge(pickle.loads(fileio.read_bytes(outputs.part(n))))
  return distributed.merge_all(q).result()


def labelled_images(reader, packed_dir: str, store_dir: str):
  """``reader`` (``predict``'s panoramas) less those without labels, which ``predict`` skipped.

  Images ``predict`` skipped as unreadable have no labels and are left out
  (logged); any other image without labels is an error naming the stage to run.
  """
  if not fileio.isdir(packed_dir):
    raise FileNotFoundError(f"no OPLL pseudo-labels in {packed_dir}: run the `opll` "
                            "stage first (--config.stage=predict,opll,adcl_pool,adapt)")
  keep = [i for i, k in enumerate(reader.keys)
          if fileio.exists(os.path.join(packed_dir, k + ".npz"))]
  if len(keep) == len(reader):
    return reader
  skipped = predictions.read_skipped(store_dir)
  missing = sorted(set(reader.keys) - {reader.keys[i] for i in keep})
  unlabelled = [k for k in missing if k not in skipped]
  if unlabelled:
    raise FileNotFoundError(
        f"{len(unlabelled)} target images have no packed OPLL labels in {packed_dir} "
        f"(first: {unlabelled[0]}): run `predict` and `opll` for them "
        "(--config.stage=predict,opll,adcl_pool,adapt; complete outputs are skipped)")
  logging.warning("adapt: %d of %d images are left out, as predict skipped them as "
                  "unreadable (reasons in %s): %s", len(missing), len(reader),
                  os.path.join(store_dir, predictions.SKIPPED_FILE), ", ".join(missing))
  return inference.Subset(reader, keep)
