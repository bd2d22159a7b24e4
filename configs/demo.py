r"""Demo: UNLOCK end to end on synthpass from the committed source model, on a 2-core CPU.

  python -m unlock_jax.main --config configs/demo.py --workdir /tmp/unlock_demo
  python -m unlock_jax.main --config configs/demo.py:runlocal --workdir /tmp/demo_quick
  python -m unlock_jax.main --config configs/demo.py:source=train --workdir /tmp/demo_source
  python -m unlock_jax.main --config configs/demo.py:method=tent --workdir /tmp/demo_tent
  python -m unlock_jax.main --config configs/demo.py:method=uda --workdir /tmp/demo_uda

The first runs generate, predict, opll, adcl_pool, adapt and evaluate
(source only vs UNLOCK on target val); ``runlocal`` is a smoke test of every
stage in a few minutes; ``source=train`` regenerates ``assets/demo_source``;
``method=tent`` adapts with Tent instead (methods/tent.py: no pseudo-labels,
so generate, adapt, evaluate: source only vs Tent); ``method=uda`` with the
reference's source-dependent DACS baseline (methods/uda.py: the generated
source train split's labelled crops mixed into target crops, both the
source's 94×94 square; source only vs UDA).
What it shows and how ``SHIFT`` was calibrated: README, "What the demo shows"
and "Calibrating the benchmark".
"""
import ml_collections

from configs import common
from configs import cpu
from configs import default

# Target appearance shift, calibrated with the committed source model
# (README, "Calibrating the benchmark").
SHIFT = 0.75
# (train, val) scenes of each domain; the committed model's synthpass.json
# records SOURCE_SCENES[0].
SOURCE_SCENES, TARGET_SCENES = (300, 40), (60, 40)
NUM_PICTURES = 4  # evaluation pictures per evaluator (<workdir>/pictures)


def demo_model(c: ml_collections.ConfigDict, scale: float) -> None:
  """All heads, small enough to commit and to train on a CPU."""
  m = c.model
  common.small_model(m)
  m.mit = dict(dims=(32, 64, 96, 128), depths=(1, 1, 2, 1), heads=(1, 2, 3, 4),
               sr_ratios=(8, 4, 2, 1))
  m.fpn_channels = 48
  m.instance_heads = True
  cpu.rcnn(m.rcnn, scale, feat_channels=48, fc_dim=96, conv_dim=32)


def get_config(arg=None):
  arg = common.parse_arg(arg, source="committed", steps=1200, adapt_steps=300,
                         shift=SHIFT, scale=0.25, runs="", method="unlock",
                         runlocal=False)
  c = default.get_config()
  _, tgt = common.use_synthpass(c, arg.scale, source=SOURCE_SCENES, target=TARGET_SCENES)
  c.synthpass.domain_shift = arg.shift
  c.synthpass.num_workers = 2
  c.input.batch_size = 4
  c.input.max_instances = 24
  demo_model(c, arg.scale)
  c.optim.lr = 6e-4  # small model, short schedule
  c.total_steps = arg.steps
  c.log_every = 50
  c.checkpoint_every = 500
  c.progress_every_secs = 30.0

  if arg.source == "train":
    # Stage 0 and its export: the command that regenerates assets/demo_source.
    c.stage = "generate,train_source,evaluate,export_source"
    c.evals = common.synth_evals(c.data, common.oass_eval, scale=arg.scale,
                                 tau=(0.95, 0.95), num_pictures=NUM_PICTURES)
    # overwrite: this command exists to replace the committed model.
    c.export_source.update(out_dir=cpu.DEMO_SOURCE, dtype="bfloat16", overwrite=True, command=(
        "python -m unlock_jax.main --config configs/demo.py:source=train "
        "--workdir /tmp/demo_source"))
  elif arg.source == "committed":
    c.stage = "generate,predict,opll,adcl_pool,adapt,evaluate"
    c.predict.checkpoint = cpu.DEMO_SOURCE
    cpu.adapt(c, tgt, arg.scale, arg.adapt_steps)
    adapted = {"unlock": "UNLOCK", "tent": "Tent", "uda": "UDA"}[arg.method]
    if arg.method in ("tent", "uda"):  # no pseudo-labels (uda: plus the source train split)
      c.stage = "generate,adapt,evaluate"
      c.adapt.method = arg.method
    if arg.method == "uda":
      c.adapt.crop_size = tuple(c.input.crop_size)  # ClassMix needs one size
      c.adapt.uda.optim.update(c.optim)  # the recipe the committed model was trained with
    runs = dict(source_only=dict(checkpoint=cpu.DEMO_SOURCE, tau=(0.95, 0.95)),
                **{adapted: dict(checkpoint=common.follow(c.adapt, "out_dir") + "/checkpoints",
                                 tau=(0.55, 0.5))})
    c.evaluate.runs = ml_collections.ConfigDict(
        {name: runs[name] for name in (arg.runs or f"source_only+{adapted}").split("+")})
    c.evals = ml_collections.ConfigDict(dict(target_val=common.domain_eval(
        c.data.target, "val", common.oass_eval, scale=arg.scale,
        num_pictures=NUM_PICTURES)))
    c.predict.num_pictures = 2
    c.opll.num_pictures = 2
  else:
    raise ValueError(f"source must be 'committed' or 'train', got {arg.source!r}")

  if arg.runlocal:
    common.runlocal_synthpass(c)
    c.adapt.total_steps, c.adapt.checkpoint_every, c.adapt.log_every = 4, 2, 1
    if arg.source == "committed":
      c.synthpass.num_source = dict(train=SOURCE_SCENES[0], val=0)
    else:  # a 4-step model is no replacement for the committed one
      c.export_source.out_dir = "{workdir}/export_source"
  return c
