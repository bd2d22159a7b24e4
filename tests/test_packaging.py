"""pyproject.toml against the pinned stack: Python range and the `convert` extra."""
import importlib.metadata
import os
import tomllib

from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.version import Version

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _project():
  with open(os.path.join(REPO, "pyproject.toml"), "rb") as f:
    return tomllib.load(f)["project"]


def _pins(name):
  reqs = []
  for line in open(os.path.join(REPO, name)):
    line = line.split("#")[0].strip()
    if line:
      reqs.append(Requirement(line))
  return reqs


def test_requires_python_is_what_the_pins_need():
  ours = SpecifierSet(_project()["requires-python"])
  needs = {}
  for req in _pins("requirements.txt"):
    meta = importlib.metadata.metadata(req.name)  # the installed, pinned package
    assert Version(meta["Version"]) in req.specifier, (req, meta["Version"])
    if meta["Requires-Python"]:
      needs[req.name] = SpecifierSet(meta["Requires-Python"])
  assert "jax" in needs and "numpy" in needs
  pythons = [Version(f"3.{minor}") for minor in range(8, 16)]
  usable = [v for v in pythons if all(v in s for s in needs.values())]
  assert usable, needs
  # Every Python the pins accept is accepted here, and no older one.
  assert [v for v in pythons if v in ours] == [v for v in pythons if v >= usable[0]]
  assert usable[0] == Version("3.11")  # jax 0.10, numpy 2.4, scipy 1.17, ... (3.10: no)


def test_convert_extra_installs_the_tested_torch():
  extras = _project()["optional-dependencies"]
  (torch_req,) = [Requirement(r) for r in extras["convert"]]
  assert torch_req.name == "torch"
  (pinned,) = [r for r in _pins("requirements-test.txt") if r.name == "torch"]
  tested = next(iter(pinned.specifier)).version
  assert Version(tested) in torch_req.specifier
  # weights_only loading with safe_globals (convert_torch.load_pth) needs 2.6.
  assert Version("2.5") not in torch_req.specifier
