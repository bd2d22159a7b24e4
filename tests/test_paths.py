"""URL workdirs (gs:// on TPU VMs): main passes them through, every stage's I/O goes
through fileio/epath, and generate..adapt run end to end on one.

No network: ``gs://`` is served offline by each of epath's two backends in
turn, pointed at an in-memory file system. ``tf`` is the backend epath uses
when TensorFlow is installed (as here and on TPU VMs): tf.io.gfile with
``gs://`` mapped onto TF's own ``ram://`` file system. ``fsspec`` is epath's
other backend, with fsspec's memory file system registered for ``gs``.
Results are read back through tf.io.gfile / the memory store directly, not
through the code under test.
"""
import glob
import http.server
import importlib
import io
import json
import logging as py_logging
import os
import re
import sys
import tempfile
import threading
import types
import urllib.parse
import zlib

import numpy as np
import pytest
from absl import flags
from absl import logging as absl_logging
from absl.testing import flagsaver
from etils import epath

from tests.support.fake_gcs import FakeGCS, _swap, _tf, gcs  # noqa: F401  (gcs: the fixture)
from unlock_jax import fileio
from unlock_jax import logfile

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STAGES = ("generate", "train_source", "evaluate")  # configs/synth/tiny.py's config.stage


class _GcsApi(http.server.BaseHTTPRequestHandler):
  """The few calls of the GCS JSON API that TensorStore's ``gcs`` driver makes for
  Orbax (object and byte-range reads, uploads, deletes, generation preconditions), served
  from the fixture's in-memory ``gs://`` through epath, so Orbax's arrays and
  its metadata land in one store. A generation is a hash of the object's bytes."""
  protocol_version = "HTTP/1.1"
  unsupported = []  # requests outside that subset; a test asserts there are none

  def log_message(self, *args):
    pass

  def _reply(self, code, body=b"", headers=()):
    self.send_response(code)
    for k, v in headers:
      self.send_header(k, v)
    self.send_header("Content-Length", str(len(body)))
    self.end_headers()
    self.wfile.write(body)

  def _json(self, code, obj):
    self._reply(code, json.dumps(obj).encode(), [("Content-Type", "application/json")])

  def _target(self):
    """``(gs:// URL of the object, query)``; None for a request this fake does not serve."""
    url = urllib.parse.urlsplit(self.path)
    query = dict(urllib.parse.parse_qsl(url.query))
    parts = url.path.split("/")  # "", [upload,] storage, v1, b, <bucket>, o[, <object>]
    if parts[1] == "upload" and parts[2:4] == ["storage", "v1"] and len(parts) == 7:
      return f"gs://{parts[5]}/{query.get('name', '')}", query
    if parts[1:3] == ["storage", "v1"] and len(parts) == 7 and parts[6]:
      return f"gs://{parts[4]}/{urllib.parse.unquote(parts[6])}", query
    self._unsupported()
    return None

  @staticmethod
  def _load(url):
    try:
      return epath.Path(url).read_bytes() if not epath.Path(url).is_dir() else None
    except FileNotFoundError:
      return None

  @staticmethod
  def _generation(data):
    return 0 if data is None else zlib.crc32(data) + (len(data) << 32) + 1

  def _precondition(self, query, data):
    gen = self._generation(data)
    if "ifGenerationMatch" in query and int(query["ifGenerationMatch"]) != gen:
      return 412
    if "ifGenerationNotMatch" in query and int(query["ifGenerationNotMatch"]) == gen:
      return 304
    return None

  def do_GET(self):  # pylint: disable=invalid-name
    target = self._target()
    if target is None:
      return
    url, query = target
    data = self._load(url)
    if data is None:
      return self._json(404, {"error": {"code": 404, "message": f"no {url}"}})
    gen = [("x-goog-generation", str(self._generation(data)))]
    if (code := self._precondition(query, data)) is not None:
      return self._reply(code, headers=gen)
    if query.get("alt") != "media":
      return self._unsupported()
    if "Range" not in self.headers:
      return self._reply(200, data, gen)
    match = re.fullmatch(r"bytes=(\d*)-(\d*)", self.headers["Range"])
    if match is None or match.groups() == ("", ""):
      return self._unsupported()
    first, last = match.groups()
    start = int(first) if first else max(0, len(data) - int(last))  # bytes=-n: the last n
    stop = min(len(data), int(last) + 1) if first and last else len(data)
    if start >= len(data):
      return self._reply(416, headers=gen)
    self._reply(206, data[start:stop], gen + [
        ("Content-Range", f"bytes {start}-{stop - 1}/{len(data)}")])

  def _unsupported(self):
    # 400, not 501: TensorStore retries 5xx for minutes before it gives up.
    self.unsupported.append(f"{self.command} {self.path} Range={self.headers.get('Range')}")
    self._json(400, {"error": {"code": 400, "message": "not in this fake"}})

  def do_POST(self):  # pylint: disable=invalid-name
    body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
    target = self._target()
    if target is None:
      return
    url, query = target
    if query.get("uploadType") != "media":
      return self._unsupported()
    if (code := self._precondition(query, self._load(url))) is not None:
      return self._json(code, {"error": {"code": code}})
    epath.Path(url).parent.mkdir(parents=True, exist_ok=True)
    epath.Path(url).write_bytes(body)
    self._json(200, {"name": query["name"], "generation": str(self._generation(body)),
                     "size": str(len(body))})

  def do_DELETE(self):  # pylint: disable=invalid-name
    target = self._target()
    if target is None:
      return
    url, query = target
    data = self._load(url)
    if data is None:
      return self._json(404, {"error": {"code": 404}})
    if (code := self._precondition(query, data)) is not None:
      return self._json(code, {"error": {"code": code}})
    epath.Path(url).unlink()
    self._reply(204)


_GCS_API = []


@pytest.fixture
def orbax_on_gcs(gcs, monkeypatch):
  """Orbax checkpoints on the in-memory ``gs://``.

  TensorStore's ``gcs`` driver (which writes Orbax's arrays) speaks HTTP to
  the GCS JSON API, not to epath, and TensorStore's ``memory`` kvstore cannot
  stand in for it: Orbax lists and reads the same folders through epath (it
  found no per-process OCDBT folders to merge, so restores failed). So the
  driver is pointed (``TENSORSTORE_GCS_HTTP_URL``) at a local server
  (:class:`_GcsApi`) that serves the fixture's store. Orbax's bucket query
  (hierarchical namespace, through google-cloud-storage, which is not
  installed here) gets a fake client answering "flat bucket". TensorBoard
  event files, written by TF's own file system layer (natively gs:// on a
  TPU VM), go to the same path on ``ram://``.
  """
  if not _GCS_API:  # one server per test process; it serves whichever fake is active
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _GcsApi)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    _GCS_API.append(server)
  monkeypatch.setenv("TENSORSTORE_GCS_HTTP_URL",
                     f"http://127.0.0.1:{_GCS_API[0].server_address[1]}")
  monkeypatch.setenv("GOOGLE_AUTH_TOKEN_FOR_TESTING", "offline")
  storage = types.ModuleType("google.cloud.storage")
  storage.Client = lambda: types.SimpleNamespace(
      get_bucket=lambda name: types.SimpleNamespace(hierarchical_namespace_enabled=False))
  monkeypatch.setitem(sys.modules, "google.cloud.storage", storage)
  tf = _tf()
  create = tf.summary.create_file_writer
  monkeypatch.setattr(tf.summary, "create_file_writer",
                      lambda logdir, *a, **k: create(_swap(os.fspath(logdir), "gs://", "ram://"),
                                                     *a, **k))
  _GcsApi.unsupported.clear()
  yield gcs
  assert not _GcsApi.unsupported, _GcsApi.unsupported


def test_is_url_and_absolute():
  for url in ("gs://bucket/run", "s3://b/x", "ram://x", "gcs://b"):
    assert fileio.is_url(url) and fileio.absolute(url) == url
  for local in ("runs/x", "/tmp/x", "./gs:/bucket", "C:run"):
    assert not fileio.is_url(local)
  assert fileio.absolute("runs/x") == os.path.join(os.getcwd(), "runs", "x")


def test_atomic_writes_on_a_url_file_system(gcs):
  url = f"{gcs.bucket}/run/sub/results.json"
  fileio.atomic_write_json(url, {"b": [1, 2], "a": 1})
  assert json.loads(gcs.read(url)) == {"a": 1, "b": [1, 2]}
  fileio.atomic_write_json(url, {"a": 2})  # overwrite
  assert json.loads(gcs.read(url)) == {"a": 2}
  fileio.atomic_write_bytes(f"{gcs.bucket}/run/blob.bin", b"\x00\xff")
  assert gcs.read(f"{gcs.bucket}/run/blob.bin") == b"\x00\xff"
  # A write that fails half way leaves the old file and no temporary file.
  with pytest.raises(TypeError):
    fileio.atomic_write_bytes(url, object())
  assert json.loads(gcs.read(url)) == {"a": 2}
  assert gcs.listdir(f"{gcs.bucket}/run/sub") == ["results.json"]
  assert gcs.listdir(f"{gcs.bucket}/run") == ["blob.bin", "sub"]
  fileio.makedirs(f"{gcs.bucket}/run/empty/deeper")
  assert gcs.isdir(f"{gcs.bucket}/run/empty/deeper")


def test_atomic_write_local_keeps_umask_permissions(tmp_path):
  path = tmp_path / "a" / "b.json"
  fileio.atomic_write_json(str(path), {"x": 1})
  assert json.loads(path.read_text()) == {"x": 1}
  umask = os.umask(0)
  os.umask(umask)
  assert path.stat().st_mode & 0o777 == 0o666 & ~umask
  assert os.listdir(path.parent) == ["b.json"]


def test_workdir_template_with_a_url_workdir(gcs):
  from configs.synth import tiny  # pylint: disable=g-import-not-at-top
  workdir = f"{gcs.bucket}/run"
  assert fileio.resolve("{workdir}/data/BlendPASS", workdir) == workdir + "/data/BlendPASS"
  assert fileio.resolve("~/data", workdir) == os.path.expanduser("~/data")
  assert fileio.resolve("gs://other/~x", workdir) == "gs://other/~x"  # no ~ expansion in URLs
  templates = []

  def walk(node):
    for value in node.values():
      if hasattr(value, "values"):
        walk(value)
      elif isinstance(value, str) and "{workdir}" in value:
        templates.append(value)
  walk(tiny.get_config())
  assert len(templates) >= 10  # data roots, checkpoints, output folders, evals
  for t in templates:
    assert fileio.resolve(t, workdir) == workdir + t[len("{workdir}"):]
  # A templated output path is writable on the URL file system.
  out = fileio.resolve("{workdir}/evaluate/results.json", workdir)
  fileio.atomic_write_json(out, {"ok": True})
  assert json.loads(gcs.read(f"{workdir}/evaluate/results.json")) == {"ok": True}


def _run_main(monkeypatch, workdir, cwd=REPO):
  """main.main in this process with the stages' run functions replaced by recorders."""
  from unlock_jax import main as main_lib  # pylint: disable=g-import-not-at-top
  seen = []
  for stage in STAGES:
    module = importlib.import_module(f"unlock_jax.stages.{stage}")
    monkeypatch.setattr(module, "run",
                        lambda config, wd, stage=stage: seen.append((stage, wd)))
  monkeypatch.chdir(cwd)
  with flagsaver.flagsaver():
    flags.FLAGS(["main", f"--config={REPO}/configs/synth/tiny.py", f"--workdir={workdir}"])
    main_lib.main(["main"])
  return seen


def test_main_passes_a_gs_workdir_to_the_stages_untouched(gcs, monkeypatch):
  workdir = f"{gcs.bucket}/runs/k2b"
  seen = _run_main(monkeypatch, workdir)
  assert seen == [(stage, workdir) for stage in STAGES]
  assert gcs.isdir(workdir)  # created on the URL file system, not under ./gs:/


def test_main_makes_a_local_workdir_absolute(tmp_path, monkeypatch):
  seen = _run_main(monkeypatch, "runs/x", cwd=tmp_path)
  assert seen == [(stage, os.path.join(str(tmp_path), "runs", "x")) for stage in STAGES]
  assert (tmp_path / "runs" / "x").is_dir()


def test_file_helpers_on_a_url_file_system_and_locally(gcs, tmp_path):
  buf = io.BytesIO()
  np.savez(buf, x=np.arange(5))
  files = {"a/b/one.npz": buf.getvalue(), "a/two.json": b'{"k": [1, 2]}', "three.txt": b"3"}
  for root in (str(tmp_path / "run"), f"{gcs.bucket}/run"):
    for rel, data in files.items():
      fileio.atomic_write_bytes(f"{root}/{rel}", data)
    listed = [os.path.join(rel, f) for rel, _, fs in fileio.walk(root) for f in fs]
    assert sorted(listed) == sorted(files)
    assert sorted(fileio.listdir(f"{root}/a")) == ["b", "two.json"]
    assert fileio.isdir(f"{root}/a/b") and not fileio.isdir(f"{root}/three.txt")
    assert fileio.isfile(f"{root}/three.txt") and not fileio.isfile(f"{root}/a")
    assert not fileio.isfile(f"{root}/none") and not fileio.exists(f"{root}/none")
    assert list(fileio.walk(f"{root}/none")) == []
    assert fileio.getsize(f"{root}/a/two.json") == len(files["a/two.json"])
    assert fileio.read_json(f"{root}/a/two.json") == {"k": [1, 2]}
    np.testing.assert_array_equal(fileio.load_npz(f"{root}/a/b/one.npz")["x"], np.arange(5))
    with fileio.open_file(f"{root}/a/two.json") as f:  # partial reads, as the store's
      assert f.read(4) == b'{"k"'
      f.seek(0, os.SEEK_END)
      assert f.tell() == 13
    with pytest.raises(FileNotFoundError):
      fileio.read_bytes(f"{root}/none")
    fileio.replace(f"{root}/a", f"{root}/c")  # a folder
    fileio.remove(f"{root}/three.txt")
    assert sorted(fileio.listdir(root)) == ["c"]
  # The URL tree as the fake store holds it, read without fileio.
  url = f"{gcs.bucket}/run"
  assert gcs.files(url) == ["c/b/one.npz", "c/two.json"]
  assert gcs.read(f"{url}/c/b/one.npz") == files["a/b/one.npz"]
  fileio.rmtree(f"{url}/c")
  assert gcs.files(url) == []


def test_stage_log_on_a_url_workdir_appends_through_a_temporary_file(gcs, tmp_path,
                                                                      monkeypatch):
  monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
  old_level = py_logging.getLogger().level
  py_logging.getLogger().setLevel(py_logging.INFO)
  workdir = f"{gcs.bucket}/run"
  try:
    with logfile.stage_log(workdir, "opll") as path:
      absl_logging.info("first run")
      print("a table")
      assert len(os.listdir(tmp_path)) == 1  # the local file the handler writes
    with logfile.stage_log(workdir, "opll"):  # a resumed run appends
      absl_logging.warning("second run")
  finally:
    py_logging.getLogger().setLevel(old_level)
  assert path == f"{workdir}/logs/opll.log"
  body = [line.split("] ", 1)[-1] for line in gcs.read(path).decode().splitlines()]
  assert [b for b in body if not b.startswith("Stage opll logs to")] == [
      "first run", "a table", "second run"]
  assert os.listdir(tmp_path) == []  # copied to the URL, then removed


def test_checkpoint_folders_reach_orbax_untouched(monkeypatch):
  from unlock_jax import checkpoint  # pylint: disable=g-import-not-at-top
  seen = []

  class Recorder:
    def __init__(self, directory, options=None):
      seen.append(directory)

  monkeypatch.setattr(checkpoint.ocp, "CheckpointManager", Recorder)
  monkeypatch.setitem(sys.modules, "google.cloud.storage", types.ModuleType("storage"))
  url = "gs://bucket/run/train_source/checkpoints"
  assert checkpoint.Checkpointer(url).directory == url
  assert seen == [url]
  # Without google-cloud-storage Orbax cannot list a gs:// folder: a clear error first.
  monkeypatch.setitem(sys.modules, "google.cloud.storage", None)
  with pytest.raises(ImportError, match="google-cloud-storage"):
    checkpoint.Checkpointer(url)
  assert seen == [url]


def test_stages_run_with_a_gs_workdir(orbax_on_gcs, tmp_path, monkeypatch):
  """generate..adapt through main on an in-memory gs:// workdir, data local.

  The ``fsspec`` backend skips ``evaluate`` and ``adapt`` (their file I/O is
  that of ``train_source`` and ``opll``: checkpoints, summary, packed labels)
  to save ~15 s of CPU. Every output (summaries, results, prediction store, OPLL thresholds and
  labels, ADCL pool, checkpoints, logs, provenance) is read back from the
  fake store directly; nothing may land in the working directory or under a
  local ``gs:`` folder. With ``tf``, TensorBoard's ``ram://`` is that store.
  """
  from configs.synth import tiny  # pylint: disable=g-import-not-at-top
  from unlock_jax import main as main_lib  # pylint: disable=g-import-not-at-top
  gcs = orbax_on_gcs
  workdir, data, cwd = f"{gcs.bucket}/run", str(tmp_path / "data"), tmp_path / "cwd"
  cwd.mkdir()
  monkeypatch.chdir(cwd)
  stages = ("generate", "train_source", "evaluate", "predict", "opll", "adcl_pool", "adapt")
  if gcs.kind == "fsspec":
    stages = tuple(s for s in stages if s not in ("evaluate", "adapt"))
  roots = {"synthpass.out_dir": data, "data.source.root": f"{data}/KITTI360_APS",
           "data.target.root": f"{data}/BlendPASS",
           "evals.source_val.root": f"{data}/KITTI360_APS",
           "evals.target_val.root": f"{data}/BlendPASS"}
  (tmp_path / "tmp").mkdir()
  monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))  # logfile's local copies
  argv = ["main", f"--config={REPO}/configs/synth/tiny.py:steps=2",
          f"--workdir={workdir}", f"--config.stage={','.join(stages)}",
          *(f"--config.{k}={v}" for k, v in roots.items())]
  monkeypatch.setattr(sys, "argv", argv)  # config_flags reads the overrides there
  for stage in stages:  # flags their imports define (grain's) must outlive the flagsaver
    importlib.import_module(f"unlock_jax.stages.{stage}")
  old_level = py_logging.getLogger().level
  py_logging.getLogger().setLevel(py_logging.INFO)  # absl's level under app.run
  try:
    with flagsaver.flagsaver():
      flags.FLAGS(argv)
      main_lib.main(["main"])
  finally:
    py_logging.getLogger().setLevel(old_level)

  files = set(gcs.files(workdir))
  for stage in stages:
    assert len([f for f in files if f.startswith(f"provenance/{stage}/")]) == 1, stage
    assert f"Stage {stage} logs to {workdir}/logs/{stage}.log" in gcs.read(
        f"{workdir}/logs/{stage}.log").decode()
  opll_record = next(f for f in files if f.startswith("provenance/opll/"))
  assert json.loads(gcs.read(f"{workdir}/{opll_record}"))["stage"] == "opll"
  assert json.loads(gcs.read(f"{workdir}/opll/fingerprint.json"))["stage"] == "opll"
  assert json.loads(gcs.read(f"{workdir}/generate/summary.json"))
  assert os.path.isdir(os.path.join(data, "BlendPASS"))  # the data stay local
  for run in {"train_source", "adapt"} & set(stages):  # Orbax: arrays via TensorStore
    assert json.loads(gcs.read(f"{workdir}/{run}/summary.json"))["step"] == 2
    assert {f"{run}/checkpoints/2/commit_success.txt", f"{run}/checkpoints/2/state/_sharding",
            f"{run}/checkpoints/2/data_iter/process_0-of-1.json"} <= files
  if "evaluate" in stages:  # the checkpoint restored from the URL
    results = json.loads(gcs.read(f"{workdir}/evaluate/results.json"))
    assert results["checkpoint"] == f"{workdir}/train_source/checkpoints"
    assert results["step"] == 2 and "target_val/mIoU" in results["results"]

  num = tiny.get_config().synthpass.num_target["train"]
  entries = sorted(f for f in files if f.startswith("predict/entries/"))
  assert len(entries) == num and all(f.endswith(".pred") for f in entries)
  assert json.loads(gcs.read(f"{workdir}/predict/meta.json"))["checkpoint"] == (
      f"{workdir}/train_source/checkpoints")
  th = json.loads(gcs.read(f"{workdir}/opll/thresholds.json"))
  assert set(th) == {"semantic", "modal", "amodal", "fingerprint"}
  packed = sorted(f for f in files if f.startswith("opll/packed/"))
  assert [p[len("opll/packed/"):-len(".npz")] for p in packed] == [
      e[len("predict/entries/"):-len(".pred")] for e in entries]
  assert "opll/quality.json" in files and "opll/prototypes.npz" in files
  assert any(f.startswith("opll/OPLL/semantic/") for f in files)
  assert len([f for f in files if f.startswith("opll/pictures/")]) == 2  # num_pictures
  assert "adcl" in json.loads(gcs.read(f"{workdir}/adcl_pool/thresholds.json"))
  with np.load(io.BytesIO(gcs.read(f"{workdir}/adcl_pool/pool_index.npz"))) as z:
    assert z["classes"].shape == z["names"].shape
  assert len([f for f in files if f.startswith("adcl_pool/shards/")]) == num
  events = _tf().io.gfile.glob(f"ram://{workdir[5:]}/train_source/events.out.tfevents.*")
  assert events  # TensorBoard scalars (ram:// stands for gs:// here)

  assert os.listdir(cwd) == [] and not os.path.exists(os.path.join(REPO, "gs:"))
  assert sorted(os.listdir(tmp_path)) == ["cwd", "data", "tmp"]
  assert not glob.glob(str(tmp_path / "tmp" / "unlock_jax-*"))  # copied to the URL, removed
