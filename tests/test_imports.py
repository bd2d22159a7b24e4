"""The import graph's rules, read from the source with ``ast`` (nothing is imported).

Every module of ``unlock_jax`` belongs to a unit: its top-level package
(``data``, ``pseudo``, ...) or top-level module (``checkpoint``, ...). The
units stand in layers (``LAYERS``, lowest first; docs/architecture.md's
table must list the same). A module may import from its own unit and from units of
lower layers: never from a unit of its own layer or above. So data flows one
way: ``data`` never imports ``pseudo``, ``checkpoint`` never ``train``,
``pseudo`` and ``train`` never each other. Imports inside functions count.
No stage imports another stage; no module grows past 600 lines, no stage past
100. (Building a config imports no JAX: tests/test_configs_light.py.)
"""
import ast
import pathlib
import re

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "unlock_jax"
DOC = ROOT / "docs" / "architecture.md"

# Lowest first. ``__init__`` is the package's own ``unlock_jax/__init__.py``.
LAYERS = (
    ("fileio", "sharding", "progress", "constants", "registry"),
    ("logfile", "model_info", "provenance", "distributed"),
    ("data", "models"),
    ("checkpoint",),
    ("evaluation", "inference"),
    ("pseudo", "train"),
    ("methods",),
    ("api", "fingerprint", "tools"),
    ("stages",),
    ("main", "__init__"),
)
LAYER = {unit: i for i, units in enumerate(LAYERS) for unit in units}
MAX_LINES = 600
MAX_STAGE_LINES = 100


def _module_name(path: pathlib.Path) -> str:
  parts = path.relative_to(ROOT).with_suffix("").parts
  return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _unit(module: str) -> str | None:
  """``unlock_jax.data.labels`` → ``data``; ``unlock_jax`` → ``__init__``; None outside."""
  parts = module.split(".")
  if parts[0] != "unlock_jax":
    return None
  return parts[1] if len(parts) > 1 else "__init__"


def _imports(path: pathlib.Path):
  """``(line, module)`` of every import in the file, function-level ones included.

  ``from a.b import c`` yields ``a.b.c``: ``c`` is a module of ``a.b`` or a
  name defined there, in the same unit either way.
  """
  name = _module_name(path)
  package = name if path.name == "__init__.py" else name.rpartition(".")[0]
  for node in ast.walk(ast.parse(path.read_text(), str(path))):
    if isinstance(node, ast.Import):
      for alias in node.names:
        yield node.lineno, alias.name
    elif isinstance(node, ast.ImportFrom):
      base = node.module or ""
      if node.level:  # relative: resolve against the importing package
        up = package.split(".")[:len(package.split(".")) - node.level + 1]
        base = ".".join(up + ([node.module] if node.module else []))
      for alias in node.names:
        yield node.lineno, f"{base}.{alias.name}"


MODULES = sorted(PACKAGE.rglob("*.py"))
GRAPH = {path: list(_imports(path)) for path in MODULES}


def _rel(path: pathlib.Path) -> str:
  return str(path.relative_to(ROOT))


def test_every_unit_has_a_layer():
  units = {_unit(_module_name(p)) for p in MODULES}
  missing = sorted(units - set(LAYER))
  assert not missing, (
      f"unlock_jax units {missing} stand in no layer: add each to LAYERS in "
      "tests/test_imports.py and to the layer table of docs/architecture.md")
  stale = sorted(set(LAYER) - units)
  assert not stale, f"LAYERS names {stale}, which no longer exist under unlock_jax/"


@pytest.mark.parametrize("unit", sorted(LAYER))
def test_imports_point_down(unit):
  """Modules of ``unit`` import from lower layers (or their own unit) only."""
  bad = []
  for path, imports in GRAPH.items():
    if _unit(_module_name(path)) != unit:
      continue
    for line, target in imports:
      other = _unit(target)
      if other is None or other == unit or other not in LAYER:
        continue
      if LAYER[other] >= LAYER[unit]:
        where = "its own" if LAYER[other] == LAYER[unit] else "a higher"
        bad.append(f"{_rel(path)}:{line} imports {target}: '{other}' is in {where} "
                   f"layer ({LAYER[other]}) than '{unit}' ({LAYER[unit]})")
  assert not bad, "imports that point up or sideways (docs/architecture.md):\n" + "\n".join(bad)


def test_data_and_checkpoint_reach_no_higher_package():
  """The two rules the layering was made for, spelled out."""
  bad = [f"{_rel(path)}:{line} imports {target}"
         for path, imports in GRAPH.items() for line, target in imports
         if (_unit(_module_name(path)) == "data" and _unit(target) == "pseudo")
         or (_unit(_module_name(path)) == "checkpoint" and _unit(target) == "train")]
  assert not bad, "data must not import pseudo, checkpoint must not import train:\n" + "\n".join(bad)


def test_no_stage_imports_another_stage():
  bad = []
  for path, imports in GRAPH.items():
    name = _module_name(path)
    if not name.startswith("unlock_jax.stages."):
      continue
    for line, target in imports:
      parts = target.split(".")
      if parts[:2] == ["unlock_jax", "stages"] and len(parts) > 2 and parts[2] != name.split(".")[2]:
        bad.append(f"{_rel(path)}:{line} imports {target}")
  assert not bad, ("stages import other stages (what two stages share belongs in a "
                   "library module below them):\n" + "\n".join(bad))


def test_module_sizes():
  bad = []
  for path in MODULES:
    n = len(path.read_text().splitlines())
    limit = MAX_STAGE_LINES if path.parent.name == "stages" else MAX_LINES
    if n > limit:
      bad.append(f"{_rel(path)}: {n} lines (at most {limit})")
  assert not bad, "modules too long to read as one job:\n" + "\n".join(bad)


def test_layer_table_of_the_docs_is_this_one():
  """docs/architecture.md's table lists LAYERS: row ``| <layer> | `unit`, ... |``."""
  rows = re.findall(r"^\| (\d+) \| ([^|]*) \|", DOC.read_text(), re.M)
  documented = tuple(tuple(re.findall(r"`([^`]+)`", units)) for _, units in rows)
  assert [int(i) for i, _ in rows] == list(range(len(rows))), "layer numbers are not 0, 1, 2, ..."
  assert documented == LAYERS, (
      f"docs/architecture.md's layer table {documented} differs from LAYERS {LAYERS}: "
      "change both together")

