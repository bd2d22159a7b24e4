"""Config building blocks shared by the experiment files.

Each experiment file's ``get_config(arg)`` starts from ``configs/default.py``
(every key, the reference's values), sets its sections with these helpers,
and ends with the ``runlocal`` shrink, as big_vision configs do.
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
  ``source.hidden_gt``: train on the split's hidden ground truth, which only
  synthpass's BlendPASS train split has (the target oracle of
  configs/synth/benchmark.py).
  """
  return ml_collections.ConfigDict(dict(
      source=dict(layout="kitti360aps", root=layout_root_source, split="train",
                  image_size=tuple(source_size), format="files", tfds_data_dir="",
                  hidden_gt=False),
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
              batch_size: int = 4, panorama: bool = True) -> ml_collections.ConfigDict:
  """The five OASS metrics; tau: ``constants.TAU_ADAPTED`` or ``TAU_SOURCE_ONLY``.

  ``scale``: the image size relative to the reference's 2048x400 panoramas,
  for which its pixel thresholds (stuff area, minimum region) are set.
  ``panorama``: 360° images, whose seam metrics (``evaluation/seam.py``) are
  computed beside the five; a pinhole image has no seam.
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
  # band_frac: the seam band's share of the width at each end; roll: one more
  # (semantic-only) forward per panorama, for the roll consistency.
  c.seam = ml_collections.ConfigDict(dict(enabled=panorama, band_frac=1 / 16,
                                          roll=panorama))
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
  c.seam.wrap_cols = model_defaults.wrap_cols_for(tgt[1])
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
  evaluates on real data. ``source_val`` has no seam metrics (pinhole crops).
  """
  evals = ml_collections.ConfigDict(dict(
      source_val=domain_eval(data.source, "val", make, **kwargs),
      target_val=domain_eval(data.target, "val", make, **kwargs)))
  if "seam" in evals.source_val:  # the source's pinhole crops have no seam
    evals.source_val.seam.enabled = evals.source_val.seam.roll = False
  return evals


def small_model(model: ml_collections.ConfigDict) -> None:
  """A ~2M-parameter network (b0 widths, fewer blocks, 32/64-d head) for CPU runs."""
  model.backbone = "custom"
  model.mit = dict(dims=(32, 64, 128, 160), depths=(1, 1, 2, 1), heads=(1, 2, 4, 5),
                   sr_ratios=(8, 4, 2, 1))
  model.drop_path_rate = 0.05
  model.head_embed_dims = 32
  model.head_channels = 64
  model.fpn_channels = 64
