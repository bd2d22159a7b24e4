"""The methods benchmark's rows: which methods it compares, their folders and their labels.

One naming, two readers: ``configs/synth/benchmark.py`` writes each row into
``<workdir>/<run_name(...)>/`` and ``tools/benchmark_table`` reads the rows
back with :func:`parse_run_name`. Plain Python (no JAX): configs import it.
"""
import re

# The benchmark's methods, in the table's reading order.
METHODS = ("source", "tent", "unlock", "uda", "oracle")
# Methods with a ClassMix branch, so with a ``classmix=0`` ablation row.
CLASSMIX = ("unlock", "uda")
# The name of each method's checkpoint in the evaluate stage (results.json "runs").
EVAL_RUN = dict(source="source_only", tent="Tent", unlock="UNLOCK", uda="UDA", oracle="oracle")
LABEL = {"source": "source only", "tent": "Tent (source-free)", "unlock": "UNLOCK (source-free)",
         "unlock_noclassmix": "UNLOCK without ClassMix", "uda": "UDA (source-dependent)",
         "uda_noclassmix": "UDA without ClassMix", "oracle": "target oracle (synthpass only)"}
_RUN = re.compile(r"^(?P<group>.+)_s(?P<seed>\d+)$")


def group(method: str, classmix: bool = True) -> str:
  """The table row of a method: ``unlock``, or ``unlock_noclassmix`` for its ablation."""
  return method if classmix else f"{method}_noclassmix"


# The table's rows in reading order: each method, then its ClassMix ablation.
ORDER = tuple(group(m, c) for m in METHODS for c in ((True, False) if m in CLASSMIX else (True,)))


def run_name(method: str, seed: int, classmix: bool = True) -> str:
  """The row's folder under the workdir: ``source``, ``unlock_s1``, ``unlock_noclassmix_s0``, ..."""
  if method == "source":  # one model, shared by every other row: no seed
    return "source"
  return f"{group(method, classmix)}_s{seed}"


def parse_run_name(run: str):
  """``unlock_s1`` -> ("unlock", 1); ``source`` -> ("source", 0); None for a folder that is
  no row (``data``, ``pseudo``, ``logs``, ...)."""
  if run == "source":
    return "source", 0
  m = _RUN.match(run)
  if not m or m["group"] not in ORDER or m["group"] == "source":
    return None
  return m["group"], int(m["seed"])
