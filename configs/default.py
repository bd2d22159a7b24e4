r"""The default config: every key any stage reads, with the reference's values (K2B, MiT-B5).

  python -m unlock_jax.main --config configs/default.py --workdir /tmp/run \
      --config.stage=print_config

Every experiment file starts from ``get_config()`` and changes what differs,
as flax examples' variants of their ``configs/default.py`` do;
docs/configuration.md describes each key.
"""
import ml_collections

from configs import common
from unlock_jax import constants
from unlock_jax.models import defaults as model_defaults


def get_config(arg=None) -> ml_collections.ConfigDict:
  """Every key any stage reads, with the reference's defaults (no arguments)."""
  common.parse_arg(arg)
  c = ml_collections.ConfigDict()
  c.stage = "train_source"
  c.seed = 0
  # Each stage's `overwrite`: a rerun whose settings differ from those its
  # outputs were made with is refused; True deletes those outputs, and the
  # ones computed from them, and runs afresh (unlock_jax/fingerprint.py).
  c.generate = dict(overwrite=False)
  c.train_source = dict(out_dir="{workdir}/train_source", overwrite=False)

  c.synthpass = dict(out_dir=common.SYNTH_ROOT, scale=0.25, seed=0,
                     num_source=dict(train=300, val=50),
                     num_target=dict(train=100, val=50),
                     domain_shift=1.0, num_workers=0)
  c.data = common.data_section("{workdir}/data/KITTI360_APS", "{workdir}/data/BlendPASS",
                        (376, 1408), (400, 2048))

  # Source training input (KITTI-360 APS: 376x376 crops, cat_max_ratio 0.75, flip).
  c.input = dict(batch_size=8, crop_size=(376, 376), cat_max_ratio=0.75,
                 flip=True, max_instances=32, box_rule="positive",
                 num_workers=0)

  c.model = model_defaults.default_model_config()
  c.loss = dict(sem_normalize="all_pixels")

  # The reference's source recipe (experiments.py, pmult=True): AdamW 6e-5,
  # poly(1.0), neck and every head (decode, RPN, RoI of both branches) x10,
  # no decay on norms. Groups follow mmcv's rule (substring of the reference
  # name, longest key first; optim.py); constants.ADAPT_GROUPS is the
  # adaptation recipe (docs/method.md §7.6).
  c.optim = dict(lr=6e-5, weight_decay=0.01, b1=0.9, b2=0.999, eps=1e-8,
                 power=1.0, end_lr=0.0, warmup_steps=0,
                 match="mmcv", groups=constants.SOURCE_GROUPS)
  c.total_steps = 40_000
  c.log_every = 50
  c.checkpoint_every = 1000
  c.keep_checkpoints = 2
  c.progress_every_secs = 30.0
  c.init_checkpoint = ""

  # `runs`: several named checkpoints, each {"checkpoint", "tau": (tau_m, tau_a)}.
  c.evaluate = dict(checkpoint=common.follow(c.train_source, "out_dir") + "/checkpoints",
                    results_dir="{workdir}/evaluate", runs={}, overwrite=False)
  c.evals = ml_collections.ConfigDict()

  # Every full 360° panorama forward (predict, predict_adapted, the target
  # evaluators with their roll forward and pictures, the API): how the
  # network treats the seam where the panorama's ends meet. mode: "flat"
  # (zero padding, the reference), "circular" (horizontal padding wraps
  # around), "wrap" (predict on the panorama extended by wrap_cols columns
  # from its other end on each side, crop back), "circular_wrap" (both); any
  # mode but "flat" also merges instances across the seam
  # (data/seam_instances.py). wrap_cols: a multiple of 64, less than the
  # width (models/defaults.py wrap_cols_for: ~1/16 of it). Pinhole images
  # (the source data and its evaluators) are always flat.
  c.seam = model_defaults.default_seam_config(c.data.target.image_size[1])

  # Stage 1: whole-panorama predictions of the source model over the target
  # train split (empty root/layout/image_size: those of config.data.target),
  # or over a folder of the user's own panoramas (`images`). on_bad_image:
  # "skip" an unreadable image (listed in <store_dir>/skipped.json) or "fail".
  # export_dir: also write every prediction at its image's own size for other
  # tools (semantic and COCO panoptic PNGs, COCO JSON with RLE masks;
  # pseudo/export.py), fused at export_tau_m (None: the tau the checkpoint's
  # model_config.json records).
  c.predict = dict(checkpoint=common.follow(c.train_source, "out_dir") + "/checkpoints",
                   layout="", root="", split="train", image_size=(),
                   images="", batch_size=4, store_dir="{workdir}/predict",
                   num_pictures=8, pictures_dir="{workdir}/predict/pictures",
                   export_dir="", export_tau_m=ml_collections.config_dict.placeholder(float),
                   on_bad_image="skip", overwrite=False)
  # Stage 2: OPLL, (p, t) per output from the reference scripts (docs/method.md §5.1).
  c.opll = dict(semantic=dict(p=0.8, t=0.5), modal=dict(p=0.3, t=0.5),
                amodal=dict(p=0.5, t=0.3),
                prototype_filter=False, prototype_margin=0.0,
                quality=True, num_pictures=4, batch_size=4, state_every=200,
                out_dir="{workdir}/opll", overwrite=False)
  # Stage 3: the ADCL pool, tau = min(0.95, quantile_0.9) (docs/method.md §6).
  c.adcl_pool = dict(pt=(0.1, 0.95), out_dir="{workdir}/adcl_pool", overwrite=False)
  # Stage 4: adaptation (docs/method.md §7), the reference's K2B hyper-parameters.
  # `method` names the step (unlock_jax/methods/); the keys from ema_max to
  # sem_normalize are UNLOCK's (methods/unlock.py CONFIG_KEYS), the rest the stage's.
  c.adapt = dict(
      method="unlock",
      source_checkpoint="",  # empty: config.predict.checkpoint
      total_steps=10_000, batch_size=4, crop_size=(400, 400), cat_max_ratio=0.75,
      flip=True, max_instances=32, num_workers=0,
      # True: crops of the 360° target panoramas may straddle the seam (left
      # column drawn from all W columns, read modulo W), so every column is
      # sampled alike; False: the reference's crops inside [0, W).
      wrap_crops=False,
      paste=dict(num_candidates=80, max_paste=8, max_area_fraction=1 / 8,
                 min_visible=25, black_fill=True, modal_box_from_visible=True,
                 box_rule="positive"),
      ema_max=0.999, teacher_threshold=0.968, ignore_top=11, ignore_bottom=88,
      rows_crop_height=400, jitter_p=0.8, blur_p=0.5, jitter_strength=0.2,
      reg_weight=10.0, mix_weight=1.0, sem_normalize="all_pixels",
      # The strong augmentation's blur sigma, as a multiple of the reference's
      # U[0.15, 1.15) px (set for its full-size images), for every method that
      # blurs (UNLOCK, UDA): the image scale, so the blur is the same fraction
      # of the image (configs/synth/benchmark.py sets the synthpass scale);
      # 1.0 is the reference's values.
      blur_sigma_scale=1.0,
      # True: the gradient one loss term at a time (clean, then mixed), the
      # two student forwards never alive together (README "Running at the
      # paper's size"); the same gradient up to float summation order.
      sequential_grads=False,
      # adapt.method="uda": the reference's source-dependent DACS baseline
      # (methods/uda.py; dacsam.py + dacsam_a999_fdthings.py). Source and
      # target crops must be equal (config.input.crop_size = adapt.crop_size).
      # The feature distance runs only with imnet_checkpoint set (a converted
      # ImageNet MiT, e.g. configs/k2b/source_b5.py's init_checkpoint).
      uda=dict(ema_max=0.999, teacher_threshold=0.968, ignore_top=0, ignore_bottom=0,
               jitter_p=0.8, blur_p=0.5, jitter_strength=0.2, mix_weight=1.0,
               erase_objects=True, imnet_checkpoint="", fdist_lambda=0.005,
               fdist_classes=tuple(range(11, 18)), fdist_scale_min_ratio=0.75,
               optim=dict(lr=6e-5, weight_decay=0.01, b1=0.9, b2=0.999, eps=1e-8,
                          power=1.0, end_lr=0.0, warmup_steps=0, match="mmcv",
                          groups=constants.SOURCE_GROUPS)),
      # Tent's (methods/tent.py; the original's Adam): only with method="tent".
      tent=dict(lr=1e-3, b1=0.9, b2=0.999, eps=1e-8, weight_decay=0.0),
      optim=dict(lr=1e-7, weight_decay=0.01, b1=0.9, b2=0.999, eps=1e-8, power=1.0,
                 end_lr=0.0, warmup_steps=0, match="mmcv", groups=constants.ADAPT_GROUPS),
      log_every=50, checkpoint_every=1000, keep_checkpoints=1, eval_every=200,
      evals=(), out_dir="{workdir}/adapt", overwrite=False)
  # The adapted model's predictions (stage predict_adapted): config.predict
  # with these keys replaced, so its store never mixes with the source model's.
  c.predict_adapted = dict(
      checkpoint=common.follow(c.adapt, "out_dir") + "/checkpoints",
      store_dir="{workdir}/predict_adapted",
      export_dir="",  # set its own: never predict's export folder
      pictures_dir="{workdir}/predict_adapted/pictures", overwrite=False)
  # Stage 0's compact export (a committable source model, stages/export_source.py).
  c.export_source = dict(out_dir="{workdir}/export_source", dtype="float32",
                         command="", overwrite=False)
  c.debug = dict(kill_after_checkpoint=-1, kill_after_entries=-1)
  return c
