"""The entry point: locked configs, stage dispatch, and the tiny end-to-end run."""
import json
import os
import subprocess
import sys

import pytest

from configs import common

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _main(*args, timeout=900):
  return subprocess.run([sys.executable, "-m", "unlock_jax.main", *args], cwd=REPO,
                        capture_output=True, text=True, timeout=timeout)


def test_misspelled_override_fails_naming_the_key(tmp_path):
  proc = _main("--config", "configs/demo.py", "--workdir", str(tmp_path),
               "--config.totl_steps=3", timeout=120)
  assert proc.returncode != 0
  assert "totl_steps" in proc.stderr


def test_unknown_stage_lists_the_stages(tmp_path):
  proc = _main("--config", "configs/demo.py", "--workdir", str(tmp_path),
               "--config.stage=trian_source", timeout=120)
  assert proc.returncode != 0
  assert "unknown stage 'trian_source'" in proc.stderr
  assert "train_source" in proc.stderr


def test_config_arguments_are_typed_and_checked():
  arg = common.parse_arg("steps=7,runlocal", steps=1, runlocal=False, scale=0.5)
  assert arg.steps == 7 and arg.runlocal is True and arg.scale == 0.5
  with pytest.raises(ValueError, match="unknown config argument 'stpes'"):
    common.parse_arg("stpes=3", steps=1)


def test_tiny_pipeline_end_to_end(tmp_path):
  """generate → train_source → evaluate through main, as a user runs it."""
  proc = _main("--config", "configs/synth/tiny.py:steps=2", "--workdir", str(tmp_path))
  assert proc.returncode == 0, proc.stderr[-4000:]
  assert "source_val/mIoU" in proc.stdout and "target_val/mIoU" in proc.stdout
  results = json.load(open(tmp_path / "evaluate" / "results.json"))
  assert results["step"] == 2
  for split in ("source_val", "target_val"):
    assert 0.0 <= results["results"][f"{split}/mIoU"] <= 100.0
  prov = json.load(open(tmp_path / "provenance" / "train_source.json"))
  assert prov["packages"]["jax"] and prov["devices"] and prov["git_commit"]
  assert os.path.exists(tmp_path / "provenance" / "train_source.config.json")
  events = [f for f in os.listdir(tmp_path / "train_source") if f.startswith("events.out.tfevents")]
  assert events, "clu should write TensorBoard event files"
  # Rerunning the same command resumes: nothing to train, same results.
  again = _main("--config", "configs/synth/tiny.py:steps=2", "--workdir", str(tmp_path))
  assert again.returncode == 0, again.stderr[-4000:]
  assert json.load(open(tmp_path / "evaluate" / "results.json")) == results
