"""Two hosts give what one host gives: the method's stages in two local processes.

Two processes (coordinator on 127.0.0.1, 2 fake CPU devices each) run the
stages on one shared workdir, as the hosts of a cluster with a shared file
system do; one process with 4 fake devices runs them with the same config and
seed. Both meshes have 4 devices holding one row each of every global batch of
4, so each device runs the same program on the same data; only the
cross-device reductions (gradient all-reduce, batch statistics, metric and
histogram merges) cross processes.

Equal by construction. The one-process run also starts through
``jax.distributed.initialize`` (``--num_processes=1``), so its CPU client uses
the same gloo collectives as the two-process run instead of XLA's in-process
ones: a gloo all-reduce over the same 4 ranks runs the same ring algorithm,
adding the same terms in the same order wherever its ranks live. And every
process compiles the same per-device program: XLA:CPU's parallel-task split
of large loops follows the client's thread-pool size, max(CPU count, local
devices), which would be 4 in one process and 2 in each of two on a 2-core
machine (and the split moves elements between vectorised and scalar code,
changing their rounding), so every run gets ``PJRT_NPROC=4``. With the same
program on the same rows and the same reduction order, every float the step
computes is the same float, on any CPU (the instruction set changes XLA's
code and so its rounding, but both runs alike). Hence:

* ``train_source`` and ``adapt`` parameters, teacher, batch statistics and
  optimiser state, and the steps' own measurements: identical.
* ``evaluate`` metrics, the prediction store, OPLL thresholds, labels,
  pictures and quality report, the ADCL pool: identical.
* OPLL prototypes: ``rtol=1e-5``. They are float sums over each process's
  rows merged on the host in numpy, so the order of the additions differs
  between one process and two by construction.

What a plain one-host run (XLA's in-process collectives) differs by is float
reassociation inside the all-reduce; ``test_in_process_collectives_round_only``
bounds it by the classical error of recursive summation, from the values
alone. To check all of this under another CPU target (XLA's code generation,
so its rounding, follows the instruction set), restrict the ISA:
``XLA_FLAGS="--xla_cpu_max_isa=AVX2 --xla_force_host_platform_device_count=4"
python -m pytest tests/test_multiprocess.py``.

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
from unlock_jax.data import packed_labels
from unlock_jax.pseudo import store
from tests.support import fast_compile

# Two-process runs take ~4-5 min of the suite (most of it XLA compiling);
# UNLOCK_JAX_MULTIPROCESS_TESTS=0 skips them for a quick local run.
pytestmark = pytest.mark.skipif(
    os.environ.get("UNLOCK_JAX_MULTIPROCESS_TESTS") == "0",
    reason="UNLOCK_JAX_MULTIPROCESS_TESTS=0")

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = "configs/synth/tiny.py:full=1,steps=2"
# Adam with eps=1 moves the 2-step source model little enough that its amodal
# detections pass the lowered pool thresholds, so ``adapt`` pastes from a pool.
OVERRIDES = ("--config.optim.eps=1.0", "--config.adcl_pool.pt=(1.0,0.0)")
STAGES = "train_source,evaluate,predict,opll,adcl_pool,adapt"
# Both runs compile with the same flags (so per-device code is the same):
# the suite's cheaper code generation, whatever the caller's XLA_FLAGS.
FAST_COMPILE = " ".join(fast_compile.FLAGS)
TIMEOUT = 1500


def _env(num_devices):
  env = dict(os.environ, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="3")
  flags = re.sub(r"--xla_force_host_platform_device_count=\d+", "",
                 env.get("XLA_FLAGS", ""))
  env["XLA_FLAGS"] = (f"{flags} {FAST_COMPILE} "
                      f"--xla_force_host_platform_device_count={num_devices}").strip()
  # XLA:CPU splits loops into parallel tasks by the client's thread-pool size,
  # max(PJRT_NPROC or the CPU count, local devices), and the split changes
  # which elements take the vectorised path, so the rounding: one size for all.
  env["PJRT_NPROC"] = "4"
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


def _start_processes(argv_of, log_dir, name, num_processes=2, **env):
  """``num_processes`` processes meeting at a fresh local coordinator, 4 devices
  in all (so one process is a distributed run too: gloo collectives); output
  to files.

  ``unlock_jax.main`` turns the persistent compilation cache off itself for
  multi-process CPU runs (conftest points every subprocess at one cache):
  process 0 would otherwise load programs process 1 compiled, and a gloo
  collective of process 1 received a message of another size and aborted.
  """
  import portpicker  # pylint: disable=g-import-not-at-top
  port = portpicker.pick_unused_port()
  return [_start([*argv_of(i), f"--coordinator_address=127.0.0.1:{port}",
                  f"--num_processes={num_processes}", f"--process_id={i}"],
                 log_dir / f"{name}.process{i}.out", num_devices=4 // num_processes, **env)
          for i in range(num_processes)]


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
  skew = _start_processes(lambda i: [sys.executable, "-c", _SKEW], logs, "skew",
                     JAX_ENABLE_COMPILATION_CACHE="false")  # not through main
  t0 = time.monotonic()
  single, = _start_processes(lambda i: _main_cmd(one, "generate," + STAGES), logs, "one",
                             num_processes=1)
  _watch([single], (one / "generate" / "summary.json").exists)
  two.mkdir()
  shutil.copytree(one / "data", two / "data", copy_function=os.link)  # one data set
  pair = _start_processes(lambda i: _main_cmd(two, "train_source"), logs, "train_source")
  _watch([single, *pair], _ended(pair))
  _watch([single], (one / "train_source" / "summary.json").exists)
  source = one / "train_source" / "checkpoints"
  pair = _start_processes(lambda i: _main_cmd(
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


def _assert_same_states(a_dir, b_dir):
  """Both runs' last checkpoints: the same step, tree and leaves, bit for bit;
  returns a's state."""
  step_a, a = _load_state(a_dir)
  step_b, b = _load_state(b_dir)
  assert step_a == step_b == 2
  assert sorted(a) == sorted(b)
  differ = [k for k in a if a[k].dtype != b[k].dtype or not np.array_equal(a[k], b[k])]
  assert not differ, (f"{len(differ)} of {len(a)} leaves differ, first "
                      f"{differ[0]}: max |one - two| "
                      f"{np.max(np.abs(a[differ[0]].astype(np.float64) - b[differ[0]]))}")
  return a


def _same_measurements(one_dir, two_dir):
  one = json.load(open(one_dir / "summary.json"))["final"]
  two = json.load(open(two_dir / "summary.json"))["final"]
  assert one and two == one


def test_skewed_processes_survive_the_first_barrier(runs):
  procs = runs["skew"]
  _watch(procs, _ended(procs), timeout=120)
  for p in procs:
    assert "sum 6.0" in p.log.read_text()  # 0+1+2+3: both processes' rows


def test_train_source_parameters_identical(runs):
  ck = lambda wd: wd / "train_source" / "checkpoints"
  _assert_same_states(ck(runs["one"]), ck(runs["two"]))
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
    got, want = (packed_labels.load_packed(str(d / "packed" / rel)) for d in (two, one))
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


def test_adapt_parameters_identical(runs):
  ck = lambda wd: wd / "adapt" / "checkpoints"
  one = _assert_same_states(ck(runs["one"]), ck(runs["two"]))
  _, source = _load_state(runs["one"] / "train_source" / "checkpoints")
  moved = [k for k in source if k.startswith("['params']")
           and not np.array_equal(one[k], source[k])]
  assert len(moved) > 100  # the adaptation did move the model
  _same_measurements(runs["one"] / "adapt", runs["two"] / "adapt")


_SUM = """
import sys
import jax, numpy as np
if len(sys.argv) > 2:
  jax.distributed.initialize(sys.argv[2], 1, 0)
from unlock_jax import sharding as shd
mesh = shd.make_mesh()
rng = np.random.default_rng(0)
x = rng.standard_normal((4, 4096)) * 10.0 ** rng.integers(-6, 6, (4, 4096))
x = x.astype(np.float32)
y = jax.jit(lambda a: a.sum(0), out_shardings=shd.replicated(mesh))(shd.put_array(x, mesh))
np.save(sys.argv[1], np.concatenate([x, np.asarray(y)[None]]))
"""


def _run_sum(out, *args):
  subprocess.run([sys.executable, "-c", _SUM, str(out), *args], cwd=REPO, env=_env(4),
                 check=True, timeout=300)
  return np.load(out)


def test_in_process_collectives_round_only(tmp_path):
  """A plain one-process run (XLA's in-process all-reduce) and a distributed
  one (gloo's ring) add the 4 devices' rows in another order; they may
  differ by rounding only: for any order, recursive summation of n floats
  errs by at most (n - 1) u / (1 - (n - 1) u) * sum |x_i| (Higham, Accuracy
  and Stability of Numerical Algorithms, 2002, eq. 4.4), u = 2^-24."""
  import portpicker  # pylint: disable=g-import-not-at-top
  plain = _run_sum(tmp_path / "plain.npy")
  gloo = _run_sum(tmp_path / "gloo.npy", f"127.0.0.1:{portpicker.pick_unused_port()}")
  x, y_plain, y_gloo = plain[:4], plain[4], gloo[4]
  np.testing.assert_array_equal(gloo[:4], x)
  exact = x.astype(np.float64).sum(0)
  u, n = 2.0 ** -24, x.shape[0]
  bound = (n - 1) * u / (1 - (n - 1) * u) * np.abs(x.astype(np.float64)).sum(0)
  for y in (y_plain, y_gloo):
    assert np.all(np.abs(y - exact) <= bound)
  # Not vacuous: the two orders do round differently here.
  assert np.any(y_plain != y_gloo)


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
