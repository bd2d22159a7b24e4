"""Atomic file writes and workdir path templates, for local paths and URLs.

Every output is written to a temporary name in the destination folder and
renamed over the final name, so a killed process never leaves a half file.
Paths go through ``etils.epath``, so a workdir or data root may be a URL
(``gs://bucket/run`` on a TPU VM): epath hands those to ``tf.io.gfile`` (or
fsspec) and local paths to ``os``. On GCS the rename is a server-side copy;
the object a reader sees is still complete, because GCS publishes an object
only when its upload has finished.

The readers and listers below (``exists``, ``listdir``, ``walk``,
``read_bytes``, ``load_npz``, ...) call ``os`` directly for local paths, so
local behaviour and speed stay exactly those of ``os``, and epath for URLs.
"""
import io
import json
import os
import re
import shutil
import threading
from typing import Any, Iterator

from etils import epath
import numpy as np

_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


def is_url(path) -> bool:
  """True for ``scheme://...`` paths (gs://, s3://, ram://), which os.path must not touch."""
  return bool(_URL.match(os.fspath(path)))


def absolute(path: str) -> str:
  """Local paths made absolute; URLs returned untouched (abspath would mangle ``gs://b``)."""
  path = os.fspath(path)
  return path if is_url(path) else os.path.abspath(path)


def exists(path) -> bool:
  return os.path.exists(path) if not is_url(path) else epath.Path(path).exists()


def isdir(path) -> bool:
  return os.path.isdir(path) if not is_url(path) else epath.Path(path).is_dir()


def isfile(path) -> bool:
  """A file (not a folder); one stat on a URL file system."""
  if not is_url(path):
    return os.path.isfile(path)
  try:
    return not epath.Path(path).stat().is_directory
  except FileNotFoundError:
    return False


def getsize(path) -> int:
  return os.path.getsize(path) if not is_url(path) else int(epath.Path(path).stat().length)


def listdir(path) -> list[str]:
  """Names in a folder (GCS lists sub-folders as ``name/``: the slash is dropped)."""
  if not is_url(path):
    return os.listdir(path)
  return [p.name for p in epath.Path(path).iterdir()]


def names(folder) -> set[str] | None:
  """The names in ``folder`` (one listing: one request on GCS), or None if it is not a folder."""
  return set(listdir(folder)) if isdir(folder) else None


class Listing:
  """Whether files exist, from one cached listing per folder instead of a stat per file.

  Opening a data set checks that every file it references exists: on GCS one
  listing per folder is a few requests where a stat per file is thousands.
  """

  def __init__(self):
    self._names: dict = {}

  def has(self, path) -> bool:
    folder, name = os.path.split(os.fspath(path))
    if folder not in self._names:
      self._names[folder] = names(folder) or set()
    return name in self._names[folder]


def glob(folder, pattern: str) -> list[str]:
  """Sorted paths matching ``pattern`` (no ``**``) under ``folder``."""
  return sorted(os.fspath(p) for p in epath.Path(folder).glob(pattern))


def _bare(path: str) -> str:
  """``path`` without its scheme and outer slashes, to compare the roots that
  backends' walks return (tf.io.gfile keeps ``gs://``, fsspec drops it)."""
  return _URL.sub("", os.fspath(path)).strip("/")


def walk(top) -> Iterator[tuple[str, list[str], list[str]]]:
  """``os.walk`` over a local folder or a URL, yielding each folder as a path
  relative to ``top`` ("" for ``top`` itself) with its sub-folder and file names
  (remove names from the sub-folder list to skip them)."""
  top = os.fspath(top)
  if not is_url(top):
    for folder, dirs, files in os.walk(top):
      rel = os.path.relpath(folder, top)
      yield ("" if rel == "." else rel), dirs, files
    return
  if not epath.Path(top).is_dir():
    return  # as os.walk: nothing for a missing folder
  root = _bare(top)
  for folder, dirs, files in epath.Path(top).walk():
    rel = _bare(folder)[len(root):].strip("/")
    dirs[:] = [d.rstrip("/") for d in dirs]  # in place: callers may prune it, as with os.walk
    yield rel, dirs, list(files)


def open_file(path, mode: str = "rb"):
  """``open`` for local paths, ``epath.Path.open`` (seekable) for URLs."""
  if not is_url(path):
    return open(path, mode)  # pylint: disable=unspecified-encoding
  return epath.Path(path).open(mode)


def read_bytes(path) -> bytes:
  with open_file(path, "rb") as f:
    return f.read()


def read_text(path) -> str:
  return read_bytes(path).decode("utf-8")


def read_json(path) -> Any:
  return json.loads(read_bytes(path))


# numpy parses every .npy header with ast.literal_eval, and CPython 3.11
# before 3.11.8 can fail when two threads compile at once ("SystemError: AST
# constructor recursion depth mismatch", gh-106905). The adaptation input
# reads pseudo-labels and pool entries from several threads, so .npz reads
# go through this lock (the arrays are small; reads stay fast).
_NPZ_LOCK = threading.Lock()


def load_npz(source) -> dict[str, np.ndarray]:
  """Every array of an ``.npz`` (a path, a URL or its bytes), read under a lock.

  Thread-safe replacement for ``dict(np.load(...))`` (see ``_NPZ_LOCK``);
  never unpickles.
  """
  data = source if isinstance(source, (bytes, bytearray)) else None
  with _NPZ_LOCK:
    if data is None and not is_url(source):
      z = np.load(source, allow_pickle=False)
    else:
      z = np.load(io.BytesIO(data if data is not None else read_bytes(source)),
                  allow_pickle=False)
    with z:
      return {k: z[k] for k in z.files}


def remove(path) -> None:
  if not is_url(path):
    os.remove(path)
  else:
    epath.Path(path).unlink()


def rmtree(path) -> None:
  if not is_url(path):
    shutil.rmtree(path)
  else:
    epath.Path(path).rmtree()


def replace(src, dst) -> None:
  """``os.replace`` of a file or folder.

  On a URL file system (GCS) a folder is a set of objects: each is copied
  then the source deleted, so there a folder's replacement is not atomic.
  """
  if not is_url(src) and not is_url(dst):
    os.replace(src, dst)
    return
  if not isdir(src):
    epath.Path(src).replace(dst)
    return
  if exists(dst):
    rmtree(dst)
  for rel, _, files in walk(src):
    makedirs(os.path.join(dst, rel))
    for f in files:
      epath.Path(os.path.join(src, rel, f)).copy(os.path.join(dst, rel, f), overwrite=True)
  rmtree(src)


def makedirs(path: str) -> None:
  """``mkdir -p`` for local folders and URLs."""
  epath.Path(path).mkdir(parents=True, exist_ok=True)


def atomic_write_bytes(path: str, data: bytes) -> None:
  dest = epath.Path(path)
  dest.parent.mkdir(parents=True, exist_ok=True)
  # A plain open() (not mkstemp, which forces mode 0600) keeps the umask's
  # permissions; pid + thread id keep concurrent writers apart.
  tmp = dest.parent / f"{dest.name}.tmp{os.getpid()}-{threading.get_ident()}"
  try:
    with tmp.open("wb") as f:
      f.write(data)
    tmp.replace(dest)
  except BaseException:
    if tmp.exists():
      tmp.unlink()
    raise


def atomic_write_text(path: str, text: str) -> None:
  atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str, obj: Any) -> None:
  atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=_jsonable) + "\n")


def _jsonable(x):
  if hasattr(x, "tolist"):
    return x.tolist()
  return str(x)


def resolve(path_template: str, workdir: str) -> str:
  """Expands ``{workdir}`` (a local path or a URL) and, for local paths, ``~``."""
  path = str(path_template).replace("{workdir}", os.fspath(workdir))
  return path if is_url(path) else os.path.expanduser(path)
