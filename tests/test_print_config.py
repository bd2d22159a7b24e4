"""The print_config stage: every key of the resolved config, in override syntax."""
import ast
import importlib
import os
import re
import subprocess
import sys

from absl import flags
from ml_collections import config_flags

from unlock_jax.stages import print_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _parse(*argv_tail):
  argv = ["main", *argv_tail]
  values = flags.FlagValues()
  config_flags.DEFINE_config_file("config", flag_values=values, lock_config=True,
                                  sys_argv=argv)
  values(argv)
  return values.config


def _nest(lines):
  """``key = value`` lines back into a nested dict (the test's own parser)."""
  out = {}
  for line in lines:
    key, _, value = line.partition(" = ")
    *parents, leaf = key.split(".")
    node = out
    for p in parents:
      node = node.setdefault(p, {})
    node[leaf] = ast.literal_eval(value)
  return out


def test_lines_are_the_resolved_config_with_overrides():
  cwd = os.getcwd()
  os.chdir(REPO)
  try:
    config = _parse("--config=configs/demo.py:adapt_steps=7",
                    "--config.data.target.root=/mnt/BlendPASS",
                    "--config.opll.semantic.p=0.5")
  finally:
    os.chdir(cwd)
  text = print_config.format_config(config, "/runs/demo")
  header, *lines = text.splitlines()
  assert header == "# resolved config; {workdir} = /runs/demo"
  assert lines == sorted(lines, key=lambda l: l.split(" = ")[0].split("."))
  parsed = _nest(lines)
  assert parsed == config.copy_and_resolve_references().to_dict()
  # The override reached the evaluator that follows data.target.root.
  assert "evals.target_val.root = '/mnt/BlendPASS'" in lines
  assert "adapt.total_steps = 7" in lines and "opll.semantic.p = 0.5" in lines
  assert "predict.store_dir = '{workdir}/predict'" in lines


def test_empty_sections_are_listed():
  cwd = os.getcwd()
  os.chdir(REPO)
  try:
    config = _parse("--config=configs/synth/tiny.py")
  finally:
    os.chdir(cwd)
  keys = dict(line.split(" = ") for line in print_config.format_config(
      config, "/w").splitlines()[1:])
  assert keys["evaluate.runs"] == "{}"


def test_through_main_prints_and_trains_nothing(tmp_path):
  proc = subprocess.run(
      [sys.executable, "-m", "unlock_jax.main", "--config", "configs/demo.py",
       "--workdir", str(tmp_path), "--config.stage=print_config",
       "--config.adapt.paste.num_candidates=0"],
      cwd=REPO, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  lines = proc.stdout.splitlines()
  assert lines[0] == f"# resolved config; {{workdir}} = {tmp_path}"
  assert "adapt.paste.num_candidates = 0" in lines
  assert "stage = 'print_config'" in lines
  assert sorted(os.listdir(tmp_path)) == ["logs"]


# --- docs/configuration.md documents every key -------------------------------------------

_ROW = re.compile(r"^\| `([a-z_][\w.<>]*)` \| (`[^`]*`|–) \|", re.M)
# Files whose get_config needs an argument, and variants that add keys.
_ARGS = {"configs/own_panoramas.py": ["images=/nonexistent"],
         "configs/demo.py": [None, "source=train"],
         "configs/synth/tiny.py": [None, "full=1"]}


def _documented() -> dict:
  with open(os.path.join(REPO, "docs", "configuration.md"), encoding="utf-8") as f:
    return {k: v for k, v in _ROW.findall(f.read())}


def _generic(key: str) -> str:
  """``evals.target_val.tau_m`` → ``evals.<name>.tau_m`` (named entries)."""
  parts = key.split(".")
  if parts[0] == "evals" and len(parts) > 2:
    parts[1] = "<name>"
  if parts[:2] == ["evaluate", "runs"] and len(parts) > 3:
    parts[2] = "<name>"
  return ".".join(parts)


def _config_files() -> list[str]:
  out = []
  for folder, _, files in os.walk(os.path.join(REPO, "configs")):
    for f in files:
      path = os.path.relpath(os.path.join(folder, f), REPO)
      if f.endswith(".py") and "def get_config" in open(os.path.join(REPO, path)).read():
        out.append(path)
  return sorted(out)


def test_configuration_md_documents_every_key_with_its_default():
  from configs import default  # pylint: disable=g-import-not-at-top
  documented = _documented()
  base = dict(print_config.flatten(default.get_config()))
  wrong = [f"{k}: docs say {documented[k]}, configs/default.py has `{v!r}`"
           for k, v in base.items() if k in documented and documented[k] != f"`{v!r}`"]
  seen = set(base)
  for path in _config_files():
    module = importlib.import_module(path[:-3].replace("/", "."))
    for arg in _ARGS.get(path, [None]):
      seen |= {_generic(k) for k, _ in print_config.flatten(module.get_config(arg))}
  missing = sorted(seen - set(documented))
  stale = sorted(set(documented) - seen)
  assert not (missing or stale or wrong), (
      f"docs/configuration.md: undocumented keys {missing}; documented keys no config "
      f"has {stale}; wrong defaults {wrong}")
