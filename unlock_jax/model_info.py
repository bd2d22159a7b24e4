"""``model_config.json``: what a model folder records so that it can be used alone.

Orbax checkpoints hold arrays, not the architecture that gives them meaning.
Every folder of weights this project writes gets this file beside them: a
train run's ``checkpoints/`` folder (``train_source``, ``adapt``; it covers
every step folder in it), an ``export_source`` folder and a
``tools/convert_torch`` output. ``unlock_jax.load`` (``api.py``) reads it::

    {"format_version": 1,
     "model": {...},            # config.model, what amodalpass.build takes
     "image_size": [H, W],      # the panorama size the model predicts at
     "tau": [tau_m, tau_a],     # its panoptic fusion thresholds (report.TAU_*)
     "written_by": "train_source"}

Only this module's ``FORMAT_VERSION`` is read; another is refused, naming
the file.
"""
import importlib.util
import json
import os

import ml_collections

from unlock_jax import fileio

FILE = "model_config.json"
FORMAT_VERSION = 1


def panorama_size(config) -> tuple[int, int]:
  """The size ``predict`` resizes panoramas to: ``predict.image_size`` or the target's."""
  return tuple(int(v) for v in (config.predict.image_size or config.data.target.image_size))


def write(folder: str, model_cfg, image_size, tau, written_by: str) -> str:
  """Writes ``<folder>/model_config.json`` atomically; returns its path."""
  path = os.path.join(folder, FILE)
  model = model_cfg.to_dict() if hasattr(model_cfg, "to_dict") else dict(model_cfg)
  fileio.atomic_write_json(path, {
      "format_version": FORMAT_VERSION, "model": model,
      "image_size": [int(v) for v in image_size], "tau": [float(t) for t in tau],
      "written_by": written_by})
  return path


def find(path: str) -> str | None:
  """The ``model_config.json`` that describes the weights at ``path``, or None.

  ``path`` is a model folder (export, conversion, a run's ``checkpoints/``),
  whose own file counts, or one step folder of a run (``checkpoints/<step>``),
  which the file of its parent describes.
  """
  own = os.path.join(path, FILE)
  if fileio.isfile(own):
    return own
  parent = os.path.dirname(path.rstrip("/"))
  if os.path.basename(path.rstrip("/")).isdigit() and fileio.isfile(os.path.join(parent, FILE)):
    return os.path.join(parent, FILE)
  return None


def _tuples(x):
  """JSON lists back to the tuples the configs use (flax module fields must hash)."""
  if isinstance(x, dict):
    return {k: _tuples(v) for k, v in x.items()}
  if isinstance(x, list):
    return tuple(_tuples(v) for v in x)
  return x


def read(path: str) -> dict | None:
  """The record describing ``path`` (``find``), ``model`` as a ConfigDict; None if none.

  Raises ValueError naming the file if it is not a record this code reads.
  """
  where = find(path)
  if where is None:
    return None
  try:
    rec = json.loads(fileio.read_text(where))
  except ValueError as e:
    raise ValueError(f"{where} is not valid JSON ({e}); rewrite it or delete it and "
                     "pass the model's config to unlock_jax.load(config=...)") from e
  if not isinstance(rec, dict) or rec.get("format_version") != FORMAT_VERSION:
    version = rec.get("format_version") if isinstance(rec, dict) else None
    raise ValueError(f"{where} has format_version {version!r}; this code reads version "
                     f"{FORMAT_VERSION}. Delete it and pass the model's config to "
                     "unlock_jax.load(config=...)")
  missing = [k for k in ("model", "image_size", "tau") if k not in rec]
  if missing:
    raise ValueError(f"{where} has no {', '.join(missing)}; delete it and pass the "
                     "model's config to unlock_jax.load(config=...)")
  rec = dict(rec, path=where)
  rec["model"] = ml_collections.ConfigDict(_tuples(rec["model"]))
  rec["image_size"] = tuple(int(v) for v in rec["image_size"])
  rec["tau"] = tuple(float(t) for t in rec["tau"])
  return rec


def convert_layout_command(checkpoint: str, scan_blocks: bool) -> str:
  """The ``tools/convert_layout`` command line that rewrites the model folder
  ``checkpoint`` for a model with ``model.scan_blocks=scan_blocks``."""
  out = checkpoint.rstrip("/") + ("_scanned" if scan_blocks else "_unrolled")
  return (f"python -m unlock_jax.tools.convert_layout --checkpoint {checkpoint} "
          f"--out {out} --scan_blocks={str(bool(scan_blocks)).lower()}")


def config_from_file(spec: str) -> ml_collections.ConfigDict:
  """``configs/x.py[:arg]`` → its ``get_config(arg)`` (the file's own imports must resolve)."""
  path, _, arg = spec.partition(":")
  if not os.path.isfile(path):
    raise FileNotFoundError(f"config file {path} does not exist")
  mod_spec = importlib.util.spec_from_file_location("_unlock_jax_config", path)
  module = importlib.util.module_from_spec(mod_spec)
  mod_spec.loader.exec_module(module)
  return module.get_config(arg) if arg else module.get_config()
