"""Atomic file writes and workdir path templates, for local paths and URLs.

Every output is written to a temporary name in the destination folder and
renamed over the final name, so a killed process never leaves a half file.
Paths go through ``etils.epath``, so a workdir or data root may be a URL
(``gs://bucket/run`` on a TPU VM): epath hands those to ``tf.io.gfile`` (or
fsspec) and local paths to ``os``. On GCS the rename is a server-side copy;
the object a reader sees is still complete, because GCS publishes an object
only when its upload has finished.
"""
import json
import os
import re
import threading
from typing import Any

from etils import epath

_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


def is_url(path) -> bool:
  """True for ``scheme://...`` paths (gs://, s3://, ram://), which os.path must not touch."""
  return bool(_URL.match(os.fspath(path)))


def absolute(path: str) -> str:
  """Local paths made absolute; URLs returned untouched (abspath would mangle ``gs://b``)."""
  path = os.fspath(path)
  return path if is_url(path) else os.path.abspath(path)


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
