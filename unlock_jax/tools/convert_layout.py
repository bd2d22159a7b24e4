r"""Rewrites a model folder with the other backbone layout (scanned or unrolled blocks).

    python -m unlock_jax.tools.convert_layout --checkpoint IN --out OUT --scan_blocks=true

``model.scan_blocks`` (models/mit.py) stores each MiT stage's blocks as one
stacked tree ``backbone/block{s}`` instead of the reference's
``backbone/block{s}_{j}``. A checkpoint of one layout restores only into a
model of the same layout; this tool writes ``{params, batch_stats}`` of
``IN`` (a folder written by tools/convert_torch or export_source, or a train
run's ``checkpoints`` folder: its latest step) in the asked layout, with
``model_config.json`` saying so. The values are the same arrays: stacking and
slicing only. Optimiser state is not carried over (use the result as
``config.init_checkpoint`` or as a stage's checkpoint).
"""
import sys

from absl import app
from absl import flags

from unlock_jax import fileio
from unlock_jax import model_info


def convert(checkpoint: str, out_dir: str, scan_blocks: bool) -> str:
  """Writes ``out_dir``; returns the layout the input had ("scanned"/"unrolled")."""
  import jax  # pylint: disable=g-import-not-at-top
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top

  from unlock_jax import checkpoint as ckpt_lib  # pylint: disable=g-import-not-at-top
  from unlock_jax import sharding as shd  # pylint: disable=g-import-not-at-top
  from unlock_jax.models import amodalpass  # pylint: disable=g-import-not-at-top

  checkpoint, out_dir = fileio.absolute(checkpoint), fileio.absolute(out_dir)
  if fileio.exists(out_dir):
    raise FileExistsError(f"output {out_dir} already exists")
  info = model_info.read(checkpoint)
  if info is None:
    raise FileNotFoundError(
        f"{checkpoint} has no {model_info.FILE}: the layout it was written with is "
        "unknown. Convert its source again (tools/convert_torch --config ...).")
  stored_cfg = info["model"]
  stored_scan = bool(stored_cfg.get("scan_blocks", False))
  mesh = shd.make_mesh()
  model = amodalpass.build(stored_cfg)
  abstract = ckpt_lib.abstract_variables(model, (1, 64, 64, 3), mesh)
  variables, _ = ckpt_lib.load_variables(checkpoint, abstract)
  new_cfg = amodalpass.unscanned(stored_cfg)
  new_cfg.scan_blocks = bool(scan_blocks)
  params = amodalpass.to_layout(jax.device_get(variables["params"]), new_cfg)
  ckptr = ocp.StandardCheckpointer()
  ckptr.save(out_dir, {"params": params,
                       "batch_stats": jax.device_get(variables["batch_stats"])})
  ckptr.wait_until_finished()
  model_info.write(out_dir, new_cfg, info["image_size"], info["tau"], "convert_layout")
  return "scanned" if stored_scan else "unrolled"


def define_flags(values: flags.FlagValues = flags.FLAGS) -> None:
  flags.DEFINE_string("checkpoint", None, "model folder to rewrite", flag_values=values)
  flags.DEFINE_string("out", None, "output folder (must not exist)", flag_values=values)
  flags.DEFINE_bool("scan_blocks", True, "write the scanned layout (false: unrolled)",
                    flag_values=values)


def main(argv, values: flags.FlagValues = flags.FLAGS):
  f = values
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments {argv[1:]}")
  if not f.checkpoint or not f.out:
    raise app.UsageError("--checkpoint and --out are required")
  try:
    was = convert(f.checkpoint, f.out, f.scan_blocks)
  except (OSError, ValueError) as e:
    print(f"convert_layout: {e}", file=sys.stderr)
    return 1
  now = "scanned" if f.scan_blocks else "unrolled"
  print(f"wrote {fileio.absolute(f.out)} ({was} -> {now} backbone blocks)")
  return 0


if __name__ == "__main__":
  define_flags()
  app.run(main)
