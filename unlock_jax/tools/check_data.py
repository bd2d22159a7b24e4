r"""Checks the configured data sets before a run: every problem, with its file and the fix.

  python -m unlock_jax.tools.check_data --config configs/<file>.py[:arg] \
      [--workdir DIR] [--config.data.source.root=/data/APS_KITTI_360 ...] [--all]

Walks the data sets that the configured stages read (``config.stage``; with
``--all`` every data set the config names) in their on-disk layouts
(docs/formats.md §2; readers in ``unlock_jax/data/layouts``, whose rules
``layout_checks.py`` applies) and lists, each with the file and how to fix
it: missing folders and files, unreadable or wrongly sized images, label
values outside the 18-class table (JSON category ids, instance PNG values),
panoptic JSON segments that disagree with their PNG (areas, ids), amodal
JSON entries without images and thing segments whose ``amodal_id`` is not in
the amodal JSON. AmodalSynthDrive
trees get the same kinds of checks in their own format: label PNG and
image of the same size, PNG values in ASD's label table, every thing
instance of a PNG with a usable amodal entry in its JSON. Errors are what
would stop a stage or silently change a metric; warnings are what the
readers tolerate (files no annotation uses, PNG ids no segment lists). It
reports everything, not only the first problem, ends with a count, and
exits 1 if there is an error. Files are decoded in ``--threads`` threads;
paths go through etils.epath, so roots may be ``gs://`` URLs.
"""
import concurrent.futures
import dataclasses
import os
import sys
import threading

from absl import app
from absl import flags

from unlock_jax import fileio
from unlock_jax import methods
from unlock_jax import registry
from unlock_jax.data.layouts import common


@dataclasses.dataclass(frozen=True)
class Problem:
  severity: str  # "error" or "warning"
  path: str
  message: str
  fix: str


class Report:
  """Problems of one data set; safe to fill from several threads."""

  def __init__(self):
    self.problems: list[Problem] = []
    self.files = 0
    self._lock = threading.Lock()

  def __call__(self, found: common.DataError) -> None:
    """A layout rule's finding (``layouts/common.py``), which a reader would raise."""
    with self._lock:
      self.problems.append(Problem(found.severity, found.path, found.text, found.fix))

  def error(self, path, message: str, fix: str) -> None:
    with self._lock:
      self.problems.append(Problem("error", str(path), message, fix))

  def warning(self, path, message: str, fix: str) -> None:
    with self._lock:
      self.problems.append(Problem("warning", str(path), message, fix))

  def read(self, n: int = 1) -> None:
    with self._lock:
      self.files += n

  @property
  def errors(self) -> list[Problem]:
    return [p for p in self.problems if p.severity == "error"]

  @property
  def warnings(self) -> list[Problem]:
    return [p for p in self.problems if p.severity == "warning"]


@dataclasses.dataclass
class DataSet:
  """One data set to check.

  ``keys`` are the config entries that use it; ``where`` names the config key
  that set each of layout, root, split and image_size, for the fixes.
  """
  layout: str  # "kitti360aps", "blendpass", "amodalsynthdrive" or "folder"
  root: str
  split: str
  image_size: tuple | None
  keys: list
  where: dict
  generated: bool = False  # under config.synthpass.out_dir (the generate stage writes it)

  def label(self) -> str:
    name = f"{self.layout} {self.split}" if self.split else self.layout
    return f"{name} at {self.root} ({', '.join(self.keys)})"


# --- which data sets the config uses --------------------------------------------------


def _adapt_reads_source(config) -> bool:
  """Whether ``config.adapt.method`` reads the labelled source split (UDA does)."""
  name = config.adapt.get("method", "unlock")
  return name in methods.METHODS and "source_labelled" in methods.get(name).streams


def data_sets(config, workdir: str | None, everything: bool = False) -> list[DataSet]:
  """The data sets read by the stages of ``config.stage`` (or all named ones), merged."""
  stages = {s.strip() for s in config.stage.split(",") if s.strip()}
  use = lambda *names: everything or bool(stages.intersection(names))
  wanted = []  # (key, layout, root template, split, image_size, where)
  fields = ("layout", "root", "split", "image_size")
  same = lambda key: {f: f"{key}.{f}" for f in fields}
  src, tgt = config.data.source, config.data.target
  if use("train_source") or (use("adapt") and _adapt_reads_source(config)):
    wanted.append(("config.data.source", src.layout, src.root, src.split, src.image_size,
                   same("config.data.source")))
  if use("adapt") and not config.predict.images:  # else adapt reads predict's folder
    wanted.append(("config.data.target", tgt.layout, tgt.root, "train", tgt.image_size,
                   same("config.data.target")))
  adapt_evals = set(config.adapt.get("evals", ()) or ())
  for name, ev in config.evals.items():
    if use("evaluate") or (name in adapt_evals and use("adapt")):
      wanted.append((f"config.evals.{name}", ev.layout, ev.root, ev.split,
                     ev.get("image_size"), same(f"config.evals.{name}")))
  if use("predict", "opll", "adcl_pool", "adapt", "predict_adapted"):
    p = config.predict  # what adapt and predict_adapted read too (stages/adapt.py)
    # Empty predict entries fall back to config.data.target (stages/predict.py).
    where = {f: f"config.predict.{f}" if p[f] or f == "split" else f"config.data.target.{f}"
             for f in fields}
    size = tuple(p.image_size or tgt.image_size)
    if p.images:
      wanted.append(("config.predict.images", "folder", p.images, "", size,
                     where | {"root": "config.predict.images"}))
    else:
      wanted.append(("config.predict", p.layout or tgt.layout, p.root or tgt.root, p.split,
                     size, where))
  templated = [k for k, _, root, _, _, _ in wanted if "{workdir}" in str(root)]
  if templated and not workdir:
    raise app.UsageError(f"{', '.join(templated)} contain {{workdir}}: pass --workdir "
                         "(the run's workdir)")
  synth = (fileio.resolve(config.synthpass.out_dir, workdir) if workdir
           or "{workdir}" not in config.synthpass.out_dir else None)
  merged: dict = {}
  for key, layout, root, split, size, where in wanted:
    root = fileio.resolve(root, workdir or "")
    if not fileio.is_url(root):
      root = os.path.normpath(os.path.abspath(root))
    size = tuple(int(v) for v in size) if size else None
    ident = (layout, root, split, size)
    if ident in merged:
      merged[ident].keys.append(key)
    else:
      generated = synth is not None and (root + "/").startswith(synth.rstrip("/") + "/")
      merged[ident] = DataSet(layout, root, split, size, [key], where, generated)
  return list(merged.values())


def ungenerated(config, workdir: str) -> list[str]:
  """One line per data set the stages of ``config.stage`` read that the ``generate``
  stage writes (under ``config.synthpass.out_dir``) but has not written yet,
  unless ``generate`` is in that list: the fix before any stage starts."""
  stages = [s.strip() for s in config.stage.split(",") if s.strip()]
  if "generate" in stages:
    return []
  missing: dict = {}  # root -> the config keys reading it (any split)
  for ds in data_sets(config, workdir):
    if ds.generated and not fileio.isdir(ds.root):
      missing.setdefault(ds.root, []).extend(ds.keys)
  return [f"{', '.join(keys)}: data root {root} does not exist. This config generates "
          "its synthpass data there with the generate stage: run it first "
          f"(--config.stage=generate,{','.join(stages)})" for root, keys in missing.items()]


# The layouts of layouts.LAYOUTS, and a folder of panoramas (config.predict.images).
CHECKERS = registry.Registry("data layout", {
    name: f"unlock_jax.tools.layout_checks:check_{name}"
    for name in ("kitti360aps", "blendpass", "amodalsynthdrive", "folder")})


def check(ds: DataSet, threads: int = 16) -> tuple[Report, int]:
  """All problems of one data set, and its number of examples."""
  report = Report()
  if ds.layout not in CHECKERS:
    report.error(ds.root, CHECKERS.unknown(ds.layout),
                 f"set --{ds.where['layout']} to one of them")
    return report, 0
  with concurrent.futures.ThreadPoolExecutor(max(1, threads)) as pool:
    n = CHECKERS.get(ds.layout)(ds, report, pool)
  report.problems.sort(key=lambda p: (p.severity != "error", p.path, p.message))
  return report, n


def _plural(n: int, word: str) -> str:
  return f"{n} {word}{'' if n == 1 else 's'}"


def run(config, workdir: str | None, everything: bool = False, threads: int = 16,
        out=sys.stdout) -> int:
  """Checks and prints; returns the number of errors."""
  sets = data_sets(config, workdir, everything)
  if not sets:
    print(f"check_data: the stages {config.stage!r} read no data set (use --all)", file=out)
    return 0
  errors = warnings = files = 0
  for ds in sets:
    report, n = check(ds, threads)
    errors += len(report.errors)
    warnings += len(report.warnings)
    files += report.files
    print(f"check_data: {ds.label()}: {_plural(n, 'example')}, "
          f"{_plural(len(report.errors), 'error')}, "
          f"{_plural(len(report.warnings), 'warning')}", file=out)
    for p in report.problems:
      print(f"  {p.severity.upper()} {p.path}: {p.message}\n    fix: {p.fix}", file=out)
  print(f"check_data: {_plural(len(sets), 'data set')}, {_plural(files, 'file')} read: "
        f"{_plural(errors, 'error')}, {_plural(warnings, 'warning')}", file=out)
  return errors


def _define_flags() -> None:
  """Only when run as a program: unlock_jax.main defines --config/--workdir too."""
  from ml_collections import config_flags  # pylint: disable=g-import-not-at-top
  config_flags.DEFINE_config_file(
      "config", None, "Experiment config file (configs/*.py[:arg]).", lock_config=True)
  flags.DEFINE_string("workdir", None, "Expands {workdir} in the configured roots (configs "
                      "whose data the generate stage writes into the workdir).")
  flags.DEFINE_bool("all", False, "Check every data set the config names, not only those "
                    "the stages in config.stage read.")
  flags.DEFINE_integer("threads", 16, "Files decoded in parallel.")
  flags.mark_flags_as_required(["config"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  f = flags.FLAGS
  workdir = fileio.absolute(f.workdir) if f.workdir else None
  return 1 if run(f.config, workdir, f.all, f.threads) else 0


if __name__ == "__main__":
  _define_flags()
  app.run(main)
