"""Records what produced a workdir: resolved config, git commit, packages, devices."""
import importlib.metadata
import os
import platform
import subprocess
import sys
import time

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


def record(workdir: str, stage: str, config) -> dict:
  """Writes ``<workdir>/provenance/<stage>.json`` and ``config.json`` (process 0)."""
  info = {
      "stage": stage,
      "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
      "argv": sys.argv,
      "git_commit": _git("rev-parse", "HEAD"),
      "git_dirty": bool(_git("status", "--porcelain", "--untracked-files=no")),
      "python": sys.version.split()[0],
      "platform": platform.platform(),
      "packages": _versions(),
      "process_index": jax.process_index(),
      "process_count": jax.process_count(),
      "devices": [str(d) for d in jax.devices()],
      "local_devices": [str(d) for d in jax.local_devices()],
  }
  if jax.process_index() == 0:
    fileio.atomic_write_json(os.path.join(workdir, "provenance", f"{stage}.json"), info)
    fileio.atomic_write_text(os.path.join(workdir, "provenance", f"{stage}.config.json"),
                             config.to_json_best_effort(indent=2) + "\n")
  return info
