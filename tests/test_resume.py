"""A killed training run resumes to bit-identical parameters (Orbax + grain state)."""
import os
import subprocess
import sys

import jax
import numpy as np

from configs.synth import tiny
from tests.support import fast_compile
from tests.support import synthpass as synth_testing
from unlock_jax import checkpoint
from unlock_jax.models import amodalpass

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _config(root):
  c = tiny.get_config("steps=4")
  c.stage = "train_source"
  c.data.source.root = os.path.join(root, "KITTI360_APS")
  c.data.target.root = os.path.join(root, "BlendPASS")
  return c


def _params(config, workdir):
  model = amodalpass.build(config.model)
  mesh = jax.sharding.Mesh(np.array(jax.devices()), ("data",))
  abstract = checkpoint.abstract_variables(model, (1, 32, 32, 3), mesh)
  variables, step = checkpoint.load_variables(
      os.path.join(workdir, "train_source", "checkpoints"), abstract)
  return jax.device_get(variables), step


def _run(workdir, root, *extra):
  """The user's command, in a fresh process (runs share one environment, with
  XLA's cheaper code generation: all three, so the comparison is like for like)."""
  cmd = [sys.executable, "-m", "unlock_jax.main",
         "--config", os.path.join(REPO, "configs/synth/tiny.py") + ":steps=4",
         "--workdir", workdir, "--config.stage=train_source",
         f"--config.data.source.root={os.path.join(root, 'KITTI360_APS')}", *extra]
  return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=900,
                        env=fast_compile.env())


def test_killed_run_resumes_bit_identically(tmp_path_factory):
  root = synth_testing.make_tiny_dataset(str(tmp_path_factory.mktemp("data")))
  config = _config(root)
  straight = str(tmp_path_factory.mktemp("straight"))
  proc = _run(straight, root)
  assert proc.returncode == 0, proc.stderr[-3000:]

  # Same command, killed (SIGKILL, no clean shutdown) right after step 2's checkpoint.
  killed = str(tmp_path_factory.mktemp("killed"))
  proc = _run(killed, root, "--config.debug.kill_after_checkpoint=2")
  assert proc.returncode == -9, proc.stderr[-3000:]
  ckpts = os.listdir(os.path.join(killed, "train_source", "checkpoints"))
  assert "2" in ckpts and "4" not in ckpts, ckpts

  # Resume: the same command on the same workdir continues from step 2.
  proc = _run(killed, root)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "Resuming from step 2" in proc.stderr

  a, step_a = _params(config, straight)
  b, step_b = _params(config, killed)
  assert step_a == step_b == 4
  leaves_a, tree_a = jax.tree.flatten(a)
  leaves_b, tree_b = jax.tree.flatten(b)
  assert tree_a == tree_b
  for x, y in zip(leaves_a, leaves_b):
    np.testing.assert_array_equal(x, y)  # bit-identical, not approximately equal
