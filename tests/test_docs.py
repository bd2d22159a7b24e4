"""The README and docs/ stand alone: no pointer outside the clone, no dead link."""
import os
import re
import subprocess

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Built from parts so this file does not match itself.
OUTSIDE = ("../" + "shared", "shared/" + "spec", "unlock_algorithm" + ".md",
           "evaluation_and_data" + ".md", "strong_augmentation" + ".md",
           "jax_stack" + ".md")
LINK = re.compile(r"\]\(([^)\s]+)\)")


def _tracked(*patterns) -> list[str]:
  out = subprocess.run(["git", "ls-files", "--", *patterns], cwd=REPO,
                       capture_output=True, text=True, check=True).stdout.split()
  return [p for p in out if os.path.isfile(os.path.join(REPO, p))]


def _read(path: str) -> str:
  with open(os.path.join(REPO, path), encoding="utf-8") as f:
    return f.read()


def _docs() -> list[str]:
  folder = os.path.join(REPO, "docs")
  return sorted(f"docs/{f}" for f in os.listdir(folder) if f.endswith(".md"))


def _slug(heading: str) -> str:
  """GitHub's anchor of a heading: lower case, punctuation dropped, spaces to '-'."""
  text = re.sub(r"`", "", heading.strip().lower())
  text = re.sub(r"[^\w\- ]", "", text)
  return text.replace(" ", "-")


def _anchors(path: str) -> set[str]:
  return {_slug(m) for m in re.findall(r"^#+\s+(.*)$", _read(path), re.M)}


def test_nothing_points_outside_the_clone():
  files = ["README.md", *_docs()] + _tracked(
      "*.txt", "*.toml", "*.py", "*.sh", "*.md", ".ci/*")
  found = []
  for path in sorted(set(files)):
    for n, line in enumerate(_read(path).splitlines(), 1):
      for needle in OUTSIDE:
        if needle in line:
          found.append(f"{path}:{n}: {needle}")
  assert not found, "references to files a clone does not have:\n" + "\n".join(found)


@pytest.mark.parametrize("path", ["README.md", "launch/README.md"] + _docs())
def test_links_resolve(path):
  """Every relative link names an existing file, and its #anchor a heading there."""
  base = os.path.dirname(path)
  bad = []
  for target in LINK.findall(_read(path)):
    if re.match(r"[a-z]+:", target):  # http(s), mailto
      continue
    file, _, anchor = target.partition("#")
    resolved = os.path.normpath(os.path.join(base, file)) if file else path
    if not os.path.exists(os.path.join(REPO, resolved)):
      bad.append(f"{target}: no file {resolved}")
    elif anchor and resolved.endswith(".md") and anchor not in _anchors(resolved):
      bad.append(f"{target}: no heading #{anchor} in {resolved}")
  assert not bad, f"dead links in {path}:\n" + "\n".join(bad)


def test_readme_links_every_doc():
  readme = _read("README.md")
  missing = [d for d in _docs() if f"]({d}" not in readme]
  assert not missing, f"README.md does not link {missing}"


def test_readme_keeps_the_setup_lines():
  """CI runs the line starting with `python -m pytest`; the fresh-clone check the venv line."""
  lines = _read("README.md").splitlines()
  assert any(l.startswith("python -m pytest") for l in lines)
  assert any(l.startswith("python3 -m venv") and "unlock_jax.main" in l for l in lines)


def test_slug_matches_github():
  assert _slug("2.5 synthpass") == "25-synthpass"
  assert _slug("7. results.json") == "7-resultsjson"
  assert _slug("5.4 Prototype filter (not in the reference; off by default)") == (
      "54-prototype-filter-not-in-the-reference-off-by-default")
  assert _slug("`predict`: stage 1") == "predict-stage-1"
