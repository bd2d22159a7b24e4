"""Adaptation methods (unlock_jax/methods/): the registry by ``config.adapt.method``,
a method of the test's own run through the adapt stage without any change
to ``stages/``, the method in the fingerprint, hyper-parameters in TensorBoard's hparams;
the input streams (``methods/inputs.py``, ``pipeline.Streams``) and the
fingerprint following them; every registered method's step compiled once and
resumed bit-identically after ``kill -9``; Tent (only the normalisation
affine parameters move; its loss against a numpy entropy); UNLOCK without
ClassMix runs no teacher and no mixed forward.

The toy method is entropy minimisation of the student's semantic softmax on
the unlabelled target crops (a Tent-like step, no teacher): it reads one
stream, keeps no teacher, and builds its step only from the library pieces
(``train/adapt.py``'s state and jit, ``train/steps.apply_gradients``). The
upstream outputs (predict, opll, adcl_pool of the tiny full model) are made
once, through ``main`` as a user runs them.
"""
import dataclasses
import os
import shutil
import signal
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
from tests.support import fast_compile
from unlock_jax import fingerprint
from unlock_jax import methods
from unlock_jax import sharding as shd
from unlock_jax.data import keys
from unlock_jax.data import pipeline
from unlock_jax.methods import inputs
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
  known = ", ".join(sorted([*methods.METHODS.names()]))
  with pytest.raises(ValueError, match=r"unknown adapt method 'nope'; known: .*tent.*unlock"):
    methods.get("nope")
  c = tiny.get_config(ARG)
  c.adapt.method = "nope"
  with pytest.raises(ValueError, match=r"config.adapt.method: unknown adapt method 'nope'; "
                                       rf"known: {known}$"):
    fingerprint.validate(c, "adapt")
  assert TOY in known.split(", ") and "tent" in known.split(", ")
  # main's check before any stage runs reports it too.
  problems = fingerprint.plan(c, str(tmp_path), ["adapt"])
  assert any("unknown adapt method 'nope'" in p for p in problems), problems


def test_a_method_must_read_streams_the_stage_feeds_and_keys_the_config_has():
  with pytest.raises(ValueError, match=r"reads streams \['target_depth'\]; the adapt stage "
                                       r"feeds \['source_labelled', 'target_pseudo_labelled', "
                                       r"'target_unlabelled'\]"):
    methods.Method(name="depth", streams=("target_depth",), config_keys=(),
                   init_state=None, make_step=None)
  with pytest.raises(ValueError, match=r"config.adapt lacks \['entropy_weight'\], read by "
                                       rf"adapt method '{TOY}'"):
    _toy().check_config(default.get_config().adapt)


def test_default_config_is_the_stage_keys_and_every_methods():
  unlock = methods.get("unlock")
  assert unlock.name == "unlock" and default.get_config().adapt.method == "unlock"
  assert set(unlock.streams) == {"target_pseudo_labelled", "target_unlabelled"}
  assert methods.get("tent").streams == ("target_unlabelled",)
  own = {n: set(methods.get(n).config_keys) for n in methods.METHODS.names() if n != TOY}
  assert set(default.get_config().adapt) == set(methods.STAGE_KEYS).union(*own.values())
  for keys_of in own.values():
    assert not set(methods.STAGE_KEYS) & keys_of


def test_flat_hparams():
  tree = {"adapt": {"optim": {"lr": 1e-7, "groups": ()}, "crop_size": (400, 400),
                    "method": "unlock", "flip": True, "paste": {}, "tau": None}, "seed": 0}
  assert loop.flat_hparams(tree) == {"adapt.optim.lr": 1e-7, "adapt.optim.groups": "()",
                                     "adapt.crop_size": "(400, 400)",
                                     "adapt.method": "unlock", "adapt.flip": True, "seed": 0}


@pytest.fixture(scope="module")
def ready(tmp_path_factory):
  """A workdir with the source model and the outputs of predict, opll, adcl_pool
  (made with XLA's cheaper code generation: the tests only read them)."""
  wd = str(tmp_path_factory.mktemp("methods") / "wd")
  proc = subprocess.run(
      [sys.executable, "-m", "unlock_jax.main", "--config", f"configs/synth/tiny.py:{ARG}",
       "--workdir", wd, "--config.stage=generate,train_source,predict,opll,adcl_pool"],
      cwd=REPO, capture_output=True, text=True, timeout=900, env=fast_compile.env())
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


# --- Input streams ------------------------------------------------------------------


class _Panoramas:
  """``n`` tiny images whose pixels carry their index (``load_image``, as the readers)."""

  def __init__(self, n, size=(8, 24)):
    self.n, self.size = n, size
    self.keys = [f"p{i}" for i in range(n)]

  def __len__(self):
    return self.n

  def load_image(self, i):
    rng = np.random.default_rng(i)
    return rng.integers(0, 256, (*self.size, 3)).astype(np.uint8)


def _streams():
  its = {"target": pipeline.unlabelled_iterator(_Panoramas(5), batch_size=2, crop_size=(8, 8),
                                                seed=0),
         "source": pipeline.unlabelled_iterator(_Panoramas(7), batch_size=2, crop_size=(8, 8),
                                                seed=3)}
  return pipeline.Streams(its, {"source": "source_"})


def test_streams_merge_their_batches_and_restore_exactly(tmp_path):
  import grain  # pylint: disable=g-import-not-at-top
  from etils import epath  # pylint: disable=g-import-not-at-top
  it = _streams()
  for _ in range(3):
    batch = next(it)
  assert set(batch) == {keys.UNLABELED_IMAGE, "source_" + keys.UNLABELED_IMAGE}
  assert batch[keys.UNLABELED_IMAGE].shape == (2, 8, 8, 3)
  # Saved as the checkpoints save it (grain's handler), restored into a fresh one.
  handler = grain.checkpoint.CheckpointHandler()
  handler.save(epath.Path(tmp_path), args=grain.checkpoint.CheckpointSave(it))
  expected = [next(it) for _ in range(4)]  # past an epoch of both streams
  restored = handler.restore(epath.Path(tmp_path),
                             args=grain.checkpoint.CheckpointRestore(_streams()))
  for want in expected:
    got = next(restored)
    assert set(got) == set(want)
    for k in want:
      np.testing.assert_array_equal(got[k], want[k])
  # Each stream continues its own order: the target stream alone, from the start.
  alone = pipeline.unlabelled_iterator(_Panoramas(5), batch_size=2, crop_size=(8, 8), seed=0)
  fresh = _streams()
  for _ in range(5):
    np.testing.assert_array_equal(next(fresh)[keys.UNLABELED_IMAGE],
                                  next(alone)[keys.UNLABELED_IMAGE])


def test_streams_refuse_clashing_keys_and_another_methods_state():
  its = {n: pipeline.unlabelled_iterator(_Panoramas(4), batch_size=2, crop_size=(8, 8), seed=0)
         for n in ("a", "b")}
  with pytest.raises(ValueError, match="both give batch key 'unlabeled_image'"):
    next(pipeline.Streams(its))
  state = _streams().get_state()
  with pytest.raises(ValueError, match=r"holds streams \['source', 'target'\]; this run reads "
                                       r"\['a', 'b'\]"):
    pipeline.Streams(its).set_state(state)


def _stream_method(name, streams):
  return dataclasses.replace(_toy(), name=name, streams=streams)


def test_fingerprint_follows_the_methods_streams():
  wd = "/nonexistent/wd"
  c = tiny.get_config(ARG)
  fp = lambda c: fingerprint.compute(c, wd, "adapt")
  unlock = fp(c)
  assert set(unlock.upstream) == {"train_source", "generate", "predict", "opll", "adcl_pool"}
  c.adapt.method = "tent"
  tent = fp(c)
  assert set(tent.upstream) == {"train_source", "generate"}
  assert "data.target.root" in tent.inputs and "opll.out_dir" not in tent.inputs
  assert not any(k.startswith(("opll.", "adcl_pool.", "adapt.ema_max", "adapt.reg_weight"))
                 for k in tent.settings)
  # Settings a method does not read change nothing of its fingerprint.
  c2 = tiny.get_config(ARG)
  c2.opll.semantic.p, c2.adapt.ema_max = 0.5, 0.99
  assert fp(c2).hash != unlock.hash
  c2.adapt.method = "tent"
  assert fp(c2).hash == tent.hash
  c2.adapt.tent.lr = 1e-4
  assert fp(c2).hash != tent.hash
  # A method reading the source data depends on it and on its crops.
  name = "source_reader"
  methods.METHODS.register(name, _stream_method(name, ("source_labelled", "target_unlabelled")))
  try:
    c3 = tiny.get_config(ARG)
    c3.adapt.method = name
    c3.adapt.entropy_weight = 1.0
    src = fp(c3)
    assert "data.source.root" in src.inputs and src.settings["input.crop_size"]
    c3.input.crop_size = (32, 32)
    assert fp(c3).hash != src.hash
  finally:
    methods.METHODS._entries.pop(name)  # pylint: disable=protected-access


def test_source_stream_is_train_sources_crops_prefixed(ready):
  c = tiny.get_config(ARG)
  mesh = shd.make_mesh()
  it = inputs.iterator(c, ready, ("source_labelled", "target_unlabelled"), mesh)
  batch = next(it)
  i = c.input
  reader = pipeline.open_reader(c.data.source.layout, c.data.source.root.format(workdir=ready),
                                c.data.source.split, c.data.source.image_size)
  want = next(pipeline.train_iterator(
      reader, batch_size=c.adapt.batch_size, crop_size=i.crop_size, seed=c.seed,
      cat_max_ratio=i.cat_max_ratio, flip=i.flip, max_instances=i.max_instances,
      box_rule=i.box_rule))
  assert set(batch) == {f"source_{k}" for k in want} | {keys.UNLABELED_IMAGE}
  assert {"source_image", "source_semantic", "source_modal_masks", "source_amodal_valid"} <= set(batch)
  for k, v in want.items():
    np.testing.assert_array_equal(batch[f"source_{k}"], v)
  assert batch[keys.UNLABELED_IMAGE].shape == (c.adapt.batch_size, *c.adapt.crop_size, 3)


# --- Tent and UNLOCK without ClassMix, on the tiny semantic model -------------------------


@pytest.fixture(scope="module")
def small():
  """A tiny semantic model (LayerNorms and BatchNorms), its variables, a batch, the mesh."""
  from unlock_jax.models import amodalpass  # pylint: disable=g-import-not-at-top
  from unlock_jax.models import variables as variables_lib  # pylint: disable=g-import-not-at-top
  c = tiny.get_config()
  model = amodalpass.build(c.model)
  variables = variables_lib.init_variables(model, jax.random.key(0), (1, 32, 32, 3))
  rng = np.random.default_rng(0)
  batch = {keys.IMAGE: rng.normal(size=(4, 32, 32, 3)).astype(np.float32),
           keys.SEMANTIC: rng.integers(0, 6, (4, 32, 32)).astype(np.int32),
           keys.UNLABELED_IMAGE: rng.normal(size=(4, 32, 32, 3)).astype(np.float32)}
  return c, model, variables, batch, shd.make_mesh()


def _one_step(method, c, model, variables, batch, mesh, *, wrap=None):
  tx, schedule = method.optimizer(model, c.adapt, 10, variables["params"])
  state = method.init_state(variables, tx, mesh)
  before = jax.tree.map(np.asarray, jax.device_get(state))
  step = method.make_step(wrap or model, tx, schedule, mesh, state, cfg=c.adapt)
  args = (shd.put_batch(batch, mesh), jax.device_put(variables["params"], shd.replicated(mesh)),
          shd.replicate(jax.random.key(1), mesh))
  after, m = step(state, *args)
  return before, jax.tree.map(np.asarray, jax.device_get(after)), jax.device_get(m)


def _names(tree):
  return {"/".join(str(getattr(p, "key", p)) for p in path): np.asarray(leaf)
          for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


# The oracle: every LayerNorm / BatchNorm of the network by its module name.
_NORM_MODULE = r"(norm\d*|norm_patches|bn)"


def test_tent_updates_only_normalisation_affine_parameters(small):
  import re  # pylint: disable=g-import-not-at-top
  c, model, variables, batch, mesh = small
  before, after, _ = _one_step(methods.get("tent"), c, model, variables, batch, mesh)
  b, a = _names(before["params"]), _names(after["params"])
  norm = {n for n in b if re.fullmatch(rf".*/{_NORM_MODULE}/(scale|bias)", n)}
  assert len(norm) >= 10 and any("/bn/" in n for n in norm) and any("/norm" in n for n in norm)
  for n in b:
    if n not in norm:  # bit for bit: not merely a zero step
      assert a[n].dtype == b[n].dtype and a[n].tobytes() == b[n].tobytes(), n
  moved = {n for n in norm if not np.array_equal(a[n], b[n])}
  assert len(moved) >= len(norm) // 2, sorted(norm - moved)
  # Adam's moments exist for the normalisation parameters only.
  from unlock_jax.methods import tent  # pylint: disable=g-import-not-at-top
  labels = _names(tent.norm_labels(model, variables["params"]))
  assert {n for n, l in labels.items() if l == tent.NORM} == norm
  assert sum(x.size for x in jax.tree.leaves(after["opt"])) == 2 * sum(b[n].size for n in norm) + 1
  # BatchNorm ran on batch statistics and stored them.
  assert any(not np.array_equal(x, y) for x, y in zip(jax.tree.leaves(before["batch_stats"]),
                                                      jax.tree.leaves(after["batch_stats"])))
  assert int(after["step"]) == 1 and set(after) == set(before)


def test_tent_loss_is_the_mean_softmax_entropy(small):
  from unlock_jax.models import predict as predict_lib  # pylint: disable=g-import-not-at-top
  c, model, variables, batch, mesh = small
  _, _, m = _one_step(methods.get("tent"), c, model, variables, batch, mesh)
  x = batch[keys.UNLABELED_IMAGE]
  out, _ = model.apply(variables, x, train=False, bn_train=True, semantic_only=True,
                       mutable=["batch_stats"])
  z = np.asarray(predict_lib.semantic_logits(out, x.shape[1:3]), np.float64)
  p = np.exp(z - z.max(-1, keepdims=True))
  p /= p.sum(-1, keepdims=True)
  entropy = -(p * np.log(p)).sum(-1).mean()
  np.testing.assert_allclose(m["loss/entropy"], entropy, rtol=1e-5)
  np.testing.assert_allclose(m["loss"], entropy, rtol=1e-5)


class _CountingModel:
  """The model, counting its forwards as the step is traced."""

  def __init__(self, model):
    self.model, self.applies = model, []

  def apply(self, *args, **kwargs):
    self.applies.append(kwargs.get("train"))
    return self.model.apply(*args, **kwargs)


def test_unlock_without_classmix_runs_no_mixed_forward(small):
  from unlock_jax.methods import unlock  # pylint: disable=g-import-not-at-top
  c, model, variables, batch, mesh = small
  results = {}
  for w in (1.0, 0.0):
    c.adapt.mix_weight = w
    counting = _CountingModel(model)
    results[w] = _one_step(methods.get("unlock"), c, model, variables, batch, mesh,
                           wrap=counting)
    results[w] += (counting.applies,)
  c.adapt.mix_weight = 1.0
  # Teacher, clean and mixed forwards with ClassMix; the clean one alone without.
  assert results[1.0][3] == [False, True, True] and results[0.0][3] == [True]
  assert "loss/mix/sem" in results[1.0][2] and "loss/mix/sem" not in results[0.0][2]
  assert "teacher_pseudo_weight" not in results[0.0][2]
  # Its BatchNorm statistics are the clean forward's alone, with the step's keys.
  rng = jax.random.fold_in(jax.random.key(1), 0)
  r = jax.random.split(jax.random.split(rng)[1], 3)
  _, bs = unlock.clean_loss(model, variables["params"], variables["batch_stats"],
                            variables["params"], batch, r[:2], cfg=c.adapt)
  without, with_mix = results[0.0][1]["batch_stats"], results[1.0][1]["batch_stats"]
  for x, y, z in zip(jax.tree.leaves(bs), jax.tree.leaves(without), jax.tree.leaves(with_mix)):
    np.testing.assert_allclose(y, x, rtol=1e-5, atol=1e-6)
  assert any(not np.allclose(y, z, rtol=1e-4) for y, z in
             zip(jax.tree.leaves(without), jax.tree.leaves(with_mix)))  # the mixed forward moves them


# --- Every registered method: compiled once, resumed bit-identically after kill -9 ---------

# The package's methods (the toy is registered later, by its fixture): a
# method added to methods.METHODS is picked up here without touching this file.
REGISTERED = methods.METHODS.names()
# What each stream needs besides the source model and the generated data.
_NEEDS = {"target_pseudo_labelled": ("predict", "opll", "adcl_pool")}


def _main(workdir, *overrides):
  return subprocess.run(
      [sys.executable, "-m", "unlock_jax.main", "--config", f"configs/synth/tiny.py:{ARG}",
       "--workdir", str(workdir), "--config.stage=adapt", *overrides],
      cwd=REPO, capture_output=True, text=True, timeout=900)


def _restore(path):
  return jax.tree.map(np.asarray, ocp.StandardCheckpointer().restore(os.path.join(path, "state")))


@pytest.mark.parametrize("name", REGISTERED)
def test_method_compiles_once_and_resumes_bit_identically_after_kill(name, ready, tmp_path,
                                                                       monkeypatch):
  """The stage with only the outputs the method's streams read: run through in
  this process (one compilation of the step), then in another workdir killed
  with SIGKILL after step 2's checkpoint and rerun: the same state and input
  iterator state at step 4."""
  method = methods.get(name)
  needed = ["data", "train_source"] + [s for st in method.streams for s in _NEEDS.get(st, ())]
  for wd in (tmp_path / "a", tmp_path / "b"):
    for d in dict.fromkeys(needed):
      shutil.copytree(os.path.join(ready, d), wd / d, symlinks=True)
  overrides = [f"--config.adapt.method={name}", "--config.adapt.total_steps=4",
               "--config.adapt.checkpoint_every=2"]

  compiled = []
  def counting(*args, **kwargs):
    compiled.append(method.make_step(*args, **kwargs))
    return compiled[-1]
  monkeypatch.setattr(methods, "get", lambda n: dataclasses.replace(method, make_step=counting))
  c = tiny.get_config(ARG)
  c.stage = "adapt"
  c.adapt.method, c.adapt.total_steps, c.adapt.checkpoint_every = name, 4, 2
  assert adapt_stage.run(c, str(tmp_path / "a"))["step"] == 4
  (step_fn,) = compiled
  assert step_fn._cache_size() == 1  # pylint: disable=protected-access
  monkeypatch.undo()

  killed = _main(tmp_path / "b", *overrides, "--config.debug.kill_after_checkpoint=2")
  assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
  proc = _main(tmp_path / "b", *overrides)
  assert proc.returncode == 0, proc.stderr[-4000:]
  assert "Resuming from step 2" in proc.stderr
  a = _restore(str(tmp_path / "a" / "adapt" / "checkpoints" / "4"))
  b = _restore(str(tmp_path / "b" / "adapt" / "checkpoints" / "4"))
  assert set(a) == set(b) and {"params", "batch_stats", "opt", "step"} <= set(a)
  for (path, x), y in zip(jax.tree_util.tree_flatten_with_path(a)[0], jax.tree.leaves(b)):
    np.testing.assert_array_equal(x, y, err_msg=jax.tree_util.keystr(path))
  src = _restore(os.path.join(ready, "train_source", "checkpoints", "2"))["params"]
  assert any(not np.array_equal(s, p) for s, p in zip(jax.tree.leaves(src),
                                                      jax.tree.leaves(a["params"])))
  if "teacher" in a:  # the EMA teacher moved away from the student
    assert any(not np.array_equal(t, p)
               for t, p in zip(jax.tree.leaves(a["teacher"]), jax.tree.leaves(a["params"])))
  it = lambda wd: os.path.join(wd, "adapt", "checkpoints", "4", "data_iter")
  files = sorted(f for f in os.listdir(it(tmp_path / "a")) if f.endswith(".json"))
  assert files  # commit_success.txt holds a timestamp
  for f in files:
    with open(os.path.join(it(tmp_path / "a"), f)) as fa, \
         open(os.path.join(it(tmp_path / "b"), f)) as fb:
      assert fa.read() == fb.read()
