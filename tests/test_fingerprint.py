"""Stage fingerprints: a rerun with other settings is refused naming the keys,
or with ``overwrite`` gives a fresh run's outputs; the README's ablation
commands give a fresh workdir's outputs; ``main`` checks the whole stage
list before the first stage runs; provenance keeps every invocation.

The refusal tests train nothing: each stage's record is written by
``fingerprint.begin`` with a stand-in output beside it, and the stage's own
``run`` must refuse before it touches anything. The ablation tests run the
tiny pipeline (no R-CNN heads, 2 steps) once and then the README's commands
in that workdir, each against a fresh workdir with the same settings.
"""
import contextlib
import importlib
import json
import os
import re
import shlex
import shutil
import sys
from unittest import mock

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
from absl import flags
from absl.testing import flagsaver
from ml_collections import config_flags

from unlock_jax import fingerprint
from unlock_jax.data import packed_labels

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = f"{REPO}/configs/synth/tiny.py"
STAGES = ("generate", "train_source", "evaluate", "predict", "opll", "adcl_pool", "adapt",
          "predict_adapted", "export_source")
PIPELINE = "generate,train_source,predict,opll,adcl_pool,adapt,evaluate"
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")


def _config(*overrides, arg="full=1", file=TINY):
  """The config as main builds it from these overrides."""
  argv = ["main", f"--config={file}:{arg}", *overrides]
  values = flags.FlagValues()
  config_flags.DEFINE_config_file("config", flag_values=values, lock_config=True,
                                  sys_argv=argv)
  values(argv)
  return values.config


def _stand_in_run(wd, config):
  """Every stage's record, each folder holding one stand-in output."""
  for stage in STAGES:
    fp = fingerprint.begin(config, str(wd), stage)
    os.makedirs(fp.folder, exist_ok=True)
    with open(os.path.join(fp.folder, "out.txt"), "w") as f:
      f.write(stage)


def _lines(msg):
  return [line.strip() for line in msg.splitlines()]


def _record(folder):
  with open(os.path.join(folder, fingerprint.RECORD)) as f:
    return json.load(f)


@pytest.mark.parametrize("stage, override, line", [
    ("generate", "synthpass.seed=3", "synthpass.seed: 0 -> 3"),
    ("train_source", "optim.lr=0.002", "optim.lr: 0.001 -> 0.002"),
    ("evaluate", "evals.target_val.split=train", 'evals.target_val.split: "val" -> "train"'),
    ("predict", "predict.split=val", 'predict.split: "train" -> "val"'),
    ("opll", "opll.semantic.p=1", "opll.semantic.p: 0.8 -> 1.0"),
    ("adcl_pool", "adcl_pool.pt=(0.2,0.9)", "adcl_pool.pt: [0.1, 0.95] -> [0.2, 0.9]"),
    ("adapt", "adapt.mix_weight=0", "adapt.mix_weight: 1.0 -> 0.0"),
    ("predict_adapted", "predict_adapted.checkpoint={workdir}/train_source/checkpoints",
     'predict_adapted.checkpoint: "{workdir}/adapt/checkpoints" -> '
     '"{workdir}/train_source/checkpoints"'),
    ("export_source", "export_source.dtype=bfloat16",
     'export_source.dtype: "float32" -> "bfloat16"'),
])
def test_each_stage_refuses_a_changed_setting_naming_it(tmp_path, stage, override, line):
  wd = tmp_path / "wd"
  _stand_in_run(wd, _config())
  config = _config(f"--config.{override}")
  folder = fingerprint.folder(config, str(wd), stage)
  before = _record(folder)
  module = importlib.import_module(f"unlock_jax.stages.{stage}")
  with pytest.raises(fingerprint.Refused) as e:
    module.run(config, str(wd))
  msg = str(e.value)
  assert line in _lines(msg), msg
  assert "a fresh --workdir" in msg and f"--config.{stage}.overwrite=True" in msg
  # Nothing touched, nothing recorded.
  assert _record(folder) == before and os.path.exists(os.path.join(folder, "out.txt"))
  assert not (wd / "provenance").exists()


def test_logistics_and_a_moved_workdir_resume(tmp_path):
  wd = tmp_path / "wd"
  _stand_in_run(wd, _config())
  logistics = _config(*(f"--config.{o}" for o in (
      "log_every=7", "checkpoint_every=1", "keep_checkpoints=5", "progress_every_secs=1.0",
      "input.num_workers=2", "synthpass.num_workers=2", "adapt.log_every=3",
      "adapt.checkpoint_every=1", "adapt.keep_checkpoints=3", "adapt.eval_every=5",
      "adapt.num_workers=2", "predict.batch_size=8", "opll.batch_size=8",
      "opll.state_every=1", "evals.target_val.batch_size=2", "predict.on_bad_image=fail",
      "debug.kill_after_entries=3")))
  for stage in STAGES:
    assert fingerprint.begin(logistics, str(wd), stage).status == "resume", stage
  # Records name the workdir {workdir}: a moved (or copied) workdir resumes.
  shutil.move(wd, tmp_path / "moved")
  for stage in STAGES:
    assert fingerprint.begin(_config(), str(tmp_path / "moved"), stage).status == "resume"


def test_a_stage_refuses_inputs_made_with_other_settings(tmp_path):
  """opll after --config.predict.checkpoint=other: the store is the old model's."""
  wd = tmp_path / "wd"
  _stand_in_run(wd, _config())
  other = tmp_path / "other_run" / "checkpoints"
  os.makedirs(other / "3")
  config = _config(f"--config.predict.checkpoint={other}")
  with pytest.raises(fingerprint.Refused) as e:
    importlib.import_module("unlock_jax.stages.opll").run(config, str(wd))
  msg = str(e.value)
  assert f"opll reads the outputs of predict in {wd / 'predict'}" in msg
  assert (f'predict.checkpoint: "{{workdir}}/train_source/checkpoints" -> "{other}"'
          in _lines(msg))
  assert 'predict.checkpoint:identity: unset -> {"step": 3}' in _lines(msg)
  # An external checkpoint's identity: its latest step.
  fresh = tmp_path / "fresh"
  assert fingerprint.begin(config, str(fresh), "predict").status == "fresh"
  open(fresh / "predict" / "out.txt", "w").close()
  os.makedirs(other / "5")
  with pytest.raises(fingerprint.Refused, match=r'identity: \{"step": 3\} -> \{"step": 5\}'):
    fingerprint.begin(config, str(fresh), "predict")


def test_a_checkpoint_trained_further_is_another_input(tmp_path):
  """Outputs made from a run killed at step 2 are not the finished run's."""
  wd = tmp_path / "wd"
  for stage in ("generate", "train_source"):
    fingerprint.begin(_config(), str(wd), stage)
  os.makedirs(wd / "train_source" / "checkpoints" / "2")
  fingerprint.begin(_config(), str(wd), "predict")
  open(wd / "predict" / "out.txt", "w").close()
  os.makedirs(wd / "train_source" / "checkpoints" / "4")
  with pytest.raises(fingerprint.Refused) as e:
    fingerprint.begin(_config(), str(wd), "predict")
  assert "predict.checkpoint:step: 2 -> 4" in _lines(str(e.value))
  assert fingerprint.begin(_config(), str(wd), "train_source").status == "resume"


def test_overwrite_deletes_the_stage_and_what_was_computed_from_it(tmp_path):
  wd = tmp_path / "wd"
  _stand_in_run(wd, _config())
  config = _config("--config.opll.semantic.p=1", "--config.opll.overwrite=True")
  fp = fingerprint.begin(config, str(wd), "opll")
  # adapt reads the labels, predict_adapted the adapted model; tiny's evaluate
  # scores train_source and export_source exports it: they stay.
  gone = {"opll", "adapt", "predict_adapted"}
  assert fp.status == "overwrite"
  assert sorted(fp.deleted) == sorted(str(wd / s) for s in gone)
  for stage in STAGES:
    folder = fingerprint.folder(config, str(wd), stage)
    assert os.path.exists(os.path.join(folder, "out.txt")) == (stage not in gone), stage
  assert _record(wd / "opll")["settings"]["opll.semantic.p"] == 1.0
  # Outputs made with these settings: overwrite keeps them (a killed run resumes).
  again = fingerprint.begin(config, str(wd), "opll")
  assert (again.status, again.deleted) == ("resume", ())
  # Never the workdir itself.
  bad = _config("--config.opll.out_dir={workdir}", "--config.opll.overwrite=True")
  with pytest.raises(ValueError, match="holds the workdir"):
    fingerprint.begin(bad, str(wd), "opll")
  assert (wd / "predict" / "out.txt").exists()


def test_plan_checks_the_whole_list(tmp_path):
  wd = tmp_path / "wd"
  _stand_in_run(wd, _config())
  raw = _config("--config.opll.semantic.p=1")
  problems = fingerprint.plan(raw, str(wd), ["opll", "adcl_pool", "adapt"])
  assert [p.split(":")[0] for p in problems] == ["opll", "adapt"]
  assert "opll.semantic.p: 0.8 -> 1.0" in _lines(problems[1])
  # adapt alone: its outputs, and the labels it would read, are both stale.
  problems = fingerprint.plan(raw, str(wd), ["adapt"])
  assert len(problems) == 2 and problems[1].startswith("adapt reads the outputs of opll")
  # The overwrite of opll deletes adapt's outputs first: adapt then runs fresh.
  over = _config("--config.opll.semantic.p=1", "--config.opll.overwrite=True")
  assert fingerprint.plan(over, str(wd), ["opll", "adcl_pool", "adapt"]) == []
  problems = fingerprint.plan(over, str(wd), ["opll", "predict_adapted"])
  assert problems == [f"predict_adapted reads {wd / 'adapt'}, which the overwrite of an "
                      "earlier stage deletes: add adapt to --config.stage before "
                      "predict_adapted"]
  # Config errors of a later stage too.
  no_evals = _config("--config.adapt.evals=('nope',)")
  assert any("config.adapt.evals names ['nope']" in p
             for p in fingerprint.plan(no_evals, str(wd), ["generate", "adapt"]))
  shared = _config("--config.adcl_pool.out_dir={workdir}/opll")
  assert fingerprint.plan(shared, str(wd), ["adcl_pool"]) == [
      f"adcl_pool and opll would both write {wd / 'opll'} (adcl_pool.out_dir, "
      "opll.out_dir): give each a folder of its own"]


# Through main, in this process.

@contextlib.contextmanager
def _argv(argv):
  for stage in STAGES:  # flags their imports define must outlive the flagsaver
    importlib.import_module(f"unlock_jax.stages.{stage}")
  with mock.patch.object(sys, "argv", argv), flagsaver.flagsaver():
    flags.FLAGS(argv)
    yield


def _main(workdir, *overrides, arg="steps=2"):
  """``python -m unlock_jax.main --config tiny.py:<arg> --workdir <workdir> <overrides>``."""
  from unlock_jax import main as main_lib  # pylint: disable=g-import-not-at-top
  with _argv(["main", f"--config={TINY}:{arg}", f"--workdir={workdir}", *overrides]):
    main_lib.main(["main"])


def test_main_checks_every_stage_before_the_first_runs(tmp_path):
  from absl import app  # pylint: disable=g-import-not-at-top
  wd = tmp_path / "wd"
  with pytest.raises(app.UsageError, match="unknown stage 'evalute'.*available: .*'evaluate'"):
    _main(wd, "--config.stage=generate,evalute")
  assert os.listdir(wd) == []  # generate did not run
  _stand_in_run(wd, _config())
  with pytest.raises(SystemExit) as e:
    _main(wd, "--config.stage=generate,train_source,opll", "--config.opll.semantic.p=1",
          arg="full=1")
  msg = str(e.value.code)
  assert msg.startswith("Nothing was run") and "opll.semantic.p: 0.8 -> 1.0" in msg
  assert not (wd / "provenance").exists() and not (wd / "logs").exists()


# The README's ablation commands, on the tiny pipeline.

def _readme_ablations() -> list[list[str]]:
  """The README's commands that rerun stages of a finished demo workdir."""
  with open(os.path.join(REPO, "README.md")) as f:
    text = f.read()
  out = []
  for block in re.findall(r"```bash\n(.*?)```", text, re.S):
    for line in block.replace("\\\n", " ").splitlines():
      if line.startswith("python -m unlock_jax.main --config configs/demo.py ") and (
          "--config.stage=" in line):
        out.append([a for a in shlex.split(line) if a.startswith("--config.")])
  return out


def _split(overrides):
  """(settings, {key: value} of the stage list and output folders)."""
  where = re.compile(r"--config\.(stage|\w+\.out_dir|evaluate\.results_dir)=(.*)")
  settings = [o for o in overrides if not where.match(o)]
  return settings, dict(where.match(o).groups() for o in overrides if where.match(o))


def _tiny(overrides):
  """A demo command's overrides for tiny: its semantic evaluators draw no pictures."""
  return [o for o in overrides if not re.match(r"--config\.evals\.\w+\.pictures_dir=", o)]


def _follow(adapt_dir):
  # The demo's evaluate scores <adapt.out_dir>/checkpoints (a reference that
  # follows adapt.out_dir); tiny's scores train_source: the same by hand.
  return f"--config.evaluate.checkpoint={adapt_dir}/checkpoints"


def test_readme_ablation_commands_are_valid_demo_commands(tmp_path):
  """What the tiny stand-in below assumes of the demo: the keys exist, evaluate
  scores <adapt.out_dir>/checkpoints, every folder is moved off the demo's."""
  demo = lambda *overrides: _config(*overrides, arg="", file=f"{REPO}/configs/demo.py")
  for cmd in _readme_ablations():
    config = demo(*cmd).copy_and_resolve_references()
    _, folders = _split(cmd)
    assert config.evaluate.runs.UNLOCK.checkpoint == folders["adapt.out_dir"] + "/checkpoints"
    assert config.evals.target_val.pictures_dir != demo().evals.target_val.pictures_dir
    for stage in folders["stage"].split(","):
      assert fingerprint.folder(config, str(tmp_path), stage) != fingerprint.folder(
          demo(), str(tmp_path), stage), stage
    assert fingerprint.plan(config, str(tmp_path), folders["stage"].split(",")) == []


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
  wd = tmp_path_factory.mktemp("finished") / "wd"
  _main(wd, f"--config.stage={PIPELINE}", _follow("{workdir}/adapt"))
  return wd


@pytest.fixture(scope="module")
def ablations(finished, tmp_path_factory):
  """Each README command in the finished workdir, and a fresh workdir with its settings.

  The fresh workdir starts from copies of the data and the source model
  (what generate and train_source would write again there, as the resume
  tests show); every later stage runs in it.
  """
  cmds = _readme_ablations()
  assert len(cmds) >= 2, cmds
  out = []
  for i, cmd in enumerate(cmds):
    cmd = _tiny(cmd)
    settings, folders = _split(cmd)
    adapt_dir = folders.get("adapt.out_dir", "{workdir}/adapt")
    _main(finished, *cmd, _follow(adapt_dir))
    fresh = tmp_path_factory.mktemp(f"fresh{i}") / "wd"
    for name in ("data", "train_source"):
      shutil.copytree(finished / name, fresh / name)
    _main(fresh, f"--config.stage={PIPELINE}", *settings, _follow("{workdir}/adapt"))
    resolve = lambda key, default: str(finished) + folders.get(key, default)[len("{workdir}"):]
    out.append({"settings": settings, "fresh": fresh, "stages": folders["stage"].split(","),
                "opll": resolve("opll.out_dir", "{workdir}/opll"),
                "adapt": resolve("adapt.out_dir", "{workdir}/adapt"),
                "evaluate": resolve("evaluate.results_dir", "{workdir}/evaluate")})
  return out


def _state(adapt_dir):
  tree = ocp.StandardCheckpointer().restore(os.path.join(adapt_dir, "checkpoints", "2", "state"))
  return jax.tree.map(np.asarray, tree)


def _same_state(a, b) -> bool:
  la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
  return len(la) == len(lb) and all(np.array_equal(x, y) for x, y in zip(la, lb))


def _files(folder, sub):
  root = os.path.join(folder, sub)
  return {os.path.relpath(os.path.join(d, f), root): open(os.path.join(d, f), "rb").read()
          for d, _, fs in os.walk(root) for f in fs}


def _same_labels(a, b):
  """The OPLL outputs of two folders: equal (the store's cache key aside)."""
  for name in ("thresholds.json", "quality.json"):
    ja, jb = (json.load(open(os.path.join(d, name))) for d in (a, b))
    ja.pop("fingerprint", None)
    jb.pop("fingerprint", None)
    assert ja == jb, name
  for sub in ("OPLL", "pictures"):
    fa, fb = _files(a, sub), _files(b, sub)
    assert fa and fa == fb, sub
  packed = _files(a, "packed")
  assert packed and sorted(packed) == sorted(_files(b, "packed"))
  for rel in packed:
    la, lb = (packed_labels.load_packed(os.path.join(d, "packed", rel)) for d in (a, b))
    assert _same_state(la, lb), rel


def _results(folder):
  with open(os.path.join(folder, "results.json")) as f:
    r = json.load(f)
  return r["step"], r["results"]


def test_readme_ablations_equal_a_fresh_workdir(finished, ablations):
  kinds = {tuple(a["stages"]) for a in ablations}
  assert ("adapt", "evaluate") in kinds and ("opll", "adapt", "evaluate") in kinds
  base = _state(finished / "adapt")
  for a in ablations:
    fresh = a["fresh"]
    if "opll" in a["stages"]:
      _same_labels(a["opll"], fresh / "opll")
      packed = lambda d, rel: packed_labels.load_packed(os.path.join(d, "packed", rel))
      assert any(not _same_state(packed(a["opll"], r), packed(finished / "opll", r))
                 for r in _files(a["opll"], "packed")), "the ablation changed no label"
    ablated = _state(a["adapt"])
    assert _same_state(ablated, _state(fresh / "adapt")), a["settings"]
    assert not _same_state(ablated, base), "the ablation trained the same model"
    assert _results(a["evaluate"]) == _results(fresh / "evaluate")
  # The finished run's own outputs stayed what they were.
  assert _record(finished / "adapt")["settings"]["adapt.mix_weight"] == 1.0
  assert _record(finished / "opll")["settings"]["opll.semantic.p"] == 0.8


def test_overwrite_gives_a_fresh_runs_outputs(finished, ablations, tmp_path):
  raw = next(a for a in ablations if "opll" in a["stages"])
  wd = tmp_path / "wd"
  shutil.copytree(finished, wd)
  _main(wd, "--config.stage=opll,adapt,evaluate", *raw["settings"],
        "--config.opll.overwrite=True", _follow("{workdir}/adapt"))
  _same_labels(wd / "opll", raw["fresh"] / "opll")
  assert _same_state(_state(wd / "adapt"), _state(raw["fresh"] / "adapt"))
  assert _results(wd / "evaluate") == _results(raw["fresh"] / "evaluate")
  # The ablation computed from the replaced labels went with them; the one
  # with labels of its own stayed.
  nomix = next(a for a in ablations if "opll" not in a["stages"])
  for key in ("adapt", "evaluate"):
    assert not os.path.exists(str(wd) + nomix[key][len(str(finished)):])
    assert os.path.exists(str(wd) + raw[key][len(str(finished)):])


def test_refused_reruns_record_nothing_and_provenance_keeps_every_invocation(
    finished, ablations):
  records = lambda stage: sorted(os.listdir(finished / "provenance" / stage))
  adapt_records = records("adapt")
  assert len(adapt_records) == 1 + len(ablations)  # the pipeline, then each ablation
  # Each record names the fingerprint its folder's outputs were made with.
  for name in adapt_records:
    with open(finished / "provenance" / "adapt" / name) as f:
      rec = json.load(f)
    on_disk = _record(rec["folder"])
    assert rec["fingerprint"] == on_disk["fingerprint"]
    assert rec["config"]["adapt"]["mix_weight"] == on_disk["settings"]["adapt.mix_weight"]
  # The reruns in the finished workdir: refused, naming the keys.
  before = _record(finished / "adapt")
  for overrides, line in (
      (["--config.stage=adapt", "--config.adapt.mix_weight=0"], "adapt.mix_weight: 1.0 -> 0.0"),
      (["--config.stage=adapt", "--config.adapt.total_steps=3"], "adapt.total_steps: 2 -> 3"),
      (["--config.stage=opll", "--config.opll.semantic.p=1", "--config.opll.modal.p=1",
        "--config.opll.amodal.p=1"], "opll.amodal.p: 0.5 -> 1.0")):
    with pytest.raises(SystemExit) as e:
      _main(finished, *overrides, _follow("{workdir}/adapt"))
    assert line in _lines(str(e.value.code))
  assert records("adapt") == adapt_records and _record(finished / "adapt") == before
