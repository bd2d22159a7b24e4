"""Damaged or foreign checkpoints: one message naming the checkpoint and the fix.

Each case damages a tiny checkpoint written here (a truncated array file, a
truncated ``_METADATA``, an empty folder, a missing step item) and checks the
error, or, for a resumed run, the fall-back to the previous complete step.
"""
import gc
import glob
import logging as py_logging
import os
import shutil
import sys
import types

import grain
import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest

from configs import demo
from unlock_jax import checkpoint
from unlock_jax import sharding as shd
from unlock_jax import inference
from unlock_jax.train import loop

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _variables(mesh, scale=1.0):
  repl = shd.replicated(mesh)
  tree = {"params": {"a": jnp.arange(1000, dtype=jnp.float32) * scale,
                     "b": {"w": jnp.full((8, 4), scale)}},
          "batch_stats": {"m": jnp.full((4,), scale)}}
  return jax.tree.map(lambda x: jax.device_put(x, repl), tree)


@pytest.fixture(scope="module")
def written(tmp_path_factory):
  """An exported folder (plain pytree) and a run folder with steps 1 and 2."""
  mesh = shd.make_mesh()
  root = tmp_path_factory.mktemp("ckpt")
  ckptr = ocp.StandardCheckpointer()
  ckptr.save(str(root / "export"), _variables(mesh))
  ckptr.wait_until_finished()
  run = checkpoint.Checkpointer(str(root / "run"), max_to_keep=3)
  data_iter = iter(grain.MapDataset.range(100).to_iter_dataset())
  for step in (1, 2):
    for _ in range(10):  # a step's batches
      next(data_iter)
    run.save(step, dict(_variables(mesh, float(step)), step=jnp.int32(step)),
             data_iter, meta={"step": step}, force=True)
  run.close()
  return root, mesh


def _copy(written, kind, tmp_path):
  root, mesh = written
  dst = tmp_path / kind
  shutil.copytree(root / kind, dst)
  return str(dst), mesh


def _truncate(path):
  with open(path, "r+b") as f:
    f.truncate(os.path.getsize(path) // 2)


def _truncate_arrays(folder):
  """Cuts every array data file (OCDBT's ``d/`` folders) to half its size."""
  files = glob.glob(os.path.join(folder, "**", "d", "*"), recursive=True)
  assert files, folder
  for f in files:
    _truncate(f)


def _abstract(mesh):
  return checkpoint.abstract_like(_variables(mesh))


def _state_abstract(mesh):
  return checkpoint.abstract_like(dict(_variables(mesh), step=jnp.int32(0)))


def test_truncated_array_file_names_the_folder_not_tensorstore(written, tmp_path):
  path, mesh = _copy(written, "export", tmp_path)
  _truncate_arrays(path)
  with pytest.raises(checkpoint.DamagedCheckpointError) as e:
    checkpoint.load_variables(path, _abstract(mesh))
  msg = str(e.value)
  assert msg.startswith(f"checkpoint {path} is damaged (OUT_OF_RANGE"), msg
  assert f"git checkout -- {path}" in msg and "export_source" in msg  # the fix
  assert "TensorStore(" not in msg and "\n" not in msg  # one line, no spec dump
  assert e.value.__suppress_context__  # the traceback shows this message alone


def test_failed_reads_leave_no_spec_dumps_behind(written, tmp_path, monkeypatch):
  """A failed restore can leave Orbax's other failed array reads to surface as
  "Exception ignored in <coroutine>", each with TensorStore's spec dump (when
  depends on timing): while restoring, those are dropped, nothing else is."""
  reported = []
  monkeypatch.setattr(sys, "unraisablehook", reported.append)
  orbax_read = types.SimpleNamespace(cr_code=types.SimpleNamespace(
      co_filename=os.path.join(os.path.dirname(ocp.__file__), "_src", "serialization.py")))
  other = types.SimpleNamespace(cr_code=types.SimpleNamespace(co_filename=__file__))
  path, mesh = _copy(written, "run", tmp_path)
  _truncate_arrays(os.path.join(path, "2"))
  ckpt = checkpoint.Checkpointer(path)
  injected = [types.SimpleNamespace(object=obj, exc_value=RuntimeError(i))
              for i, obj in enumerate((orbax_read, other, None))]
  with pytest.raises(checkpoint.DamagedCheckpointError):
    with checkpoint._restoring("x", "", ("", "")):  # pylint: disable=protected-access
      for unraisable in injected:
        sys.unraisablehook(unraisable)
      ckpt.restore(2, _state_abstract(mesh))
  ckpt.close()
  # Only what this test injected: the real restore may add asyncio's own
  # "Event loop is closed" reports (object None), depending on timing.
  assert [r for r in reported if any(r is u for u in injected)] == injected[1:]
  assert sys.unraisablehook == reported.append  # put back


def test_truncated_metadata_is_damage_not_an_architecture_mismatch(written, tmp_path):
  path, mesh = _copy(written, "export", tmp_path)
  _truncate(os.path.join(path, "_METADATA"))
  with pytest.raises(checkpoint.DamagedCheckpointError,
                     match=r"^checkpoint .*export is damaged \(a metadata file is cut short"):
    checkpoint.load_variables(path, _abstract(mesh))
  os.remove(os.path.join(path, "_METADATA"))
  with pytest.raises(checkpoint.DamagedCheckpointError, match="_METADATA file is missing"):
    checkpoint.load_variables(path, _abstract(mesh))


def test_empty_folder_says_it_holds_no_checkpoint(tmp_path, written):
  _, mesh = written
  with pytest.raises(FileNotFoundError) as e:
    checkpoint.load_variables(str(tmp_path), _abstract(mesh))
  msg = str(e.value)
  assert f"checkpoint folder {tmp_path} holds no checkpoint: the folder is empty" in msg
  assert "train_source/checkpoints" in msg and "export_source" in msg
  assert "Individual parameter subdirectory" not in msg
  os.makedirs(tmp_path / "3.orbax-checkpoint-tmp-1234")
  with pytest.raises(FileNotFoundError, match="only an unfinished save"):
    checkpoint.load_variables(str(tmp_path), _abstract(mesh))


def test_run_folder_with_damaged_latest_step_names_the_step_to_delete(written, tmp_path):
  path, mesh = _copy(written, "run", tmp_path)
  _truncate_arrays(os.path.join(path, "2"))
  with pytest.raises(checkpoint.DamagedCheckpointError) as e:
    checkpoint.load_variables(path, _abstract(mesh))
  assert str(e.value).startswith(f"checkpoint step 2 in {path} is damaged (OUT_OF_RANGE")
  assert f"Delete {os.path.join(path, '2')} to load step 1" in str(e.value)
  # A step folder without its state item (a copy cut short).
  path, mesh = _copy(written, "run", tmp_path / "nostate")
  shutil.rmtree(os.path.join(path, "2", "state"))
  with pytest.raises(checkpoint.DamagedCheckpointError, match=f"step 2 in {path} is damaged"):
    checkpoint.load_variables(path, _abstract(mesh))


def test_resume_falls_back_to_the_previous_complete_step(written, tmp_path, caplog):
  path, mesh = _copy(written, "run", tmp_path)
  _truncate_arrays(os.path.join(path, "2"))
  ckpt = checkpoint.Checkpointer(path, max_to_keep=3)
  state = dict(_variables(mesh, 0.0), step=jnp.int32(0))
  with caplog.at_level(py_logging.WARNING):
    state, step = loop.restore_or_init(ckpt, state, None)
  assert step == 1
  np.testing.assert_array_equal(np.asarray(state["params"]["b"]["w"]), np.ones((8, 4)))
  warning = " ".join(r.getMessage() for r in caplog.records if r.levelno == py_logging.WARNING)
  assert f"checkpoint step 2 in {path} is damaged (OUT_OF_RANGE" in warning
  assert "resuming from step 1, the previous complete checkpoint" in warning
  assert f"kept as {os.path.join(path, '2')}.damaged" in warning
  assert sorted(os.listdir(path)) == ["1", "2.damaged"]
  # The run can save step 2 again.
  ckpt.save(2, dict(_variables(mesh, 5.0), step=jnp.int32(2)), force=True)
  ckpt.close()
  assert checkpoint.Checkpointer(path).latest_step() == 2


def test_damaged_iterator_state_falls_back_too(written, tmp_path):
  """grain's position is part of the step: a cut or lost file of it is damage."""
  for how in ("truncate", "remove"):
    path, mesh = _copy(written, "run", tmp_path / how)
    state_file = os.path.join(path, "2", "data_iter", "process_0-of-1.json")
    _truncate(state_file) if how == "truncate" else os.remove(state_file)
    ckpt = checkpoint.Checkpointer(path)
    data_iter = iter(grain.MapDataset.range(100).to_iter_dataset())
    _, step = ckpt.restore_latest(_state_abstract(mesh), data_iter)
    ckpt.close()
    assert step == 1
    assert next(data_iter) == 10  # where step 1 left the input


def test_resume_with_every_step_damaged_says_how_to_start_over(written, tmp_path):
  path, mesh = _copy(written, "run", tmp_path)
  _truncate_arrays(os.path.join(path, "2"))
  _truncate(os.path.join(path, "1", "state", "_METADATA"))
  ckpt = checkpoint.Checkpointer(path)
  with pytest.raises(checkpoint.DamagedCheckpointError) as e:
    ckpt.restore_latest(_state_abstract(mesh))
  msg = str(e.value)
  assert msg.startswith(f"no complete checkpoint to resume from in {path}")
  assert "step 2: OUT_OF_RANGE" in msg and "step 1: a metadata file is cut short" in msg
  assert msg.endswith(f"Delete {path} to train this stage from the start.")
  ckpt.close()


def test_architecture_mismatch_stays_reported_as_such(written, tmp_path):
  _, mesh = written
  repl = shd.replicated(mesh)
  abstract = _abstract(mesh)
  wrong_shape = dict(abstract, params=dict(
      abstract["params"], a=jax.ShapeDtypeStruct((999,), jnp.float32, sharding=repl)))
  other_tree = dict(abstract, params={"a": abstract["params"]["a"],
                                      "c": abstract["params"]["b"]})
  for kind in ("export", "run"):
    path, _ = _copy(written, kind, tmp_path / kind)
    with pytest.raises(checkpoint.ArchitectureMismatchError) as e:
      checkpoint.load_variables(path, wrong_shape)
    assert "does not match the model in config.model" in str(e.value)
    assert "first params/a: stored (1000,), expected (999,)" in str(e.value)
    # A run folder is restored partially (its opt state is not the model's): a
    # model array the checkpoint lacks must not pass as an unrestored placeholder.
    with pytest.raises(checkpoint.ArchitectureMismatchError) as e:
      checkpoint.load_variables(path, other_tree)
    assert "1 arrays missing from the checkpoint, first params/c/w" in str(e.value)
    assert "1 arrays only in the checkpoint, first params/b/w" in str(e.value)


def test_damaged_committed_source_model_through_load_model(tmp_path):
  """The committed demo model's format (bfloat16 export) through the loader the stages use."""
  config = demo.get_config()
  mesh = shd.make_mesh()
  path = str(tmp_path / "demo_source")
  shutil.copytree(os.path.join(REPO, "assets", "demo_source"), path)
  _truncate_arrays(path)
  with pytest.raises(checkpoint.DamagedCheckpointError) as e:
    inference.load_model(config.model, path, mesh)
  msg = str(e.value)
  assert f"checkpoint {path} is damaged (OUT_OF_RANGE" in msg
  assert "configs/demo.py:source=train" in msg  # synthpass.json's command
  assert "does not match" not in msg
  shutil.rmtree(path)
  shutil.copytree(os.path.join(REPO, "assets", "demo_source"), path)
  _truncate(os.path.join(path, "_METADATA"))
  with pytest.raises(checkpoint.DamagedCheckpointError, match="metadata file is cut short"):
    inference.load_model(config.model, path, mesh)
  # Intact, but read as another architecture: reported as such, naming the fix.
  shutil.rmtree(path)
  shutil.copytree(os.path.join(REPO, "assets", "demo_source"), path)
  config.model.fpn_channels = 32
  with pytest.raises(checkpoint.ArchitectureMismatchError) as e:
    inference.load_model(config.model, path, mesh)
  assert str(e.value).startswith(f"checkpoint {path} does not match the model in config.model")
  assert "set config.model to the architecture" in str(e.value)
