"""tools/benchmark_table: the benchmark's rows from a workdir, seeds pooled, checked against numpy."""
import json
import os

import numpy as np
import pytest

from configs.synth import benchmark
from unlock_jax.methods import benchmark_rows
from unlock_jax.tools import benchmark_table

HEADLINE = ("mIoU", "mPQ", "mAP", "mAAP", "mAPQ")


def _write(workdir, run, values, step=2000, evaluator="target_val", extra=None):
  results = {f"{evaluator}/{k}": v for k, v in zip(HEADLINE, values)}
  results[f"{evaluator}/seam/roll_change"] = values[0] / 10
  results[f"{evaluator}/IoU/car"] = 50.0  # per-class keys: not in the table
  results.update(extra or {})
  folder = os.path.join(workdir, run, "evaluate")
  os.makedirs(folder, exist_ok=True)
  with open(os.path.join(folder, "results.json"), "w") as f:
    json.dump({"runs": {"X": {"checkpoint": "c", "step": step, "results": results}}}, f)


def _cells(text, label):
  (line,) = [l for l in text.splitlines() if l.startswith(f"| {label} |")]
  return [c.strip() for c in line.strip("|").split("|")]


def test_rows_pool_seeds_with_numpy_mean_and_sample_std(tmp_path):
  w = str(tmp_path)
  rng = np.random.default_rng(0)
  unlock = rng.uniform(0, 100, (3, 5)).round(3)
  for seed, values in enumerate(unlock):
    _write(w, f"unlock_s{seed}", list(values))
  _write(w, "source", [41.0, 24.0, 4.0, 4.5, 24.1], step=1200)
  _write(w, "unlock_noclassmix_s0", [40.0, 25.0, 5.0, 5.5, 26.0])
  os.makedirs(os.path.join(w, "uda_s1", "adapt"))  # still running: no results yet
  os.makedirs(os.path.join(w, "pseudo", "opll"))   # not a row
  os.makedirs(os.path.join(w, "data"))

  rows, pending = benchmark_table.collect(w)
  assert sorted(rows) == ["source", "unlock", "unlock_noclassmix"]
  assert pending == ["uda_s1"]
  text, numbers = benchmark_table.table(rows)
  lines = text.splitlines()
  assert lines[0].split("|")[1:-1][2:] == [" mIoU ", " mPQ ", " mAP ", " mAAP ", " mAPQ ",
                                          " roll change % "]
  # Reading order: source, UNLOCK, its ablation.
  assert [l.split("|")[1].strip() for l in lines[2:]] == [
      "source only", "UNLOCK (source-free)", "UNLOCK without ClassMix"]
  cells = _cells(text, "UNLOCK (source-free)")
  assert cells[1] == "0, 1, 2"
  for j, k in enumerate(HEADLINE):
    mean, std = unlock[:, j].mean(), unlock[:, j].std(ddof=1)
    assert numbers["unlock"][k][:2] == pytest.approx([mean, std], abs=1e-9)
    assert numbers["unlock"][k][2] == 3
    assert cells[2 + j] == f"{mean:.2f} ± {std:.2f}"
  roll = unlock[:, 0] / 10
  assert numbers["unlock"]["seam/roll_change"][:2] == pytest.approx([roll.mean(), roll.std(ddof=1)])
  # One seed: the value, no ±.
  assert _cells(text, "source only")[1:4] == ["–", "41.00", "24.00"]
  assert _cells(text, "UNLOCK without ClassMix")[1:3] == ["0", "40.00"]


def test_a_metric_missing_from_some_seeds_pools_the_others(tmp_path):
  w = str(tmp_path)
  _write(w, "uda_s0", [1, 2, 3, 4, 5], extra={"target_val/seam/crossing_PQ": 2.0})
  _write(w, "uda_s1", [3, 2, 3, 4, 5])  # no object crossed the seam: no crossing PQ
  text, numbers = benchmark_table.table(benchmark_table.collect(w)[0])
  assert numbers["uda"]["mIoU"][:2] == pytest.approx([2.0, np.std([1, 3], ddof=1)])
  assert numbers["uda"]["seam/crossing_PQ"][0] == 2.0
  assert "crossing PQ" in text.splitlines()[0]


def test_seeds_from_two_schedules_are_refused(tmp_path):
  w = str(tmp_path)
  _write(w, "unlock_s0", [1, 2, 3, 4, 5], step=2000)
  _write(w, "unlock_s1", [1, 2, 3, 4, 5], step=300)
  with pytest.raises(ValueError, match=r"'unlock'.*different steps.*\(0, 2000\), \(1, 300\)"):
    benchmark_table.collect(w)


def test_wrong_evaluator_is_named(tmp_path):
  w = str(tmp_path)
  _write(w, "tent_s0", [1, 2, 3, 4, 5])
  with pytest.raises(ValueError, match=r"no metrics of evaluator 'source_val'.*target_val"):
    benchmark_table.collect(w, "source_val")


def test_every_row_folder_the_config_writes_reads_back_as_its_row(tmp_path):
  # The config names the folders, the tool parses them: one naming for both.
  w = str(tmp_path)
  expected = {}
  for method in benchmark_rows.METHODS:
    for seed in ((0,) if method == "source" else (0, 1, 2)):
      for classmix in ((True, False) if method in benchmark_rows.CLASSMIX else (True,)):
        c = benchmark.get_config(f"method={method},seed={seed},classmix={int(classmix)}")
        run = c.evaluate.results_dir.split("/")[1]
        assert run == benchmark_rows.run_name(method, seed, classmix)
        row = (method if classmix else f"{method}_noclassmix", seed)
        assert benchmark_rows.parse_run_name(run) == row
        expected.setdefault(row[0], []).append(seed)
        _write(w, run, [seed, 2, 3, 4, 5])
  for other in ("data", "pseudo", "logs", "fingerprints", "provenance", "generate", "source_s0",
                "unlock", "dacs_s0", "unlock_noclassmix"):
    assert benchmark_rows.parse_run_name(other) is None, other
    os.makedirs(os.path.join(w, other, "x"))
  rows, pending = benchmark_table.collect(w)
  assert {m: sorted(s for s, _, _ in v) for m, v in rows.items()} == expected and pending == []
  text, _ = benchmark_table.table(rows)
  assert [l.split("|")[1].strip() for l in text.splitlines()[2:]] == [
      benchmark_rows.LABEL[g] for g in benchmark_rows.ORDER]
