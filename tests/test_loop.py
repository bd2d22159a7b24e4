"""train/loop.py: the step runs under jax.transfer_guard("disallow").

Inputs already on the devices (the state, the batch put explicitly, step
arguments replicated by the stage) train; a host value handed to the step
is an implicit copy and raises instead of syncing every step. The real
stages' loops run under the guard in test_resume and test_offline_stages.
"""
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from clu import metric_writers

from unlock_jax import sharding as shd
from unlock_jax.train import loop


class _Checkpoints:
  """What loop.run asks of a Checkpointer, keeping saves in memory."""
  directory = "memory"

  def __init__(self):
    self.saved = {}

  def reached_preemption(self, step):
    return False

  def save(self, step, state, data_iter, meta, force):
    self.saved[step] = jax.device_get(state)

  def latest_step(self):
    return max(self.saved, default=None)

  def wait(self):
    pass

  def close(self):
    pass


def _setup(mesh, batches):
  state = shd.replicate({"w": np.zeros((3,), np.float32), "step": np.int32(0),
                         "first_bad_step": np.int32(-1)}, mesh)

  def step_fn(state, batch, scale):
    grad = scale * batch["x"].sum(0)
    new = dict(state, w=state["w"] + grad, step=state["step"] + 1)
    return new, {"loss": jnp.sum(grad), "lr": scale}

  step = jax.jit(step_fn, out_shardings=(shd.replicated(mesh),) * 2)
  config = ml_collections.ConfigDict(dict(log_every=2, checkpoint_every=3,
                                          progress_every_secs=None, debug={}))
  return state, step, iter({"x": b} for b in batches), config


def test_step_runs_under_the_transfer_guard_with_device_inputs():
  mesh = shd.make_mesh()
  n = mesh.devices.size
  rng = np.random.default_rng(0)
  batches = [rng.standard_normal((n, 3)).astype(np.float32) for _ in range(4)]
  state, step, data, config = _setup(mesh, batches)
  ckpt = _Checkpoints()
  scale = shd.replicate(np.float32(0.5), mesh)
  state, m = loop.run(state, step, data, mesh=mesh, ckpt=ckpt,
                      writer=metric_writers.MultiWriter([]), config=config, total=4,
                      stage="test", step_args=(scale,))
  want = 0.5 * sum(b.sum(0) for b in batches)  # numpy: the four steps' updates
  np.testing.assert_allclose(np.asarray(state["w"]), want, rtol=1e-6)
  assert int(state["step"]) == 4 and sorted(ckpt.saved) == [3, 4]
  assert float(m["loss"]) == pytest.approx(0.5 * batches[-1].sum(), rel=1e-6)
  assert loop.TRANSFER_GUARD == "disallow"


def test_a_host_value_handed_to_the_step_is_refused():
  mesh = shd.make_mesh()
  batches = [np.ones((mesh.devices.size, 3), np.float32)] * 2
  state, step, data, config = _setup(mesh, batches)
  with pytest.raises(Exception, match="[Dd]isallowed host-to-device transfer"):
    loop.run(state, step, data, mesh=mesh, ckpt=_Checkpoints(),
             writer=metric_writers.MultiWriter([]), config=config, total=2, stage="test",
             step_args=(np.float32(0.5),))  # numpy: an implicit copy every step
