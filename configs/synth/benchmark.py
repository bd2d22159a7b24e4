r"""The benchmark: every adaptation method on one synthpass schedule, scored on target val.

Rows: source only · Tent · UNLOCK · UDA (source-dependent) · target oracle;
plus UNLOCK without its ClassMix branch, the ablation. One ``--workdir`` W
holds them all; the argument picks the row and its seed, and every row
writes only into its own folder ``W/<run>/`` (``source``, ``tent_s0``,
``unlock_s1``, ``unlock_noclassmix_s0``, ``uda_s2``, ``oracle_s0``, ...), so
no two rows' outputs or fingerprints meet. Shared inputs: the data
(``W/data``, written by the first command), the source model
(``W/source/train_source``: an input of every other row, identified by its
record and step) and UNLOCK's pseudo-labels (``W/pseudo/``: predict, opll,
adcl_pool from the source model, shared by UNLOCK's seeds and its ablation).

  B=configs/synth/benchmark.py W=/tmp/benchmark
  # 1. data, source model, source only (source val and target val):
  python -m unlock_jax.main --config $B:method=source --workdir $W
  # 2. each row (any order, after 1):
  python -m unlock_jax.main --config $B:method=tent --workdir $W
  for s in 0 1 2; do
    python -m unlock_jax.main --config $B:method=unlock,seed=$s --workdir $W
    python -m unlock_jax.main --config $B:method=uda,seed=$s --workdir $W
  done
  python -m unlock_jax.main --config $B:method=oracle --workdir $W
  # 3. the ClassMix ablation: no teacher forward and no mixed forward at all
  #    (adapt.mix_weight=0), so the mixed images move no BatchNorm statistics:
  for s in 0 1 2; do
    python -m unlock_jax.main --config $B:method=unlock,classmix=0,seed=$s --workdir $W
  done

Each row's numbers: ``W/<run>/evaluate/results.json`` (the oass metrics of
target val under ``target_val/``; the source row also has ``source_val/``);
``python -m unlock_jax.tools.benchmark_table --workdir $W`` prints the table,
mean ± std over each method's seeds.
``runlocal`` shrinks any row to a smoke test (a few scenes, 4 steps).

Expected numbers (target val mIoU / mPQ / mAP / mAAP / mAPQ; 2-core CPU,
each adaptation row about an hour): source only 41.19 / 24.58 / 4.79 / 4.52
/ 24.16 (source val 72.46 / 40.10 / 19.85 / 22.63 / 38.97); UNLOCK seed 0
38.77 / 24.43 / 4.05 / 4.35 / 25.36; UDA seed 0 43.24 / 29.37 / 6.31 / 5.49
/ 29.01; Tent 28.42 / 23.09 / 1.32 / 1.93 / 23.11; UNLOCK without ClassMix
seed 0 39.19 / 24.05 / 4.05 / 4.36 / 25.16; the oracle 63.21 / 37.07 / 17.44 /
19.70 / 38.66; UNLOCK seed 1 39.03 / 24.16 / 4.10 / 4.33 / 25.01, seed 2 39.06
/ 24.52 / 4.12 / 4.36 / 25.28; UDA seed 1 43.73 / 29.31 / 5.80 / 5.22 / 29.42,
seed 2 44.22 / 29.31 / 6.22 / 6.67 / 29.44. Over seeds 0-2 (mean ± sample
std, as ``unlock_jax.tools.benchmark_table`` prints them): UNLOCK 38.95 ±
0.16 / 24.37 ± 0.19 / 4.09 ± 0.03 / 4.35 ± 0.01 / 25.22 ± 0.18; UDA 43.73 ±
0.49 / 29.33 ± 0.04 / 6.11 ± 0.27 / 5.79 ± 0.77 / 29.29 ± 0.24 (README,
"Methods side by side", with the seam metrics and the reading).

The schedule, and why:

* **Source model** (``steps``, 1200): configs/synth/source_full.py's recipe,
  base lr 6e-4 with ×10 on the decode head only; that recipe reached 19.9
  mAP on source val where the reference's groups at this lr (the demo's
  committed model) reach 7.6, so the instance rows start off the floor.
* **Adaptation** (``adapt_steps``, 2000 for every method): the EMA teacher's
  α = min(1 − 1/(t+1), 0.999) reaches 0.999 at t = 999, so it is at 0.999
  for the last 1001 of 2000 steps (50 %), ≥ 0.998 from t = 499 (75 %) and
  ≥ 0.99 from t = 99 (95 %); with the demo's 300 steps it never reaches
  0.999 and the teacher stays the plain average of every iterate.
  :func:`alpha_fraction` computes these fractions.
* **Crops**: one size for every row, the source's full-height square
  (94×94 at scale 0.25): UDA's ClassMix mixes source crops into target crops
  of the same size, and the source images are 94 rows tall. The teacher's
  ignored rows scale with the crop height, the paste's visibility rule with
  scale², the anchors and RoI level rule with the scale (configs/cpu.py).
* **Blur**: the strong augmentation's σ ~ U[0.15, 1.15) px is the
  reference's for its 400-px crops; here it is scaled with the images
  (``adapt.blur_sigma_scale = scale``: U[0.0375, 0.2875) at 0.25), so the
  blur is the same fraction of the crop. ``reference_blur=1`` keeps the
  reference's unscaled values (≈ 4× the relative blur at 0.25).
* **Object sizes**: at scale 0.25 the median target-val object is 10 px on
  its longer side (source val: 15 px); ``scale=0.5`` doubles them (21 px) at
  about 4× the compute of every row.
* **Fusion thresholds**: the checkpoints of supervised training (source
  only, oracle) at the reference's source-only τ 0.95/0.95, the adapted ones
  (Tent, UNLOCK, UDA) at its adapted τ 0.55/0.5, as each stage records.
* **The oracle** (synthpass only): the source model fine-tuned on synthpass's
  hidden target-train ground truth (``BlendPASS/_synth_gt``, which real
  BlendPASS does not have: ``data.source.hidden_gt`` refuses any other data)
  with the source recipe, ``adapt_steps`` steps on crops of the target-train
  panoramas of the adaptation's size: the ceiling every row is read against.
  It is the ``train_source`` stage pointed at the target layout, initialised
  from the source model (``init_checkpoint``), in its own folder.
"""
import ml_collections

from configs import common
from configs import cpu
from configs import default
from configs.synth import source_full
from unlock_jax import constants
from unlock_jax.methods import benchmark_rows

SOURCE = "{workdir}/source/train_source"  # the source model every other row starts from
PSEUDO = "{workdir}/pseudo"               # UNLOCK's predict, opll and adcl_pool
SHIFT = 0.75                              # the demo's calibrated target shift (README)
NUM_PICTURES = 2


def alpha_fraction(steps: int, alpha: float = 0.999, ema_max: float = 0.999) -> float:
  """Share of ``steps`` adaptation steps whose EMA α = min(1 − 1/(t+1), ema_max) ≥ ``alpha``."""
  return sum(min(1 - 1 / (t + 1), ema_max) >= alpha - 1e-12 for t in range(steps)) / steps


def get_config(arg=None):
  arg = common.parse_arg(arg, method="unlock", seed=0, scale=0.25, steps=1200, adapt_steps=2000,
                         classmix=True, reference_blur=False, runlocal=False)
  if arg.method not in benchmark_rows.METHODS:
    raise ValueError("configs/synth/benchmark.py: method= is one of "
                     f"{', '.join(benchmark_rows.METHODS)}, "
                     f"not {arg.method!r} (e.g. configs/synth/benchmark.py:method=uda,seed=1)")
  if not arg.classmix and arg.method not in benchmark_rows.CLASSMIX:
    raise ValueError(f"classmix=0 is an ablation of {' and '.join(benchmark_rows.CLASSMIX)}, "
                     f"not of {arg.method!r}")
  if arg.method == "source" and arg.seed:
    raise ValueError("method=source is one model (seed 0), shared by every row; "
                     "seed= picks the seed of the other rows")
  run = benchmark_rows.run_name(arg.method, arg.seed, arg.classmix)
  out = "{workdir}/" + run

  # The source recipe and data of source_full (the demo's scenes) at the
  # demo's calibrated shift; this row's seed and folders.
  c = source_full.get_config(f"steps={arg.steps},scale={arg.scale}")
  c.synthpass.domain_shift = SHIFT
  c.seed = arg.seed
  c.train_source.out_dir = out + "/train_source"  # method=source: SOURCE itself
  c.predict.checkpoint = SOURCE + "/checkpoints"
  c.predict.update(store_dir=PSEUDO + "/predict", pictures_dir=PSEUDO + "/predict/pictures",
                   num_pictures=2)
  c.opll.update(out_dir=PSEUDO + "/opll", num_pictures=2)
  c.adcl_pool.out_dir = PSEUDO + "/adcl_pool"
  c.evaluate.results_dir = out + "/evaluate"

  # Adaptation, every method: the same steps, batches and crops.
  cpu.adapt(c, c.data.target.image_size, arg.scale, arg.adapt_steps)
  a = c.adapt
  a.crop_size = tuple(c.input.crop_size)  # the source's square: UDA mixes source into target
  a.source_checkpoint = SOURCE + "/checkpoints"
  a.out_dir = out + "/adapt"
  a.blur_sigma_scale = 1.0 if arg.reference_blur else arg.scale
  a.checkpoint_every = 500
  c.predict_adapted.update(store_dir=out + "/predict_adapted",
                           pictures_dir=out + "/predict_adapted/pictures")

  target_val = common.domain_eval(c.data.target, "val", common.oass_eval, scale=arg.scale,
                                  num_pictures=NUM_PICTURES)
  c.evals = ml_collections.ConfigDict(dict(target_val=target_val))
  tau = constants.TAU_ADAPTED
  checkpoint = out + "/adapt/checkpoints"
  if arg.method == "source":
    c.stage = "generate,train_source,evaluate"
    c.evals = common.synth_evals(c.data, common.oass_eval, scale=arg.scale,
                                 num_pictures=NUM_PICTURES)
    tau, checkpoint = constants.TAU_SOURCE_ONLY, SOURCE + "/checkpoints"
  elif arg.method == "oracle":
    c.stage = "train_source,evaluate"
    oracle(c, arg.adapt_steps)
    tau, checkpoint = constants.TAU_SOURCE_ONLY, out + "/train_source/checkpoints"
  elif arg.method == "unlock":
    c.stage = "predict,opll,adcl_pool,adapt,evaluate"
    if not arg.classmix:
      a.mix_weight = 0.0
  else:  # tent, uda: no pseudo-label stages
    c.stage = "adapt,evaluate"
    a.method = arg.method
    if arg.method == "uda" and not arg.classmix:
      a.uda.mix_weight = 0.0
  for ev in c.evals.values():
    ev.pictures_dir = out + "/pictures"
  c.evaluate.runs = ml_collections.ConfigDict({benchmark_rows.EVAL_RUN[arg.method]: dict(
      checkpoint=checkpoint, tau=tuple(tau))})

  if arg.runlocal:
    common.runlocal_synthpass(c)
    a.total_steps, a.checkpoint_every, a.log_every = 4, 2, 1
    if arg.method == "oracle":
      c.total_steps = 4
  return c


def oracle(c: ml_collections.ConfigDict, steps: int) -> None:
  """``train_source`` on the target-train panoramas' hidden ground truth, from the source model.

  The source recipe (``config.optim``, ``config.input`` but the crop) for
  ``steps`` steps on crops of the adaptation's size; the target domain's
  layout, root, size and format are followed, overrides included, and
  ``hidden_gt`` refuses data that synthpass did not generate.
  """
  src = c.data.source
  for key in ("layout", "root", "image_size", "format", "tfds_data_dir"):
    src[key] = common.follow(c.data.target, key)
  src.split = "train"
  src.hidden_gt = True
  c.input.crop_size = tuple(c.adapt.crop_size)
  c.init_checkpoint = SOURCE + "/checkpoints"
  c.total_steps = steps
