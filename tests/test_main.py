"""The entry point: locked configs, stage dispatch, and the tiny end-to-end run."""
import json
import os
import re
import subprocess
import sys

import orbax.checkpoint as ocp
import pytest
from absl import flags
from ml_collections import config_flags

from configs import common
from unlock_jax import provenance

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
               "--config.stage=generate,trian_source", timeout=120)
  assert proc.returncode != 0
  assert "unknown stage 'trian_source'" in proc.stderr
  assert "train_source" in proc.stderr
  assert not (tmp_path / "data").exists()  # checked before generate ran


def test_config_arguments_are_typed_and_checked():
  arg = common.parse_arg("steps=7,runlocal", steps=1, runlocal=False, scale=0.5)
  assert arg.steps == 7 and arg.runlocal is True and arg.scale == 0.5
  with pytest.raises(ValueError, match="unknown config argument 'stpes'"):
    common.parse_arg("stpes=3", steps=1)


def _parse(*overrides):
  """The config as main builds it from these command-line overrides."""
  argv = ["main", "--config=configs/k2b/source_b5.py", *overrides]
  values = flags.FlagValues()
  config_flags.DEFINE_config_file("config", flag_values=values, lock_config=True,
                                  sys_argv=argv)
  values(argv)
  return values.config


def test_evaluators_follow_the_data_section_unless_set():
  cwd = os.getcwd()
  os.chdir(REPO)
  try:
    default = _parse()
    moved = _parse("--config.data.target.root=/mnt/BlendPASS",
                   "--config.data.target.image_size=(200, 1024)")
    pinned = _parse("--config.data.target.root=/mnt/BlendPASS",
                    "--config.evals.target_val.root=/elsewhere")
  finally:
    os.chdir(cwd)
  ev = default.evals.target_val
  assert (ev.root, ev.layout, ev.image_size, ev.split) == (
      "/data/BlendPASS", "blendpass", (400, 2048), "val")
  ev = moved.evals.target_val
  assert (ev.root, ev.image_size) == ("/mnt/BlendPASS", (200, 1024))
  assert moved.data.target.root == "/mnt/BlendPASS"
  # Set on the evaluator itself: it alone moves, the data section keeps its value.
  assert pinned.evals.target_val.root == "/elsewhere"
  assert pinned.data.target.root == "/mnt/BlendPASS"
  # The stage's tau override copies the evaluator with its values resolved.
  resolved = moved.evals.target_val.copy_and_resolve_references()
  assert resolved.root == "/mnt/BlendPASS" and resolved.tau_m == 0.95


def test_ungenerated_data_names_the_generate_stage_before_any_stage(tmp_path):
  proc = _main("--config", "configs/synth/tiny.py", "--workdir", str(tmp_path),
               "--config.stage=train_source", timeout=300)
  assert proc.returncode != 0
  assert (f"config.data.source: data root {tmp_path}/data/KITTI360_APS does not exist"
          in proc.stderr)
  assert "run it first (--config.stage=generate,train_source)" in proc.stderr
  assert not os.path.exists(tmp_path / "train_source")  # nothing was run


def test_demo_quick_mode_keeps_the_data_of_the_committed_model():
  """configs/demo.py:runlocal shrinks the demo, not what the committed model was
  trained on (predict and adapt refuse other synthpass data), and writes pictures."""
  from configs import cpu  # pylint: disable=g-import-not-at-top
  from configs import demo  # pylint: disable=g-import-not-at-top
  from unlock_jax.data import synthpass  # pylint: disable=g-import-not-at-top
  with open(os.path.join(cpu.DEMO_SOURCE, "synthpass.json")) as f:
    trained = json.load(f)["identity"]
  full, quick = demo.get_config(), demo.get_config("runlocal")
  for c in (full, quick):
    s = c.synthpass
    assert {"version": synthpass.DATA_VERSION, "scale": s.scale, "seed": s.seed,
            "source_train": s.num_source.train} == trained
    assert c.predict.checkpoint == cpu.DEMO_SOURCE
    assert c.evals.target_val.num_pictures > 0
  assert quick.stage == full.stage
  assert sum(quick.synthpass.num_target.values()) <= 8 and quick.synthpass.num_source.val == 0
  assert quick.adapt.total_steps <= 4 < full.adapt.total_steps
  # Regenerating the model in quick mode never writes over the committed one.
  assert demo.get_config("source=train").export_source.out_dir == cpu.DEMO_SOURCE
  quick_train = demo.get_config("source=train,runlocal")
  assert quick_train.export_source.out_dir == "{workdir}/export_source"
  assert all(e.num_pictures > 0 for e in quick_train.evals.values())


def test_tiny_pipeline_end_to_end(tmp_path):
  """generate → train_source → evaluate through main, as a user runs it."""
  proc = _main("--config", "configs/synth/tiny.py:steps=2", "--workdir", str(tmp_path))
  assert proc.returncode == 0, proc.stderr[-4000:]
  # Each evaluator's table is printed once, with its mIoU line.
  for split in ("source_val", "target_val"):
    assert proc.stdout.count(f"== {split} (") == 1, proc.stdout
  assert proc.stdout.count("-mIoU:") == 2
  results = json.load(open(tmp_path / "evaluate" / "results.json"))
  assert results["step"] == 2
  for split in ("source_val", "target_val"):
    assert 0.0 <= results["results"][f"{split}/mIoU"] <= 100.0
  (record,) = provenance.records(str(tmp_path), "train_source")
  prov = json.load(open(record))
  assert prov["packages"]["jax"] and prov["devices"] and prov["git_commit"]
  assert prov["status"] == "fresh" and prov["config"]["total_steps"] == 2
  events = [f for f in os.listdir(tmp_path / "train_source") if f.startswith("events.out.tfevents")]
  assert events, "clu should write TensorBoard event files"
  # Rerunning the same command resumes: nothing to train, same results.
  again = _main("--config", "configs/synth/tiny.py:steps=2", "--workdir", str(tmp_path))
  assert again.returncode == 0, again.stderr[-4000:]
  assert json.load(open(tmp_path / "evaluate" / "results.json")) == results
  # One provenance record per invocation: the first one is kept.
  first, second = provenance.records(str(tmp_path), "train_source")
  assert first == record and json.load(open(second))["status"] == "resume"
  # Every stage kept its log in the workdir; the rerun appended to it.
  for stage in ("generate", "train_source", "evaluate"):
    text = open(tmp_path / "logs" / f"{stage}.log").read()
    assert text.count(f"Stage {stage} logs to") == 2, stage
  evaluate_log = open(tmp_path / "logs" / "evaluate.log").read()
  assert evaluate_log.count("== target_val (") == 2  # the printed tables too
  train_log = open(tmp_path / "logs" / "train_source.log").read()
  assert "Resuming from step 2" in train_log
  # Progress lines with the step total; no INFO chatter from Orbax's modules.
  assert "train_source: compiling the train step" in train_log
  assert re.search(r"train_source step 2/2: loss=[0-9.]+, ", train_log), train_log
  # (Modules that logged over nine in ten of an adapt log's lines before.)
  chatty = {"checkpoint_manager.py", "async_checkpointer.py", "atomicity.py",
            "composite_checkpoint_handler.py", "base_pytree_checkpoint_handler.py",
            "jax_array_handlers.py", "event_tracking.py", "async_io_engine.py", "deleter.py"}
  assert chatty <= {f for _, _, fs in os.walk(os.path.dirname(ocp.__file__)) for f in fs}
  chatter = [line for line in train_log.splitlines() if line.startswith("I")
             and line.split("] ")[0].split()[-1].split(":")[0] in chatty]
  assert not chatter, chatter[:3]
