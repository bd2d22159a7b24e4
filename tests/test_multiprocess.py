"""Two hosts give what one host gives: the method's stages in two local processes.

Two processes (coordinator on 127.0.0.1, 2 fake CPU devices each, jax's
default gloo CPU collectives) run the stages on one shared workdir, as the
hosts of a cluster with a shared file system do; one process with 4 fake
devices runs them with the same config and seed. Both meshes have 4 devices
holding one row each of every global batch of 4, so each device runs the same
program on the same data; only the cross-device reductions (gradient
all-reduce, batch statistics, metric and histogram merges) cross processes.

What must agree, and how closely:

* ``train_source`` parameters and batch statistics: ``|difference| <= 1e-6``
  (measured: 6e-8 and 2.4e-7). Float sums reduced over another device
  layout round differently (~1e-7 relative in the gradients). Both runs use
  Adam with ``eps=1``: with the configured ``eps=1e-8`` Adam's normalised
  step turns that noise in a gradient that is truly zero (a bias before a
  norm) into a full ``±lr`` step, so parameters would differ by ``~lr``
  wherever nothing is learnt, and a tolerance of that size would hide real
  bugs; with ``eps=1`` a step is ``lr`` times the gradient and the comparison
  measures gradient agreement.
* ``adapt`` student, teacher and batch statistics, per leaf:
  ``|difference| <= 1e-6 + 1e-3 * max |change from the source model|``
  (measured: at most 0.14 of that bound, for a leaf that does not move). ``eps=1`` and ``lr=1e-3`` too: the
  decode head's x10^4 multiplier then moves it by up to ~3 in two steps, and
  the difference, relative to that change, stays below 1e-4.
* ``evaluate`` metrics, the prediction store, OPLL thresholds, labels,
  pictures and quality report, the ADCL pool: identical. These stages of the
  two-process run start from the one-process source checkpoint, and
  inference is per example. OPLL prototypes (float sums merged over
  processes): ``rtol=1e-5``.

Also here: the per-process train batches are the rows of the one-process
batches, and a process 35 s late at the first barrier does not kill the run.

The pool threshold is lowered (``adcl_pool.pt=(1, 0)``) so the two-step
model's pool is not empty and ``adapt`` pastes from it.
"""
import json
import os
import re
import shutil
import subprocess
import sys
import time

import numpy as np
import pytest

from unlock_jax.data import keys, pipeline
from unlock_jax.pseudo import labels
from unlock_jax.pseudo import store

# Two-process runs take ~4-5 min of the suite (most of it XLA compiling);
# UNLOCK_JAX_MULTIPROCESS_TESTS=0 skips them for a quick local run.
pytestmark = pytest.mark.skipif(
    os.environ.get("UNLOCK_JAX_MULTIPROCESS_TESTS") == "0",
    reason="UNLOCK_JAX_MULTIPROCESS_TESTS=0")

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = "configs/synth/tiny.py:full=1,steps=2"
OVERRIDES = ("--config.optim.eps=1.0", "--config.adapt.optim.eps=1.0",
             "--config.adapt.optim.lr=1e-3", "--config.adcl_pool.pt=(1.0,0.0)")
STAGES = "train_source,evaluate,predict,opll,adcl_pool,adapt"
PARAM_ATOL = 1e-6
UPDATE_RTOL = 1e-3
# Both runs compile with the same flags (so per-device code is the same);
# these cut XLA's CPU compile time, most of this test's, by about a third.
FAST_COMPILE = "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"
TIMEOUT = 1500


def _env(num_devices):
  env = dict(os.environ, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="3")
  flags = re.sub(r"--xla_force_host_platform_device_count=\d+", "",
                 env.get("XLA_FLAGS", ""))
  env["XLA_FLAGS"] = (f"{flags} {FAST_COMPILE} "
                      f"--xla_force_host_platform_device_count={num_devices}").strip()
  env.pop("UNLOCK_JAX_DISTRIBUTED", None)
  return env


def _main_cmd(workdir, stages, *extra):
  return [sys.executable, "-m", "unlock_jax.main", "--config", CONFIG, "--workdir",
          str(workdir), f"--config.stage={stages}", *OVERRIDES, *extra]


def _start(argv, log, num_devices=4, **env):
  """A process whose output goes to ``log`` (kept as ``.log``)."""
  with open(log, "w") as f:
    proc = subprocess.Popen(argv, cwd=REPO, env={**_env(num_devices), **env}, stdout=f,
                            stderr=subprocess.STDOUT)
  proc.log = log
  return proc


def _start_pair(argv_of, log_dir, name, **env):
  """Two processes meeting at a fresh local coordinator; output to files.

  ``unlock_jax.main`` turns the persistent compilation cache off itself for
  multi-process CPU runs (conftest points every subprocess at one cache):
  process 0 would otherwise load programs process 1 compiled, and a gloo
  collective of process 1 received a message of another size and aborted.
  """
  import portpicker  # pylint: disable=g-import-not-at-top
  port = portpicker.pick_unused_port()
  return [_start([*argv_of(i), f"--coordinator_address=127.0.0.1:{port}",
                  "--num_processes=2", f"--process_id={i}"],
                 log_dir / f"{name}.process{i}.out", num_devices=2, **env) for i in range(2)]


def _watch(procs, done, timeout=TIMEOUT):
  """Polls until ``done()``. When one of ``procs`` fails, or all end first, or
  time runs out, kills the others (which would otherwise wait minutes in a
  collective for it) and fails with the failed one's output."""
  deadline = time.monotonic() + timeout
  while not done():
    codes = [p.poll() for p in procs]
    if (any(c not in (None, 0) for c in codes) or None not in codes
        or time.monotonic() > deadline):
      for p in procs:
        if p.poll() is None:
          p.kill()
          p.wait()
      bad = [p for p, c in zip(procs, codes) if c not in (None, 0)] or procs
      out = bad[0].log.read_text()[-6000:]
      pytest.fail(f"{bad[0].args[-5:]} exited {bad[0].returncode}:\n{out}")
    time.sleep(0.5)


def _ended(procs):
  return lambda: all(p.poll() == 0 for p in procs)


# Process 1 joins the first barrier after the connection set-up, 35 s late:
# longer than gloo's 30 s limit on setting up a collective.
_SKEW = """
import sys, time
import jax, numpy as np
flags = dict(a[2:].split("=", 1) for a in sys.argv[1:])
jax.distributed.initialize(flags["coordinator_address"], 2, int(flags["process_id"]))
from unlock_jax import sharding as shd
mesh = shd.make_mesh()
if jax.process_index() == 1:
  time.sleep(35)
shd.barrier("late")
x = shd.put_array(np.arange(2, dtype=np.float32) + 2 * jax.process_index(), mesh)
print("sum", float(jax.jit(jax.numpy.sum, out_shardings=shd.replicated(mesh))(x)))
"""


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  """Both runs, overlapped so a 2-core machine stays busy: the one-process run
  goes through every stage; the two-process ``train_source`` starts once the
  data exists, its other stages once the one-process source model does."""
  root = tmp_path_factory.mktemp("multiprocess")
  one, two, logs = root / "one", root / "two", root / "logs"
  logs.mkdir()
  # Started first: it mostly sleeps while the stages below run.
  skew = _start_pair(lambda i: [sys.executable, "-c", _SKEW], logs, "skew",
                     JAX_ENABLE_COMPILATION_CACHE="false")  # not through main
  t0 = time.monotonic()
  single = _start(_main_cmd(one, "generate," + STAGES), logs / "one.out")
  _watch([single], (one / "generate" / "summary.json").exists)
  two.mkdir()
  shutil.copytree(one / "data", two / "data", copy_function=os.link)  # one data set
  pair = _start_pair(lambda i: _main_cmd(two, "train_source"), logs, "train_source")
  _watch([single, *pair], _ended(pair))
  _watch([single], (one / "train_source" / "summary.json").exists)
  source = one / "train_source" / "checkpoints"
  pair = _start_pair(lambda i: _main_cmd(
      two, STAGES.replace("train_source,", ""), f"--config.predict.checkpoint={source}",
      f"--config.evaluate.checkpoint={source}"), logs, "stages")
  _watch([single, *pair], _ended([single, *pair]))
  print(f"both runs: {time.monotonic() - t0:.0f} s")
  return {"one": one, "two": two, "skew": skew}


def _load_state(checkpoints):
  """The last checkpoint's ``state`` item as numpy arrays (no mesh needed)."""
  import jax  # pylint: disable=g-import-not-at-top
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  step = max(int(s) for s in os.listdir(checkpoints) if s.isdigit())
  path = os.path.join(checkpoints, str(step), "state")
  ckptr = ocp.PyTreeCheckpointer()
  meta = ckptr.metadata(path)
  tree = getattr(meta, "item_metadata", meta)
  tree = getattr(tree, "tree", tree)
  args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), tree)
  state = ckptr.restore(path, restore_args=args)
  flat = jax.tree_util.tree_flatten_with_path(state)[0]
  return step, {jax.tree_util.keystr(k): np.asarray(v) for k, v in flat}


def _diff(x, y):
  return float(np.max(np.abs(x.astype(np.float64) - y), initial=0.0))


def _compare_states(a_dir, b_dir):
  """``({leaf: max |difference|} of float leaves, a's state)``; asserts the
  same step, structure, shapes and dtypes, and equal integer leaves."""
  step_a, a = _load_state(a_dir)
  step_b, b = _load_state(b_dir)
  assert step_a == step_b == 2
  assert sorted(a) == sorted(b)
  diffs = {}
  for k in a:
    assert a[k].shape == b[k].shape and a[k].dtype == b[k].dtype, k
    if np.issubdtype(a[k].dtype, np.floating):
      diffs[k] = _diff(a[k], b[k])
    else:
      np.testing.assert_array_equal(a[k], b[k], err_msg=k)
  return diffs, a


def _worst_per_group(diffs):
  worst = {}
  for k, d in diffs.items():
    group = k.split("]")[0] + "]"
    worst[group] = max(worst.get(group, 0.0), d)
  return worst


def _same_measurements(one_dir, two_dir):
  one = json.load(open(one_dir / "summary.json"))["final"]
  two = json.load(open(two_dir / "summary.json"))["final"]
  assert sorted(one) == sorted(two)
  for k in one:
    assert two[k] == pytest.approx(one[k], rel=1e-5, abs=1e-6), k


def test_skewed_processes_survive_the_first_barrier(runs):
  procs = runs["skew"]
  _watch(procs, _ended(procs), timeout=120)
  for p in procs:
    assert "sum 6.0" in p.log.read_text()  # 0+1+2+3: both processes' rows


def test_train_source_parameters_match(runs):
  ck = lambda wd: wd / "train_source" / "checkpoints"
  diffs, _ = _compare_states(ck(runs["one"]), ck(runs["two"]))
  worst = _worst_per_group(diffs)
  print("train_source max |one - two| per group:", worst)
  assert worst["['params']"] <= PARAM_ATOL
  assert worst["['batch_stats']"] <= PARAM_ATOL
  # Losses, gradient norm, lr: the step's own measurements agree too.
  _same_measurements(runs["one"] / "train_source", runs["two"] / "train_source")


def test_evaluate_metrics_identical(runs):
  one = json.load(open(runs["one"] / "evaluate" / "results.json"))
  two = json.load(open(runs["two"] / "evaluate" / "results.json"))
  assert one["step"] == two["step"] == 2
  assert len(one["results"]) > 10
  assert two["results"] == one["results"]


def _files(folder):
  out = {}
  for root, _, files in os.walk(folder):
    for f in files:
      rel = os.path.relpath(os.path.join(root, f), folder)
      out[rel] = open(os.path.join(root, f), "rb").read()
  return out


def test_prediction_store_identical(runs):
  one = _files(runs["one"] / "predict" / "entries")
  two = _files(runs["two"] / "predict" / "entries")
  assert len(one) == 4
  assert sorted(two) == sorted(one)
  assert [k for k in one if one[k] != two[k]] == []
  # meta.json names the checkpoint: both name the one-process source model.
  assert (json.load(open(runs["two"] / "predict" / store.META_FILE))
          == json.load(open(runs["one"] / "predict" / store.META_FILE)))


def test_opll_thresholds_and_labels_identical(runs):
  one, two = runs["one"] / "opll", runs["two"] / "opll"
  assert (two / "thresholds.json").read_bytes() == (one / "thresholds.json").read_bytes()
  for folder in ("packed", "OPLL", "pictures"):
    a, b = _files(one / folder), _files(two / folder)
    assert a and sorted(b) == sorted(a), folder
    assert [k for k in a if a[k] != b[k]] == [], folder
  for rel in _files(one / "packed"):
    got, want = (labels.load_packed(str(d / "packed" / rel)) for d in (two, one))
    np.testing.assert_array_equal(got["semantic"], want["semantic"])
  assert json.load(open(two / "quality.json")) == json.load(open(one / "quality.json"))
  # Prototypes are sums over each process's rows, merged: float rounding only.
  with np.load(one / "prototypes.npz") as a, np.load(two / "prototypes.npz") as b:
    np.testing.assert_array_equal(a["present"], b["present"])
    np.testing.assert_allclose(b["prototypes"], a["prototypes"], rtol=1e-5, atol=1e-6)


def test_adcl_pool_identical(runs):
  one, two = runs["one"] / "adcl_pool", runs["two"] / "adcl_pool"
  assert (json.load(open(two / "thresholds.json"))
          == json.load(open(one / "thresholds.json")))
  with np.load(one / "pool_index.npz") as a, np.load(two / "pool_index.npz") as b:
    assert sorted(a.files) == sorted(b.files)
    assert a["classes"].size > 0  # a pool the adaptation pastes from
    for k in a.files:
      np.testing.assert_array_equal(b[k], a[k], err_msg=k)


def test_adapt_parameters_match(runs):
  ck = lambda wd: wd / "adapt" / "checkpoints"
  diffs, one = _compare_states(ck(runs["one"]), ck(runs["two"]))
  print("adapt max |one - two| per group:", _worst_per_group(diffs))
  _, source = _load_state(runs["one"] / "train_source" / "checkpoints")
  ratios, moved = {}, 0.0
  for k, d in diffs.items():
    group, rest = k.split("]", 1)
    if group not in ("['params'", "['teacher'", "['batch_stats'"):
      continue  # optimiser moments: covered by the parameters
    start = source[("['batch_stats']" if group == "['batch_stats'" else "['params']") + rest]
    change = _diff(one[k], start)
    moved = max(moved, change)
    ratios[k] = d / (PARAM_ATOL + UPDATE_RTOL * change)
  worst = max(ratios, key=ratios.get)
  print(f"adapt: worst |one - two| / bound {ratios[worst]:.3f} at {worst}")
  assert ratios[worst] <= 1.0, worst
  assert len(ratios) > 100 and moved > 0.1  # the adaptation did move the model
  _same_measurements(runs["one"] / "adapt", runs["two"] / "adapt")


class _Indexed:
  """n tiny images whose pixels hold their index."""

  def __init__(self, n):
    self.n = n

  def __len__(self):
    return self.n

  def load(self, i):
    sem = np.random.default_rng(i).integers(0, 18, (8, 24)).astype(np.uint8)
    return {"name": str(i), "image": np.full((8, 24, 3), i, np.uint8), "semantic": sem}


def test_process_rows_make_the_one_process_batches():
  """Each process's train batches are its rows of the one-process global batches
  (same examples, same crops and flips)."""
  reader = _Indexed(10)
  args = dict(crop_size=(8, 8), seed=5)
  whole = pipeline.train_iterator(reader, batch_size=4, **args)
  parts = [pipeline.train_iterator(reader, batch_size=2, process_index=p, process_count=2,
                                   **args) for p in range(2)]
  for _ in range(6):  # past an epoch boundary (10 examples, 4 per step)
    want = next(whole)
    got = [next(it) for it in parts]
    for k in (keys.IMAGE, keys.SEMANTIC):
      np.testing.assert_array_equal(np.concatenate([g[k] for g in got]), want[k])
