"""URL workdirs (gs:// on TPU VMs): main passes them through, fileio writes through epath.

No network: ``gs://`` is served offline by each of epath's two backends in
turn, pointed at an in-memory file system. ``tf`` is the backend epath uses
when TensorFlow is installed (as here and on TPU VMs): tf.io.gfile with
``gs://`` mapped onto TF's own ``ram://`` file system. ``fsspec`` is epath's
other backend, with fsspec's memory file system registered for ``gs``.
Results are read back through tf.io.gfile / the memory store directly, not
through the code under test.
"""
import json
import os
import sys
import uuid

import pytest
from absl import flags
from absl.testing import flagsaver
from etils import epath
from etils.epath import backend as epath_backend
from etils.epath import gpath
from fsspec.implementations.memory import MemoryFileSystem

from unlock_jax import fileio

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STAGES = ("generate", "train_source", "evaluate")  # configs/synth/tiny.py's config.stage


def _tf():
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  return tf


class _RamGfile:
  """tf.io.gfile with every ``gs://`` argument rewritten to ``ram://``."""

  def __getattr__(self, name):
    fn = getattr(_tf().io.gfile, name)

    def call(*args, **kwargs):
      ram = lambda x: "ram://" + x[5:] if isinstance(x, str) and x.startswith("gs://") else x
      return fn(*map(ram, args), **{k: ram(v) for k, v in kwargs.items()})
    return call


class _MemoryGCS(MemoryFileSystem):
  """fsspec's memory file system answering to gs://, with its own store."""
  protocol = ("gs", "gcs")
  store = {}
  pseudo_dirs = [""]

  @classmethod
  def _strip_protocol(cls, path):
    path = str(path)
    for prefix in ("gs://", "gcs://"):
      if path.startswith(prefix):
        path = path[len(prefix):]
    path = path.strip("/")
    return "/" + path if path else ""


class FakeGCS:
  """Reads objects back without epath: ``read(url)``, ``listdir(url)``, ``isdir(url)``."""

  def __init__(self, kind):
    self.kind = kind
    self.bucket = f"gs://test-{uuid.uuid4().hex[:12]}"

  def read(self, url):
    if self.kind == "tf":
      with _tf().io.gfile.GFile("ram://" + url[5:], "rb") as f:
        return f.read()
    return bytes(_MemoryGCS.store[_MemoryGCS._strip_protocol(url)].getvalue())

  def listdir(self, url):
    if self.kind == "tf":
      return sorted(_tf().io.gfile.listdir("ram://" + url[5:]))
    prefix = _MemoryGCS._strip_protocol(url) + "/"
    return sorted({k[len(prefix):].split("/")[0] for k in _MemoryGCS.store
                   if k.startswith(prefix)})

  def isdir(self, url):
    if self.kind == "tf":
      return _tf().io.gfile.isdir("ram://" + url[5:])
    path = _MemoryGCS._strip_protocol(url)
    return path in _MemoryGCS.pseudo_dirs or any(k.startswith(path + "/")
                                                 for k in _MemoryGCS.store)


@pytest.fixture(params=["tf", "fsspec"])
def gcs(request, monkeypatch):
  """``gs://`` served from memory by the named epath backend."""
  monkeypatch.setattr(gpath, "_is_zonal_gcs_bucket", lambda bucket: False)
  if request.param == "tf":
    monkeypatch.setattr(gpath, "_is_tf_installed", lambda: True)
    monkeypatch.setattr(type(epath_backend.tf_backend), "gfile",
                        property(lambda self: _RamGfile()))
  else:
    monkeypatch.setattr(gpath, "_is_tf_installed", lambda: False)
    monkeypatch.setitem(sys.modules["fsspec.registry"]._registry, "gcs", _MemoryGCS)
    get_fs = type(epath_backend.fsspec_backend)._get_filesystem
    get_fs.cache_clear()
    request.addfinalizer(get_fs.cache_clear)
  fake = FakeGCS(request.param)
  assert type(epath.Path(fake.bucket)._backend).__name__ == {
      "tf": "_TfBackend", "fsspec": "_FileSystemSpecBackend"}[request.param]
  return fake


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
  import importlib  # pylint: disable=g-import-not-at-top
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
