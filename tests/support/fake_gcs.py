"""``gs://`` served from memory, for tests of code that takes URL roots (no network).

Shared by tests/test_paths.py (workdirs) and tests/test_data_urls.py (data
roots). Each of epath's two backends serves ``gs://`` in
turn: ``tf`` (what epath uses when TensorFlow is installed, as on TPU VMs),
tf.io.gfile with ``gs://`` mapped onto TF's own ``ram://`` file system; and
``fsspec``, with fsspec's memory file system registered for ``gs``. ``FakeGCS``
reads and writes objects without epath, so results are checked, and inputs
uploaded, independently of the code under test. Use it as
``from tests.support.fake_gcs import gcs`` (the fixture) in a test module.
"""
import os
import sys
import types
import uuid

import pytest
from etils import epath
from etils.epath import backend as epath_backend
from etils.epath import gpath
from fsspec.implementations.memory import MemoryFileSystem


def _tf():
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  return tf


def _swap(x, old, new):
  """``x`` with the scheme ``old`` replaced by ``new`` in strings, lists, tuples and generators."""
  if isinstance(x, str):
    return new + x[len(old):] if x.startswith(old) else x
  if isinstance(x, (list, tuple)):
    return type(x)(_swap(e, old, new) for e in x)
  if isinstance(x, types.GeneratorType):  # walk()
    return (_swap(e, old, new) for e in x)
  return x


class _RamGfile:
  """tf.io.gfile with ``gs://`` arguments rewritten to ``ram://``, and returned paths back
  (glob returns full paths). Opening an existing file for writing truncates it,
  as on GCS (TF's ram:// appends)."""

  def __getattr__(self, name):
    fn = getattr(_tf().io.gfile, name)

    def call(*args, **kwargs):
      args = _swap(args, "gs://", "ram://")
      kwargs = {k: _swap(v, "gs://", "ram://") for k, v in kwargs.items()}
      mode = kwargs.get("mode") or (args[1] if len(args) > 1 else "r")
      if name == "GFile" and mode.startswith("w") and _tf().io.gfile.exists(args[0]):
        _tf().io.gfile.remove(args[0])
      return _swap(fn(*args, **kwargs), "ram://", "gs://")
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
  """Objects read and written without epath: ``read``, ``write``, ``upload``, ``listdir``."""

  def __init__(self, kind):
    self.kind = kind
    self.bucket = f"gs://test-{uuid.uuid4().hex[:12]}"

  def read(self, url):
    if self.kind == "tf":
      with _tf().io.gfile.GFile("ram://" + url[5:], "rb") as f:
        return f.read()
    return bytes(_MemoryGCS.store[_MemoryGCS._strip_protocol(url)].getvalue())

  def write(self, url, data: bytes):
    if self.kind == "tf":
      ram = "ram://" + url[5:]
      _tf().io.gfile.makedirs(os.path.dirname(ram))
      if _tf().io.gfile.exists(ram):
        _tf().io.gfile.remove(ram)
      with _tf().io.gfile.GFile(ram, "wb") as f:
        f.write(data)
    else:
      with _MemoryGCS().open(url, "wb") as f:
        f.write(data)

  def upload(self, local_dir, url):
    """Copies every file under ``local_dir`` to ``url`` (same relative paths)."""
    for folder, _, files in os.walk(local_dir):
      for f in files:
        rel = os.path.relpath(os.path.join(folder, f), local_dir)
        with open(os.path.join(folder, f), "rb") as fh:
          self.write(f"{url}/{rel}", fh.read())

  def listdir(self, url):
    if self.kind == "tf":
      return sorted(n.rstrip("/") for n in _tf().io.gfile.listdir("ram://" + url[5:]))
    prefix = _MemoryGCS._strip_protocol(url) + "/"
    return sorted({k[len(prefix):].split("/")[0] for k in _MemoryGCS.store
                   if k.startswith(prefix)})

  def files(self, url):
    """Relative paths of every file under ``url``, sorted."""
    if self.kind == "tf":
      root = "ram://" + url[5:]
      return sorted(os.path.join(d, f)[len(root) + 1:]
                    for d, _, fs in _tf().io.gfile.walk(root) for f in fs)
    prefix = _MemoryGCS._strip_protocol(url) + "/"
    return sorted(k[len(prefix):] for k in _MemoryGCS.store if k.startswith(prefix))

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
