"""Records what ran: one file per stage invocation, never overwritten.

``<workdir>/provenance/<stage>/<UTC time>-p<pid>.json`` holds the resolved
config, argv, git commit, package versions and devices of that invocation,
and, from ``fingerprint.begin``, the fingerprint of the outputs it resumed or
started (``fingerprint``, ``status``: fresh, resume or overwrite, ``folder``,
the folders ``overwrite`` deleted). A refused run records nothing. What made
the outputs in a folder is its ``fingerprint.json``; the provenance files
say which invocations wrote there, and with what code.
"""
import datetime
import importlib.metadata
import json
import os
import platform
import subprocess
import sys

import jax

from unlock_jax import fileio

_PACKAGES = ("jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "grain",
             "clu", "ml-collections", "numpy", "tensorflow-datasets",
             "tensorflow-cpu", "pycocotools")


def _git(*args) -> str:
  here = os.path.dirname(os.path.abspath(__file__))
  try:
    return subprocess.run(["git", *args], cwd=here, capture_output=True,
                          text=True, timeout=10, check=True).stdout.strip()
  except (OSError, subprocess.SubprocessError):
    return "unknown"


def _versions() -> dict:
  out = {}
  for name in _PACKAGES:
    try:
      out[name] = importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
      out[name] = None
  return out


def records(workdir: str, stage: str) -> list[str]:
  """Paths of ``stage``'s provenance records, oldest first."""
  folder = os.path.join(workdir, "provenance", stage)
  if not fileio.isdir(folder):
    return []
  return [os.path.join(folder, n) for n in sorted(fileio.listdir(folder))
          if n.endswith(".json")]


def record(workdir: str, stage: str, config, fingerprint=None) -> dict:
  """Writes this invocation's record (process 0) and returns it."""
  now = datetime.datetime.now(datetime.timezone.utc)
  info = {
      "stage": stage,
      "time": now.isoformat(timespec="seconds"),
      "argv": sys.argv,
      "git_commit": _git("rev-parse", "HEAD"),
      "git_dirty": bool(_git("status", "--porcelain", "--untracked-files=no")),
      "python": sys.version.split()[0],
      "platform": platform.platform(),
      "packages": _versions(),
      "process_count": jax.process_count(),
      "devices": [str(d) for d in jax.devices()],
      "local_devices": [str(d) for d in jax.local_devices()],
  }
  if fingerprint is not None:
    info.update(fingerprint=fingerprint.hash, status=fingerprint.status,
                folder=fingerprint.folder, deleted=list(fingerprint.deleted))
  info["config"] = json.loads(config.to_json_best_effort())
  if jax.process_index() == 0:
    # Sorted by name = by time; the pid keeps two invocations in one second apart.
    name = f"{now.strftime('%Y%m%dT%H%M%S.%fZ')}-p{os.getpid()}.json"
    fileio.atomic_write_json(os.path.join(workdir, "provenance", stage, name), info)
  return info
