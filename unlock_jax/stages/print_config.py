"""Stage "print_config": prints the resolved config, one key per line.

  python -m unlock_jax.main --config configs/demo.py --workdir /tmp/unlock_demo \
      --config.stage=print_config [--config.adapt.total_steps=50 ...]

The config is the one every other stage would get: the file's ``:args`` and
the ``--config.*`` overrides applied, references between keys resolved (an
evaluator that follows ``data.target.root`` shows the overridden root). Each
line is ``key = value`` with the value as Python writes it, so any line turns
into an override by writing ``--config.key=value``. Paths keep their
``{workdir}`` template (the stages expand it); the header names the workdir
it stands for. Nothing is trained, read or written beyond the stage's log;
``docs/configuration.md`` says what each key does.
"""
import jax
import ml_collections

from unlock_jax import fileio


def flatten(config: ml_collections.ConfigDict, prefix: str = "") -> list[tuple[str, object]]:
  """``[(dotted key, value)]`` over the leaves, references resolved; empty sections kept as ``{}``."""
  if prefix == "":
    config = config.copy_and_resolve_references()
  out = []
  for key, value in config.items():
    name = f"{prefix}{key}"
    if isinstance(value, ml_collections.ConfigDict) and len(value):
      out.extend(flatten(value, name + "."))
    elif isinstance(value, ml_collections.ConfigDict):
      out.append((name, {}))
    else:
      out.append((name, value))
  return out


def format_config(config: ml_collections.ConfigDict, workdir: str) -> str:
  lines = [f"# resolved config; {{workdir}} = {workdir}"]
  lines += [f"{key} = {value!r}" for key, value in flatten(config)]
  return "\n".join(lines) + "\n"


def run(config, workdir: str) -> dict:
  text = format_config(config, fileio.absolute(workdir))
  if jax.process_index() == 0:
    print(text, end="", flush=True)
  return {"num_keys": text.count("\n") - 1}
