"""Configs are data: building any config under configs/ imports no JAX, Flax or model code."""
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HEAVY = ("jax", "flax", "optax", "orbax", "tensorflow", "grain", "unlock_jax.models.amodalpass",
         "unlock_jax.evaluation.report", "unlock_jax.train.optim")
# Arguments a config needs to build (own_panoramas refuses to run without its folder).
ARGS = {"configs.own_panoramas": "images=/tmp/panoramas"}

_PROBE = r"""
import importlib, json, pkgutil, sys
import configs
names = sorted(m.name for m in pkgutil.walk_packages(configs.__path__, "configs."))
args = json.loads(sys.argv[1])
built = []
for name in names:
  mod = importlib.import_module(name)
  if hasattr(mod, "get_config"):
    mod.get_config(args.get(name))
    built.append(name)
print(json.dumps({"built": built, "loaded": sorted(sys.modules)}))
"""


def test_no_config_imports_jax():
  import json  # pylint: disable=g-import-not-at-top
  out = subprocess.run([sys.executable, "-c", _PROBE, json.dumps(ARGS)], cwd=ROOT,
                       capture_output=True, text=True, check=True, timeout=120)
  result = json.loads(out.stdout.strip().splitlines()[-1])
  # Every experiment file was built (a config that fails to import fails here).
  assert {"configs.demo", "configs.synth.tiny", "configs.own_panoramas",
          "configs.k2b.source_b5"} <= set(result["built"])
  heavy = [m for m in result["loaded"]
           if any(m == h or m.startswith(h + ".") for h in HEAVY)]
  assert not heavy, f"building the configs imported {heavy[:10]}"
