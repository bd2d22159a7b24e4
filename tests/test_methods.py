"""Adaptation methods (unlock_jax/methods/): the registry by ``config.adapt.method``,
a method of the test's own run through the adapt stage without any change
to ``stages/``, the method in the fingerprint, hyper-parameters in TensorBoard's hparams.

The toy method is entropy minimisation of the student's semantic softmax on
the unlabelled target crops (a Tent-like step, no teacher): it reads one
stream, keeps no teacher, and builds its step only from the library pieces
(``train/adapt.py``'s state and jit, ``train/steps.apply_gradients``). The
upstream outputs (predict, opll, adcl_pool of the tiny full model) are made
once, through ``main`` as a user runs them.
"""
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
import pytest

from configs import default
from configs.synth import tiny
from unlock_jax import fingerprint
from unlock_jax import methods
from unlock_jax.data import keys
from unlock_jax.stages import adapt as adapt_stage
from unlock_jax.train import adapt as adapt_lib
from unlock_jax.train import loop
from unlock_jax.train import steps

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ARG = "full=1,steps=2"
TOY = "toy_entropy"


def _entropy_step(model, tx, schedule, mesh, state, *, cfg):
  def loss_fn(params, batch_stats, x):
    out, mut = model.apply({"params": params, "batch_stats": batch_stats}, x, train=True,
                           semantic_only=True, rngs={"dropout": jax.random.key(0)},
                           mutable=["batch_stats"])
    logp = jax.nn.log_softmax(out["sem_logits"].astype(jnp.float32), axis=-1)
    entropy = -jnp.mean(jnp.sum(jnp.exp(logp) * logp, axis=-1))
    return cfg.entropy_weight * entropy, (entropy, mut.get("batch_stats", batch_stats))

  def step_fn(state, batch, source_params, rng):
    del source_params, rng
    (loss, (entropy, bs)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        state["params"], state["batch_stats"], batch[keys.UNLABELED_IMAGE])
    new_state, m = steps.apply_gradients(state, grads, loss, tx, schedule)
    new_state["batch_stats"] = bs
    return new_state, m | {"loss/entropy": entropy}

  return adapt_lib.jit_step(step_fn, mesh, state)


def _toy():
  return methods.Method(
      name=TOY, streams=("target_unlabelled",), config_keys=("entropy_weight",),
      init_state=lambda v, tx, mesh: adapt_lib.init_state(v, tx, mesh, teacher=False),
      make_step=_entropy_step)


@pytest.fixture(scope="module", autouse=True)
def toy_registered():
  methods.METHODS.register(TOY, _toy())
  yield
  methods.METHODS._entries.pop(TOY)  # pylint: disable=protected-access


def _config(method=TOY):
  c = tiny.get_config(ARG)
  c.adapt.method = method
  c.adapt.entropy_weight = 1.0
  c.adapt.log_every = 1
  return c


def test_unknown_method_is_refused_naming_the_known_ones(tmp_path):
  with pytest.raises(ValueError, match=r"unknown adapt method 'tent'; known: .*unlock"):
    methods.get("tent")
  c = tiny.get_config(ARG)
  c.adapt.method = "tent"
  with pytest.raises(ValueError, match=r"config.adapt.method: unknown adapt method 'tent'; "
                                       rf"known: {TOY}, unlock"):
    fingerprint.validate(c, "adapt")
  # main's check before any stage runs reports it too.
  problems = fingerprint.plan(c, str(tmp_path), ["adapt"])
  assert any("unknown adapt method 'tent'" in p for p in problems), problems


def test_a_method_must_read_streams_the_stage_feeds_and_keys_the_config_has():
  with pytest.raises(ValueError, match=r"reads streams \['source_labelled'\]; the adapt stage "
                                       r"feeds \['target_pseudo_labelled', 'target_unlabelled'\]"):
    methods.Method(name="uda", streams=("source_labelled",), config_keys=(),
                   init_state=None, make_step=None)
  with pytest.raises(ValueError, match=r"config.adapt lacks \['entropy_weight'\], read by "
                                       rf"adapt method '{TOY}'"):
    _toy().check_config(default.get_config().adapt)


def test_default_config_is_the_stage_keys_and_unlocks():
  unlock = methods.get("unlock")
  assert unlock.name == "unlock" and default.get_config().adapt.method == "unlock"
  assert set(unlock.streams) == set(methods.STREAMS)
  assert set(default.get_config().adapt) == set(methods.STAGE_KEYS) | set(unlock.config_keys)
  assert not set(methods.STAGE_KEYS) & set(unlock.config_keys)


def test_flat_hparams():
  tree = {"adapt": {"optim": {"lr": 1e-7, "groups": ()}, "crop_size": (400, 400),
                    "method": "unlock", "flip": True, "paste": {}, "tau": None}, "seed": 0}
  assert loop.flat_hparams(tree) == {"adapt.optim.lr": 1e-7, "adapt.optim.groups": "()",
                                     "adapt.crop_size": "(400, 400)",
                                     "adapt.method": "unlock", "adapt.flip": True, "seed": 0}


@pytest.fixture(scope="module")
def ready(tmp_path_factory):
  """A workdir with the source model and the outputs of predict, opll, adcl_pool."""
  wd = str(tmp_path_factory.mktemp("methods") / "wd")
  proc = subprocess.run(
      [sys.executable, "-m", "unlock_jax.main", "--config", f"configs/synth/tiny.py:{ARG}",
       "--workdir", wd, "--config.stage=generate,train_source,predict,opll,adcl_pool"],
      cwd=REPO, capture_output=True, text=True, timeout=900)
  assert proc.returncode == 0, proc.stderr[-4000:]
  return wd


class _Recording:
  """The stage's writer, keeping what it was given."""

  def __init__(self, writer):
    self.writer, self.hparams, self.scalars = writer, [], {}

  def write_hparams(self, hparams):
    self.hparams.append(hparams)
    self.writer.write_hparams(hparams)

  def write_scalars(self, step, scalars):
    self.scalars.setdefault(step, {}).update(scalars)
    self.writer.write_scalars(step, scalars)

  def __getattr__(self, name):
    return getattr(self.writer, name)


def test_a_registered_method_runs_through_the_adapt_stage(ready, monkeypatch):
  recorded = []
  real = loop.create_writer
  monkeypatch.setattr(loop, "create_writer", lambda d: recorded.append(_Recording(real(d)))
                      or recorded[-1])
  config = _config()
  summary = adapt_stage.run(config, ready)
  assert summary["step"] == 2
  ckpt = os.path.join(ready, "adapt", "checkpoints", "2", "state")
  state = ocp.StandardCheckpointer().restore(ckpt)
  assert set(state) == {"params", "batch_stats", "opt", "step", "first_bad_step"}  # no teacher
  src = ocp.StandardCheckpointer().restore(
      os.path.join(ready, "train_source", "checkpoints", "2", "state"))["params"]
  moved = [not np.array_equal(a, b) for a, b in zip(jax.tree.leaves(src),
                                                    jax.tree.leaves(state["params"]))]
  assert any(moved)
  # The step's own measurements, logged at every step; loss = weight · entropy,
  # the entropy of C classes in (0, ln C].
  (writer,) = recorded
  for step in (1, 2):
    m = writer.scalars[step]
    assert 0.0 < m["loss/entropy"] <= np.log(config.model.num_classes) + 1e-6
    np.testing.assert_allclose(m["loss"], m["loss/entropy"], rtol=1e-6)
  # The adaptation hyper-parameters, flattened, reached clu's hparams.
  (hp,) = writer.hparams
  assert hp["adapt.method"] == TOY and hp["adapt.entropy_weight"] == 1.0
  assert hp["adapt.optim.lr"] == config.adapt.optim.lr
  assert hp["adapt.crop_size"] == str(tuple(config.adapt.crop_size))
  assert hp["adapt.paste.num_candidates"] == 20

  # Another method on the same outputs is refused naming the key, as any setting.
  with pytest.raises(fingerprint.Refused, match=rf'adapt.method: "{TOY}" -> "unlock"'):
    adapt_stage.run(_config(method="unlock"), ready)
