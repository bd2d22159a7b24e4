"""What each stage's outputs were made from, recorded beside them: resume, refuse or overwrite.

A stage's fingerprint is computed from the config alone, so ``main`` checks a
whole stage list before the first stage starts. It holds, flattened to dotted
config keys (``opll.semantic.p``):

* the stage's own settings that determine its outputs (``LOGISTICS`` lists,
  in one place, those that do not: where outputs go, how often to log or
  save, worker counts, inference batch sizes);
* for every input it reads, the path (``{workdir}/...`` inside the workdir)
  and: for the outputs of another stage of this config (the store of
  ``predict``, the generated data, a ``train_source`` checkpoint), that
  stage's fingerprint, merged in (for a checkpoint also its latest step, so
  outputs of a run killed before its last step are not taken for the
  finished run's); for an external checkpoint, its identity (latest step,
  the record or ``synthpass.json`` it carries); for external data, the
  path, with its layout, split, size and format as settings;
* the versions of the formats involved (synthpass scenes, the prediction
  store, the confidence quantisation, this file's ``SCHEME``).

Before a stage writes anything it compares its fingerprint with the record
``<output folder>/fingerprint.json`` (written there, by process 0, before the
stage's outputs):

* no record, nothing there: a fresh run; the same fingerprint: the stage
  resumes (stages that do not resume recompute the same outputs);
* another fingerprint, or outputs without a record (an older version): the
  stage refuses, naming every changed key (old → new) and the two ways out:
  a fresh workdir or output folder, or ``--config.<stage>.overwrite=True``,
  which deletes the stage's output folder and those of every stage recorded
  in this workdir as computed from it (``<workdir>/fingerprints/`` lists the
  records), then runs the stage fresh. With matching outputs ``overwrite``
  deletes nothing, so a killed overwrite resumes with the same command.

A stage also refuses to read another stage's outputs whose record says they
were made with settings other than the config's (``opll`` after
``--config.predict.checkpoint=other``: the store is the old model's).

Not captured: code changes other than the format versions (the provenance
records name the git commit), and files changed by hand.
"""
import dataclasses
import fnmatch
import functools
import hashlib
import json
import os
import shutil

import jax
from absl import logging

from unlock_jax import fileio
from unlock_jax import inference
from unlock_jax import methods
from unlock_jax import sharding as shd
from unlock_jax.data import synthpass
from unlock_jax.pseudo import store
from unlock_jax.pseudo import thresholds

RECORD = "fingerprint.json"
REGISTRY = "fingerprints"  # <workdir>/fingerprints/: one pointer per record written for this workdir
SCHEME = 1  # bump when the keys below change meaning

# Settings that change how a stage runs, never what it writes: not fingerprinted,
# so changing them on a rerun resumes. fnmatch patterns over dotted config keys.
LOGISTICS = (
    # Where outputs go: a new folder is a new, separate output.
    "*out_dir", "predict.store_dir", "evaluate.results_dir", "*pictures_dir",
    "*.overwrite",
    # How often to log, save, report; how many checkpoints to keep; test hooks.
    "log_every", "*.log_every", "checkpoint_every", "*.checkpoint_every",
    "keep_checkpoints", "*.keep_checkpoints", "progress_every_secs", "debug.*",
    # Worker processes (grain reads the same records in the same order for any
    # count); inference batch sizes (one image's outputs do not depend on the
    # others in its batch: batch statistics are frozen); OPLL's state interval.
    "*num_workers", "predict.batch_size", "opll.batch_size", "evals.*.batch_size",
    "opll.state_every",
    # Evaluation during adaptation is logged, not part of the adapted model.
    "adapt.eval_every", "adapt.evals",
    # Pictures for people: a rerun with more draws the missing ones.
    "*num_pictures", "*picture_scale",
    # Skipping or stopping at an unreadable image: a rerun retries skipped ones.
    "predict.on_bad_image",
    # The predictions at the images' own sizes: every predict run rewrites them whole.
    "*predict*.export_dir", "*predict*.export_tau_m",
)

_CKPT, _DATA = "checkpoint", "data"

# The folder each stage writes (the record's), and the key that moves it.
_FOLDER = {"generate": "synthpass.out_dir", "train_source": "train_source.out_dir",
           "evaluate": "evaluate.results_dir", "predict": "predict.store_dir",
           "opll": "opll.out_dir", "adcl_pool": "adcl_pool.out_dir",
           "adapt": "adapt.out_dir", "predict_adapted": "predict_adapted.store_dir",
           "export_source": "export_source.out_dir"}
# Stages that replace their folder as a whole themselves (written beside, renamed).
_REPLACES_ITSELF = ("export_source",)


class Refused(ValueError):
  """A stage's outputs (or inputs) were made with other settings."""


def _get(c, key: str):
  return functools.reduce(lambda node, k: node[k], key.split("."), c)


def _flatten(value, key: str) -> dict:
  if hasattr(value, "items"):
    if not len(value):
      return {key: {}}
    out = {}
    for k, v in value.items():
      out.update(_flatten(v, f"{key}.{k}"))
    return out
  return {key: value}


def _logistics(key: str) -> bool:
  return any(fnmatch.fnmatchcase(key, p) for p in LOGISTICS)


def _settings(c, *keys, skip=()) -> dict:
  out = {}
  for key in keys:
    out.update(_flatten(_get(c, key), key))
  return {k: v for k, v in out.items() if not _logistics(k) and k not in skip}


def _data(c, domain: str) -> tuple[dict, dict]:
  """A ``config.data`` domain: its settings, and its root (and TFDS folder) as inputs."""
  d = f"data.{domain}"
  settings = _settings(c, d, skip=(f"{d}.root", f"{d}.tfds_data_dir"))
  paths = {f"{d}.root": (_get(c, d).root, _DATA)}
  if _get(c, d).get("format", "files") == "tfds":
    paths[f"{d}.tfds_data_dir"] = (_get(c, d).tfds_data_dir, _DATA)
  return settings, paths


# Each stage: (settings, {key: (path template, kind)}) from the resolved config.

def _generate(c):
  return _settings(c, "synthpass") | {"version.synthpass": synthpass.DATA_VERSION}, {}


def _train_source(c):
  settings, paths = _data(c, "source")
  settings |= _settings(c, "seed", "input", "model", "loss", "optim", "total_steps",
                        skip=("init_checkpoint",))
  if c.get("init_checkpoint"):
    paths["init_checkpoint"] = (c.init_checkpoint, _CKPT)
  return settings, paths


def _evaluate(c):
  # Whole sections, so a key added later counts unless LOGISTICS says otherwise.
  skip = {f"evals.{n}.{k}" for n in c.evals for k in ("root", "tfds_data_dir")}
  skip |= {"evaluate.checkpoint"} | {f"evaluate.runs.{n}.checkpoint" for n in c.evaluate.runs}
  settings = _settings(c, "model", "seam", "evals", "evaluate", skip=skip)
  paths = {}
  for name, ev in c.evals.items():
    paths[f"evals.{name}.root"] = (ev.get("root", ""), _DATA)
    if ev.get("format", "files") == "tfds":
      paths[f"evals.{name}.tfds_data_dir"] = (ev.tfds_data_dir, _DATA)
  if c.evaluate.runs:  # then evaluate.checkpoint is not read
    for name, run in c.evaluate.runs.items():
      paths[f"evaluate.runs.{name}.checkpoint"] = (run.get("checkpoint", ""), _CKPT)
  else:
    paths["evaluate.checkpoint"] = (c.evaluate.checkpoint, _CKPT)
  return settings, paths


def _effective(c, key: str, fallback: str) -> tuple[str, object]:
  """``(key, value)`` of ``predict.<key>`` if set, else of the target domain's."""
  value = c.predict[key]
  return (f"predict.{key}", value) if value else (fallback, _get(c, fallback))


def _panoramas(c):
  """The panoramas ``predict`` reads (``inference.open_target``): settings and paths."""
  p = c.predict
  settings = dict([_effective(c, "image_size", "data.target.image_size")])
  if p.images:
    return settings, {"predict.images": (p.images, _DATA)}
  settings["predict.split"] = p.split
  settings.update([_effective(c, "layout", "data.target.layout")])
  if p.root:  # a root of its own is read as files
    return settings, {"predict.root": (p.root, _DATA)}
  target, paths = _data(c, "target")
  settings["data.target.format"] = target.get("data.target.format", "files")
  return settings, paths


def _predict(c):
  what = ("layout", "root", "split", "image_size", "images", "checkpoint")  # _panoramas
  settings = _settings(c, "model", "seam", "predict", skip={f"predict.{k}" for k in what}) | {
      "version.store_format": store.FORMAT_VERSION, "version.quant": thresholds.QUANT}
  images, paths = _panoramas(c)
  return settings | images, {"predict.checkpoint": (c.predict.checkpoint, _CKPT)} | paths


def _predict_adapted(c):
  """``predict`` with ``config.predict_adapted``'s keys (named so) replacing ``config.predict``'s."""
  c = c.copy_and_resolve_references()
  own = list(c.predict_adapted)
  for key in own:
    c.predict[key] = c.predict_adapted[key]
  name = lambda k: (f"predict_adapted.{k[len('predict.'):]}"
                    if k.startswith("predict.") and k[len("predict."):] in own else k)
  settings, paths = _predict(c)
  return ({name(k): v for k, v in settings.items()},
          {name(k): v for k, v in paths.items()})


def _opll(c):
  # adcl_pool.pt: the quality report shows the pool of those thresholds.
  return _settings(c, "opll", "adcl_pool.pt"), {"predict.store_dir": (c.predict.store_dir, _DATA)}


def _adcl_pool(c):
  return _settings(c, "adcl_pool"), {"predict.store_dir": (c.predict.store_dir, _DATA)}


def _adapt(c):
  # The stage's keys and the method's own (another method's keys change nothing);
  # the inputs of the method's streams (methods/inputs.py) and nothing else.
  method = methods.get(c.adapt.method)
  own = [f"adapt.{k}" for k in (*methods.STAGE_KEYS, *method.config_keys) if k in c.adapt]
  settings = _settings(c, "seed", "model", *own, skip=("adapt.source_checkpoint",))
  source = "adapt.source_checkpoint" if c.adapt.source_checkpoint else "predict.checkpoint"
  paths = {source: (_get(c, source), _CKPT)}
  if "target_pseudo_labelled" in method.streams:
    # The panoramas are predict's (its images, skipped.json): its store stands for them.
    paths |= {"predict.store_dir": (c.predict.store_dir, _DATA),
              "opll.out_dir": (c.opll.out_dir, _DATA),
              "adcl_pool.out_dir": (c.adcl_pool.out_dir, _DATA)}
  elif "target_unlabelled" in method.streams:
    images, target = _panoramas(c)
    settings |= images
    paths |= target
  if "source_labelled" in method.streams:
    data, source_paths = _data(c, "source")
    settings |= data | _settings(c, "input", skip=("input.batch_size",))
    paths |= source_paths
  return settings, paths


def _export_source(c):
  # It reads the run's train_source checkpoint, the generated data's identity
  # and the source figures of <workdir>/evaluate/results.json.
  return _settings(c, "model", "export_source"), {
      "export_source.checkpoint": (f"{c.train_source.out_dir}/checkpoints", _CKPT),
      "synthpass.out_dir": (c.synthpass.out_dir, _DATA),
      "export_source.results": ("{workdir}/evaluate/results.json", _DATA)}


SPECS = {"generate": _generate, "train_source": _train_source, "evaluate": _evaluate,
         "predict": _predict, "opll": _opll, "adcl_pool": _adcl_pool, "adapt": _adapt,
         "predict_adapted": _predict_adapted, "export_source": _export_source}


def validate(config, stage: str) -> None:
  """Settings a stage cannot start with; ValueError naming the key."""
  if stage in ("predict", "predict_adapted", "evaluate", "adapt"):
    inference.check_seam(config, stage)
  if stage == "evaluate":
    if not config.evals:
      raise ValueError("config.evals is empty: nothing to evaluate")
    for name, run in config.evaluate.runs.items():
      if not run.get("checkpoint"):
        raise ValueError(f"config.evaluate.runs.{name} has no checkpoint")
  if stage == "adapt":
    if config.adapt.method not in methods.METHODS:
      raise ValueError(f"config.adapt.method: {methods.METHODS.unknown(config.adapt.method)}")
    unknown = [n for n in config.adapt.evals if n not in config.evals]
    if unknown:
      raise ValueError(f"config.adapt.evals names {unknown}, which are not in "
                       f"config.evals ({sorted(config.evals)})")
  if stage == "export_source":
    try:
      jax.numpy.dtype(config.export_source.dtype)
    except TypeError as e:
      raise ValueError(f"config.export_source.dtype={config.export_source.dtype!r} is "
                       "not a dtype (float32 or bfloat16)") from e


# Paths.

def _norm(path: str) -> str:
  path = fileio.absolute(path)
  return path.rstrip("/") if fileio.is_url(path) else os.path.normpath(path)


def _inside(path: str, folder: str) -> bool:
  return path == folder or path.startswith(folder.rstrip("/") + "/")


def _template(path: str, workdir: str) -> str:
  """``path`` with the workdir written ``{workdir}``: a copied workdir keeps its records."""
  w = _norm(workdir)
  return "{workdir}" + path[len(w):] if _inside(path, w) else path


def _resolve(template: str, workdir: str) -> str:
  return _norm(fileio.resolve(template, workdir))


def folder(config, workdir: str, stage: str) -> str:
  """The folder ``stage`` writes and keeps its record in."""
  return _resolve(_get(config, _FOLDER[stage]), workdir)


def _producer(config, workdir: str, path: str, stage: str) -> str | None:
  """The stage of this config whose folder holds ``path`` (the deepest), if any."""
  found = [(len(f), s) for s in SPECS if s != stage
           for f in [folder(config, workdir, s)] if _inside(path, f)]
  return max(found)[1] if found else None


def _read_json(path: str):
  try:
    return fileio.read_json(path) if fileio.isfile(path) else None
  except ValueError:  # a half-written or hand-edited file: treated as missing
    return None


def _latest_step(path: str) -> int | None:
  steps = [int(n) for n in fileio.listdir(path) if n.isdigit()] if fileio.isdir(path) else []
  return max(steps) if steps else None


def _checkpoint_identity(path: str) -> dict:
  """What identifies a checkpoint folder that no stage of this config writes."""
  if not fileio.isdir(path):
    return {"exists": False}
  ident = {}
  parent = path.rsplit("/", 1)[0] if fileio.is_url(path) else os.path.dirname(path)
  for where in (path, parent):  # an export's own record, or a train run's
    rec = _read_json(os.path.join(where, RECORD))
    if rec and "fingerprint" in rec:
      ident["record"] = rec["fingerprint"]
      break
  if (step := _latest_step(path)) is not None:
    ident["step"] = step
  export = _read_json(os.path.join(path, "synthpass.json"))
  if export is not None:
    ident["export"] = export
  return ident


# Fingerprints.

@dataclasses.dataclass(frozen=True)
class Fingerprint:
  stage: str
  hash: str
  settings: dict  # flat key -> value, upstream stages' merged in
  inputs: dict  # key -> path read ({workdir}/... inside the workdir)
  upstream: tuple  # stages of this config whose outputs it reads, directly or not
  folder: str  # where it writes (resolved)
  status: str = ""  # set by begin: fresh, resume or overwrite
  deleted: tuple = ()  # set by begin: the folders overwrite deleted

  def as_record(self, workdir: str) -> dict:
    return {"stage": self.stage, "fingerprint": self.hash, "settings": self.settings,
            "inputs": self.inputs, "folder": _template(self.folder, workdir)}


def compute(config, workdir: str, stage: str, _chain=()) -> Fingerprint:
  """``stage``'s fingerprint under ``config`` (references resolved here)."""
  if not _chain:
    config = config.copy_and_resolve_references()
  try:
    settings, paths = SPECS[stage](config)
  except (KeyError, AttributeError) as e:
    raise ValueError(f"stage {stage}: the config lacks a key it reads ({e})") from None
  flat = {"version.fingerprint": SCHEME, **settings}
  inputs, upstream = {}, []
  for key, (template, kind) in paths.items():
    if not template:
      continue
    path = _resolve(template, workdir)
    flat[key] = inputs[key] = _template(path, workdir)
    producer = _producer(config, workdir, path, stage)
    if producer in _chain:
      raise ValueError(f"stage {stage} reads {path}, which {producer} writes from "
                       f"{stage}'s outputs: a cycle ({' -> '.join(_chain + (stage,))})")
    if producer:
      up = compute(config, workdir, producer, _chain + (stage,))
      flat.update(up.settings)
      upstream += [producer, *up.upstream]
      # A run that trained further since (it was killed before its last
      # step) made another model of the same settings.
      if kind == _CKPT and (step := _latest_step(path)) is not None:
        flat[key + ":step"] = step
    elif kind == _CKPT:
      flat[key + ":identity"] = _checkpoint_identity(path)
  flat = json.loads(json.dumps(flat, sort_keys=True, default=str))  # as read back
  digest = hashlib.sha256(json.dumps(flat, sort_keys=True).encode()).hexdigest()[:16]
  return Fingerprint(stage, digest, flat, inputs, tuple(dict.fromkeys(upstream)),
                     folder(config, workdir, stage))


def _read_record(where: str) -> dict | None:
  rec = _read_json(os.path.join(where, RECORD))
  return rec if rec and "fingerprint" in rec and "settings" in rec else None


def _has_outputs(where: str) -> bool:
  return fileio.isdir(where) and any(n != RECORD for n in fileio.listdir(where))


def _state(fp: Fingerprint) -> tuple[str, dict | None]:
  """``fresh``, ``same``, ``changed`` or ``unrecorded`` (outputs without a record)."""
  rec = _read_record(fp.folder)
  if rec is not None and rec["fingerprint"] == fp.hash:
    return "same", rec
  if not _has_outputs(fp.folder):  # nothing, or the record of a run that failed early
    return "fresh", rec
  return ("changed" if rec is not None else "unrecorded"), rec


def diff(old: dict, new: dict, limit: int = 30) -> list[str]:
  """``key: old -> new`` per differing key: changed ones first, then added, then dropped."""
  show = lambda d, k: json.dumps(d[k], sort_keys=True) if k in d else "unset"
  order = lambda k: (k not in old) + 2 * (k not in new)
  keys = sorted((k for k in set(old) | set(new) if show(old, k) != show(new, k)),
                key=lambda k: (order(k), k))
  lines = [f"  {k}: {show(old, k)} -> {show(new, k)}" for k in keys]
  return lines[:limit] + ([f"  ... and {len(lines) - limit} more"] if len(lines) > limit else [])


# This workdir's records, for overwrite's downstream deletion.

def _registry_path(workdir: str, fp: Fingerprint) -> str:
  key = hashlib.sha256(_template(fp.folder, workdir).encode()).hexdigest()[:12]
  return os.path.join(workdir, REGISTRY, f"{fp.stage}-{key}.json")


def _records(workdir: str) -> list[dict]:
  reg = os.path.join(workdir, REGISTRY)
  out = []
  for name in sorted(fileio.listdir(reg)) if fileio.isdir(reg) else ():
    entry = _read_json(os.path.join(reg, name))
    rec = entry and _read_record(fileio.resolve(entry["folder"], workdir))
    if rec:
      out.append(rec)
  return out


def downstream(workdir: str, folders: list[str]) -> list[tuple[str, str]]:
  """``(stage, folder)`` of every recorded output computed from ``folders``, transitively."""
  records, found, frontier = _records(workdir), [], list(folders)
  changed = True
  while changed:
    changed = False
    for rec in records:
      where = _resolve(rec["folder"], workdir)
      if where in frontier:
        continue
      if any(_inside(_resolve(p, workdir), f) for p in rec["inputs"].values()
             for f in frontier):
        found.append((rec["stage"], where))
        frontier.append(where)
        changed = True
  return found


def _clear(where: str, workdir: str) -> None:
  """Deletes a stage's output folder: renamed first (atomic locally), then removed."""
  w = _norm(workdir)
  if _inside(w, where) or where in ("/", _norm(os.path.expanduser("~"))):
    raise ValueError(f"overwrite would delete {where}, which holds the workdir {w} "
                     "or is a root folder: give the stage an output folder of its own")
  if not fileio.exists(where):
    return
  logging.warning("overwrite: deleting %s", where)
  if fileio.is_url(where):
    fileio.rmtree(where)
    return
  doomed = f"{where}.deleting-{os.getpid()}"
  os.replace(where, doomed)
  shutil.rmtree(doomed)


# The decision.

def _ways_out(stage: str, where: str, doomed: list) -> str:
  key = _FOLDER[stage]
  elsewhere = ("a fresh --workdir" if key is None
               else f"a fresh --workdir, or --config.{key}=<a new folder>")
  also = "".join(f"\n      {s}: {f}" for s, f in doomed)
  return (f"  * keep them and write elsewhere: {elsewhere};\n"
          f"  * or replace them: --config.{stage}.overwrite=True deletes {where}"
          + (f"\n    and the outputs computed from it:{also}\n   " if doomed else ",")
          + f" then runs {stage} afresh.")


def _check(config, workdir: str, stage: str, *, ran_before=(), cleared=()):
  """``(fingerprint, problems, folders to delete, status)`` for one stage.

  ``ran_before``: stages that run earlier in this invocation (their own
  check covers the outputs this one reads); ``cleared``: folders that
  earlier overwrites in it delete.
  """
  validate(config, stage)
  fp = compute(config, workdir, stage)
  shared = [s for s in SPECS if s != stage and folder(config, workdir, s) == fp.folder]
  if shared:  # one record per folder: they would refuse, or delete, each other's outputs
    key = lambda s: _FOLDER[s] or f"the fixed {s} folder"
    raise ValueError(f"{stage} and {shared[0]} would both write {fp.folder} "
                     f"({key(stage)}, {key(shared[0])}): give each a folder of its own")
  overwrite = bool(config.get(stage, {}).get("overwrite", False))
  problems, doomed = [], []
  state, rec = ("fresh", None) if any(_inside(fp.folder, f) for f in cleared) else _state(fp)
  status = {"fresh": "fresh", "same": "resume"}.get(state, "overwrite")
  if state in ("changed", "unrecorded"):
    later = [d for d in downstream(workdir, [fp.folder]) if d[1] != fp.folder]
    if overwrite:
      doomed = ([] if stage in _REPLACES_ITSELF else [fp.folder]) + [f for _, f in later]
    elif state == "changed":
      problems.append(f"{stage}: {fp.folder} holds outputs made with other settings:\n"
                      + "\n".join(diff(rec["settings"], fp.settings))
                      + f"\nRerunning would mix them with this config's. Either\n"
                      + _ways_out(stage, fp.folder, later))
    else:
      problems.append(f"{stage}: {fp.folder} holds outputs without a fingerprint record "
                      f"({RECORD}; written by an earlier version, or by hand), so which "
                      "settings made them is unknown. Either\n"
                      + _ways_out(stage, fp.folder, later))
  for up in fp.upstream:
    if up in ran_before:
      continue
    up_fp = compute(config, workdir, up)
    if any(_inside(up_fp.folder, f) for f in cleared):
      problems.append(f"{stage} reads {up_fp.folder}, which the overwrite of an earlier "
                      f"stage deletes: add {up} to --config.stage before {stage}")
      continue
    up_state, up_rec = _state(up_fp)
    if up_state == "changed":
      problems.append(
          f"{stage} reads the outputs of {up} in {up_fp.folder}, made with other "
          "settings than this config's:\n" + "\n".join(diff(up_rec["settings"], up_fp.settings))
          + f"\nRun {up} with these settings first (--config.stage={up},...,{stage}, "
          f"with --config.{up}.overwrite=True to replace them), or undo the changes.")
  return fp, problems, doomed, status


def plan(config, workdir: str, stages: list[str]) -> list[str]:
  """Every problem of running ``stages`` in order (main, before the first starts)."""
  problems, cleared = [], []
  for i, stage in enumerate(stages):
    if stage not in SPECS:  # writes nothing to check (print_config)
      continue
    try:
      _, found, doomed, _ = _check(config, workdir, stage, ran_before=stages[:i],
                                   cleared=cleared)
    except ValueError as e:
      found, doomed = [str(e)], []
    problems += found
    cleared += doomed
  return problems


def write(where: str, fp: Fingerprint, workdir: str) -> None:
  fileio.atomic_write_json(os.path.join(where, RECORD), fp.as_record(workdir))


def begin(config, workdir: str, stage: str, *, write_record: bool = True) -> Fingerprint:
  """At the top of a stage's ``run``: check, delete what ``overwrite`` replaces, record.

  Raises ``Refused`` naming the changed keys. Every process decides from the
  same files and they must agree; process 0 deletes and writes. Returns the
  fingerprint with its status (fresh, resume, overwrite) and the deleted
  folders, for the provenance record. ``write_record=False``: the stage
  writes the record itself (``write``), with its outputs.
  """
  shd.connect_processes()
  fp, problems, doomed, status = _check(config, workdir, stage)
  views = shd.gather_objects((fp.hash, problems, doomed))
  if any(v != views[0] for v in views):
    raise RuntimeError(f"{stage}: the processes see different outputs in the workdir "
                       f"(is it shared?): {views}")
  if problems:
    raise Refused("\n\n".join(problems))
  if jax.process_index() == 0:
    for where in doomed:
      _clear(where, workdir)
    if write_record:
      write(fp.folder, fp, workdir)
    fileio.atomic_write_json(_registry_path(workdir, fp), {
        "stage": stage, "folder": _template(fp.folder, workdir)})
  shd.barrier(f"{stage}: fingerprint checked")
  logging.info("%s: fingerprint %s (%s) in %s", stage, fp.hash, status, fp.folder)
  return dataclasses.replace(fp, status=status, deleted=tuple(doomed))
