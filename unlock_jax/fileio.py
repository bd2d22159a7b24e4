"""Atomic file writes and workdir path templates.

Every output is written to a temporary name in the destination folder and
renamed over the final name, so a killed process never leaves a half file.
"""
import json
import os
import threading
from typing import Any


def atomic_write_bytes(path: str, data: bytes) -> None:
  folder = os.path.dirname(os.path.abspath(path))
  os.makedirs(folder, exist_ok=True)
  # A plain open() (not mkstemp, which forces mode 0600) keeps the umask's
  # permissions; pid + thread id keep concurrent writers apart.
  tmp = f"{path}.tmp{os.getpid()}-{threading.get_ident()}"
  try:
    with open(tmp, "wb") as f:
      f.write(data)
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.remove(tmp)
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
  """Expands ``{workdir}`` and ``~`` in a configured path."""
  return os.path.expanduser(str(path_template).replace("{workdir}", workdir))
