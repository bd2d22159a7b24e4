"""Config building blocks shared by every experiment file.

Each experiment file's ``get_config(arg)`` starts from :func:`base`, sets its
sections, and ends with the ``runlocal`` shrink, as big_vision configs do.
"""
import ml_collections

from unlock_jax import constants
from unlock_jax.models import defaults as model_defaults

SYNTH_ROOT = "{workdir}/data"  # where the generate stage writes synthpass


def parse_arg(arg: str | None, **defaults) -> ml_collections.ConfigDict:
  """``"runlocal,steps=50"`` → ConfigDict, typed by the defaults; unknown keys fail."""
  out = ml_collections.ConfigDict(defaults)
  for item in filter(None, (arg or "").split(",")):
    key, _, value = item.partition("=")
    if key not in defaults:
      raise ValueError(f"unknown config argument {key!r}; known: {sorted(defaults)}")
    default = defaults[key]
    if isinstance(default, bool):
      out[key] = value.lower() in ("", "1", "true", "yes")
    else:
      out[key] = type(default)(value)
  return out


def data_section(layout_root_source: str, layout_root_target: str,
                 source_size, target_size) -> ml_collections.ConfigDict:
  """Where the labelled source and the target panoramas live, and their sizes.

  ``format``: "files" reads the layout under ``root``; "tfds" reads its
  ArrayRecord build in ``tfds_data_dir`` (``python -m unlock_jax.data.tfds.build``).
  """
  return ml_collections.ConfigDict(dict(
      source=dict(layout="kitti360aps", root=layout_root_source, split="train",
                  image_size=tuple(source_size), format="files", tfds_data_dir=""),
      target=dict(layout="blendpass", root=layout_root_target, split="train",
                  image_size=tuple(target_size), format="files", tfds_data_dir=""),
  ))


def follow(section: ml_collections.ConfigDict, key: str):
  """``section[key]``, tracking later overrides of it until set itself.

  A derived ``FieldReference`` (``identity()``): assigning to the field that
  holds it re-points that field only (``FieldReference.set`` drops the op),
  whereas a plain ``get_ref`` would write the new value back into
  ``section``. So ``--config.data.target.root=X`` moves an evaluator built
  on ``follow(c.data.target, "root")``, and ``--config.evals.<name>.root=Y``
  moves that evaluator alone.
  """
  return section.get_ref(key).identity()


def semantic_eval(layout, root, split: str, image_size, batch_size: int = 4,
                  format="files", tfds_data_dir="") -> ml_collections.ConfigDict:  # pylint: disable=redefined-builtin
  """mIoU and per-class IoU; layout/root/image_size/format may be :func:`follow` refs."""
  if not isinstance(image_size, ml_collections.FieldReference):
    image_size = tuple(image_size)
  return ml_collections.ConfigDict(dict(
      type="semantic", layout=layout, root=root, split=split,
      image_size=image_size, batch_size=batch_size, format=format,
      tfds_data_dir=tfds_data_dir))


def oass_eval(layout, root, split: str, image_size, *, scale: float = 1.0,
              tau=constants.TAU_ADAPTED, num_pictures: int = 0,
              batch_size: int = 4) -> ml_collections.ConfigDict:
  """The five OASS metrics; tau: ``constants.TAU_ADAPTED`` or ``TAU_SOURCE_ONLY``.

  ``scale``: the image size relative to the reference's 2048x400 panoramas,
  for which its pixel thresholds (stuff area, minimum region) are set.
  """
  c = semantic_eval(layout, root, split, image_size, batch_size)
  c.type = "oass"
  c.tau_m, c.tau_a = (float(t) for t in tau)
  c.stuff_area = max(1, round(constants.STUFF_AREA * scale * scale))
  c.min_region_size = max(1, round(constants.MIN_REGION_SIZE * scale * scale))
  c.one_to_one = False
  c.num_pictures = num_pictures
  c.pictures_dir = "{workdir}/pictures"
  c.picture_scale = 1.0
  return c


def domain_eval(domain: ml_collections.ConfigDict, split: str, make=semantic_eval,
                **kwargs) -> ml_collections.ConfigDict:
  """An evaluator on ``split`` of a ``config.data`` domain (``c.data.target``).

  Its layout, root, image size and format (files or TFDS) follow the
  domain's, overrides included,
  unless set on the evaluator itself (:func:`follow`).
  """
  c = make(follow(domain, "layout"), follow(domain, "root"), split,
           follow(domain, "image_size"), **kwargs)
  c.format = follow(domain, "format")
  c.tfds_data_dir = follow(domain, "tfds_data_dir")
  return c


def use_synthpass(c: ml_collections.ConfigDict, scale: float, source=(300, 40),
                  target=(60, 40)) -> tuple[tuple[int, int], tuple[int, int]]:
  """Points ``c`` at a synthpass set generated into the workdir at ``scale``.

  ``source``/``target`` are (train, val) scene counts. Source crops are
  full-height squares, as the reference's 376x376 KITTI-360 crops. Returns the
  (H, W) image sizes of the source and target domains.
  """
  src = (round(376 * scale), round(1408 * scale))
  tgt = (round(400 * scale), round(2048 * scale))
  c.synthpass.scale = scale
  c.synthpass.num_source = dict(train=source[0], val=source[1])
  c.synthpass.num_target = dict(train=target[0], val=target[1])
  c.data.source.image_size = src
  c.data.target.image_size = tgt
  c.input.crop_size = (src[0], src[0])
  return src, tgt


def runlocal_synthpass(c: ml_collections.ConfigDict) -> None:
  """The ``runlocal`` shrink of a synthpass experiment: a handful of scenes, 4 steps."""
  c.synthpass.num_source = dict(train=16, val=4)
  c.synthpass.num_target = dict(train=4, val=4)
  c.total_steps = 4
  c.checkpoint_every = 2


def synth_evals(data: ml_collections.ConfigDict, make=semantic_eval,
                **kwargs) -> ml_collections.ConfigDict:
  """``source_val`` and ``target_val`` evaluators on the val splits of ``data``'s domains.

  They follow the config's ``data`` section, overrides included
  (:func:`domain_eval`), so a synthpass experiment pointed at real data
  evaluates on real data.
  """
  return ml_collections.ConfigDict(dict(
      source_val=domain_eval(data.source, "val", make, **kwargs),
      target_val=domain_eval(data.target, "val", make, **kwargs)))


def small_model(model: ml_collections.ConfigDict) -> None:
  """A ~2M-parameter network (b0 widths, fewer blocks, 32/64-d head) for CPU runs."""
  model.backbone = "custom"
  model.mit = dict(dims=(32, 64, 128, 160), depths=(1, 1, 2, 1), heads=(1, 2, 4, 5),
                   sr_ratios=(8, 4, 2, 1))
  model.drop_path_rate = 0.05
  model.head_embed_dims = 32
  model.head_channels = 64
  model.fpn_channels = 64


def base() -> ml_collections.ConfigDict:
  """Every key any stage reads, with the reference's defaults."""
  c = ml_collections.ConfigDict()
  c.stage = "train_source"
  c.seed = 0
  # Each stage's `overwrite`: a rerun whose settings differ from those its
  # outputs were made with is refused; True deletes those outputs, and the
  # ones computed from them, and runs afresh (unlock_jax/fingerprint.py).
  c.generate = dict(overwrite=False)
  c.train_source = dict(overwrite=False)

  c.synthpass = dict(out_dir=SYNTH_ROOT, scale=0.25, seed=0,
                     num_source=dict(train=300, val=50),
                     num_target=dict(train=100, val=50),
                     domain_shift=1.0, num_workers=0)
  c.data = data_section("{workdir}/data/KITTI360_APS", "{workdir}/data/BlendPASS",
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
  c.evaluate = dict(checkpoint="{workdir}/train_source/checkpoints",
                    results_dir="{workdir}/evaluate", runs={}, overwrite=False)
  c.evals = ml_collections.ConfigDict()

  # Stage 1: whole-panorama predictions of the source model over the target
  # train split (empty root/layout/image_size: those of config.data.target),
  # or over a folder of the user's own panoramas (`images`). on_bad_image:
  # "skip" an unreadable image (listed in <store_dir>/skipped.json) or "fail".
  # export_dir: also write every prediction at its image's own size for other
  # tools (semantic and COCO panoptic PNGs, COCO JSON with RLE masks;
  # pseudo/export.py), fused at export_tau_m (None: the tau the checkpoint's
  # model_config.json records).
  c.predict = dict(checkpoint="{workdir}/train_source/checkpoints",
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
  c.adapt = dict(
      source_checkpoint="",  # empty: config.predict.checkpoint
      total_steps=10_000, batch_size=4, crop_size=(400, 400), cat_max_ratio=0.75,
      flip=True, max_instances=32, num_workers=0,
      paste=dict(num_candidates=80, max_paste=8, max_area_fraction=1 / 8,
                 min_visible=25, black_fill=True, modal_box_from_visible=True,
                 box_rule="positive"),
      ema_max=0.999, teacher_threshold=0.968, ignore_top=11, ignore_bottom=88,
      rows_crop_height=400, jitter_p=0.8, blur_p=0.5, jitter_strength=0.2,
      reg_weight=10.0, mix_weight=1.0, sem_normalize="all_pixels",
      optim=dict(lr=1e-7, weight_decay=0.01, b1=0.9, b2=0.999, eps=1e-8, power=1.0,
                 end_lr=0.0, warmup_steps=0, match="mmcv", groups=constants.ADAPT_GROUPS),
      log_every=50, checkpoint_every=1000, keep_checkpoints=1, eval_every=200,
      evals=(), out_dir="{workdir}/adapt", overwrite=False)
  # The adapted model's predictions (stage predict_adapted): config.predict
  # with these keys replaced, so its store never mixes with the source model's.
  c.predict_adapted = dict(
      checkpoint=follow(c.adapt, "out_dir") + "/checkpoints",
      store_dir="{workdir}/predict_adapted",
      export_dir="",  # set its own: never predict's export folder
      pictures_dir="{workdir}/predict_adapted/pictures", overwrite=False)
  # Stage 0's compact export (a committable source model, stages/export_source.py).
  c.export_source = dict(out_dir="{workdir}/export_source", dtype="float32",
                         command="", overwrite=False)
  c.debug = dict(kill_after_checkpoint=-1, kill_after_entries=-1)
  return c
