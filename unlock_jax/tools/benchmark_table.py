r"""The methods benchmark's table from its workdir: one row per method, mean ± std over seeds.

  python -m unlock_jax.tools.benchmark_table --workdir /tmp/benchmark \
      [--evaluator target_val] [--json out.json]

Reads every ``<workdir>/<run>/evaluate/results.json`` that
``configs/synth/benchmark.py`` wrote (runs ``source``, ``tent_s0``,
``unlock_s1``, ``unlock_noclassmix_s0``, ``uda_s2``, ``oracle_s0``, ...),
groups the seeds of one method (``_s<N>`` dropped from the folder name) and
prints a Markdown table of the evaluator's headline metrics and its seam
metrics: the mean, and ± the sample standard deviation (ddof 1) where a
method has several seeds, with the seeds counted. A run folder without its
``results.json`` (still running, or stopped) is listed under the table, not
left out silently; seeds of one method evaluated at different steps are
refused by name (one of them is from another schedule).
"""
import argparse
import collections
import math
import os
import statistics

from unlock_jax import fileio
from unlock_jax.evaluation import report
from unlock_jax.methods import benchmark_rows

SEAM = (("seam/band_mIoU", "band mIoU"), ("seam/crossing_PQ", "crossing PQ"),
        ("seam/crossing_AP", "crossing AP"), ("seam/roll_change", "roll change %"))

def collect(workdir: str, evaluator: str = "target_val") -> tuple:
  """``({method: [(seed, step, {metric: value})]}, [run folders without results])``."""
  rows, pending = collections.defaultdict(list), []
  for run in sorted(fileio.listdir(workdir)):
    parsed = benchmark_rows.parse_run_name(run)
    if parsed is None:
      continue  # data/, pseudo/, logs/, ...: not a row
    path = os.path.join(workdir, run, "evaluate", "results.json")
    if not fileio.exists(path):
      pending.append(run)
      continue
    out = fileio.read_json(path)
    if "runs" not in out or len(out["runs"]) != 1:
      raise ValueError(f"{path}: expected one named run (configs/synth/benchmark.py's evaluate), "
                       f"found {sorted(out.get('runs', {})) or 'none'}")
    (record,) = out["runs"].values()
    prefix = evaluator + "/"
    metrics = {k[len(prefix):]: v for k, v in record["results"].items() if k.startswith(prefix)}
    if not metrics:
      raise ValueError(f"{path}: no metrics of evaluator {evaluator!r}; it has "
                       f"{sorted({k.split('/')[0] for k in record['results']})}")
    method, seed = parsed
    rows[method].append((seed, record["step"], metrics))
  for method, seeds in rows.items():
    steps = {step for _, step, _ in seeds}
    if len(steps) > 1:
      raise ValueError(f"{workdir}: the seeds of {method!r} were evaluated at different steps "
                       f"{sorted((s, st) for s, st, _ in seeds)} (seed, step): one of them comes "
                       "from another schedule; move it out of the workdir")
  return dict(rows), pending


def summary(values: list) -> tuple:
  """Mean and sample standard deviation (ddof 1; NaN for one value) of the values that exist."""
  vals = [v for v in values if v is not None and v == v]
  if not vals:
    return math.nan, math.nan
  return statistics.mean(vals), statistics.stdev(vals) if len(vals) > 1 else math.nan


def table(rows: dict) -> tuple:
  """The Markdown table and its numbers ``{method: {metric: [mean, std, n]}}``."""
  metrics = [(k, k) for k in report.HEADLINE] + list(SEAM)
  present = [(k, name) for k, name in metrics
             if any(k in m for seeds in rows.values() for _, _, m in seeds)]
  methods = sorted(rows, key=benchmark_rows.ORDER.index)
  lines = ["| run | seeds | " + " | ".join(name for _, name in present) + " |",
           "|---|---|" + "---|" * len(present)]
  numbers = {}
  for method in methods:
    seeds = sorted(rows[method], key=lambda s: s[0])
    cells, numbers[method] = [], {}
    for k, _ in present:
      mean, std = summary([m.get(k) for _, _, m in seeds])
      numbers[method][k] = [mean, std, len(seeds)]
      cells.append("–" if mean != mean else f"{mean:.2f}" if std != std else
                   f"{mean:.2f} ± {std:.2f}")
    seed_list = ", ".join(str(s) for s, _, _ in seeds) if method != "source" else "–"
    lines.append(f"| {benchmark_rows.LABEL[method]} | {seed_list} | " + " | ".join(cells) + " |")
  return "\n".join(lines), numbers


def main(argv=None):
  # argparse, not absl flags: this module is imported beside unlock_jax.main
  # (which defines --workdir) in one test process.
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--workdir", required=True, help="the benchmark's --workdir")
  parser.add_argument("--evaluator", default="target_val",
                      help="which evaluator's metrics (config.evals.<name>)")
  parser.add_argument("--json", default=None,
                      help="also write {method: {metric: [mean, std, seeds]}} here")
  args = parser.parse_args(argv)
  if not fileio.isdir(args.workdir):
    raise SystemExit(f"--workdir {args.workdir}: no such folder")
  rows, pending = collect(args.workdir, args.evaluator)
  if not rows:
    raise SystemExit(f"{args.workdir}: no <run>/evaluate/results.json yet"
                     + (f" (runs without results: {', '.join(pending)})" if pending else ""))
  text, numbers = table(rows)
  print(text)
  if pending:
    print(f"\nNo results yet (running or stopped): {', '.join(pending)}")
  if args.json:
    fileio.atomic_write_json(args.json, numbers)


if __name__ == "__main__":
  main()
