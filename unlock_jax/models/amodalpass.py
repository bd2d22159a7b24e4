"""Assembles the AmodalPASS network: MiT backbone, DAFormer-SimPool head, FPN.

`build(model_cfg)` returns an `AmodalPASS` module whose call maps an NHWC image
batch to named outputs. Submodule names match the reference state-dict prefixes
(`backbone`, `decode_head`, `neck`); the two Mask R-CNN branches (`rpn_head`,
`roi_head`, `rpn_head_amodal`, `roi_head_amodal`) attach to the FPN outputs
when `model_cfg.instance_heads` is set.

Rng collections: "dropout" (dropout, drop-path), "sampling" (R-CNN). BatchNorm
running statistics live in the "batch_stats" collection (decode head only).
"""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from unlock_jax import registry
from unlock_jax.models import daformer_head
from unlock_jax.models import deform
from unlock_jax.models import fpn as fpn_lib
from unlock_jax.models import layers
from unlock_jax.models import mit as mit_lib
from unlock_jax.models.rcnn import branch as rcnn_branch

_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def compute_dtype(model_cfg: ml_collections.ConfigDict):
  """The jnp dtype named by `model_cfg.compute_dtype`."""
  name = model_cfg.compute_dtype
  if name not in _DTYPES:
    raise ValueError(f"model_cfg.compute_dtype must be one of "
                     f"{sorted(_DTYPES)}, got {name!r}")
  return _DTYPES[name]


def _custom_size(model_cfg: ml_collections.ConfigDict) -> mit_lib.MiTSize:
  m = model_cfg.mit
  return mit_lib.MiTSize(tuple(m.dims), tuple(m.depths), tuple(m.heads), tuple(m.sr_ratios))


def _named_size(size: mit_lib.MiTSize):
  return lambda model_cfg: size


# `model_cfg.backbone` -> a function of `model_cfg` giving the MiT's per-stage
# sizes: SegFormer's named sizes, or "custom" (the sizes in `model_cfg.mit`).
BACKBONES = registry.Registry("backbone", {"custom": _custom_size} | {
    name: _named_size(size) for name, size in mit_lib.MIT_SIZES.items()})


def build_backbone(model_cfg: ml_collections.ConfigDict) -> mit_lib.MiT:
  """The MiT backbone described by `model_cfg` (a name of `BACKBONES`)."""
  size = BACKBONES.get(model_cfg.backbone)(model_cfg)
  return mit_lib.MiT(
      dims=size.dims, depths=size.depths, heads=size.heads,
      sr_ratios=size.sr_ratios, deformable=bool(model_cfg.deformable),
      simpool=bool(model_cfg.simpool),
      drop_path_rate=float(model_cfg.drop_path_rate),
      norm_eps=float(model_cfg.norm_eps), deform_impl=model_cfg.deform_impl,
      remat=model_cfg.get("remat", "none"),
      scan_blocks=bool(model_cfg.get("scan_blocks", False)),
      dtype=compute_dtype(model_cfg))


def to_layout(params: dict, model_cfg: ml_collections.ConfigDict) -> dict:
  """``params`` (either backbone layout) in the layout ``model_cfg`` asks for.

  ``model_cfg.scan_blocks``: stacked ``backbone/block{s}`` trees (one
  ``nn.scan`` per stage), else the reference's ``backbone/block{s}_{j}``.
  """
  if "backbone" not in params:
    return params
  bb = params["backbone"]
  if model_cfg.get("scan_blocks", False):
    bb = mit_lib.stack_blocks(bb, build_backbone(model_cfg).depths)
  else:
    bb = mit_lib.unstack_blocks(bb)
  return dict(params, backbone=bb)


def unscanned(model_cfg: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """``model_cfg`` with the reference's block-per-module layout (converters' template)."""
  cfg = ml_collections.ConfigDict(model_cfg.to_dict())
  cfg.scan_blocks = False
  return cfg


class AmodalPASS(nn.Module):
  """Backbone + semantic head + FPN (+ the two R-CNN branches when enabled).

  Attributes:
    config: the model ConfigDict (see `defaults.default_model_config`).
  """
  config: Any

  def setup(self):
    cfg = self.config
    dtype = compute_dtype(cfg)
    self.backbone = build_backbone(cfg)
    self.decode_head = daformer_head.DAFormerHead(
        num_classes=int(cfg.num_classes), embed_dims=int(cfg.head_embed_dims),
        channels=int(cfg.head_channels), dilations=tuple(cfg.dilations),
        dropout=float(cfg.dropout), remat=cfg.get("remat_head", "none"),
        dtype=dtype)
    self.neck = fpn_lib.FPN(channels=int(cfg.fpn_channels),
                            num_outs=int(cfg.fpn_outs), dtype=dtype)
    if cfg.instance_heads:
      # Reference keys rpn_head.* / roi_head.* live under "modal",
      # rpn_head_amodal.* / roi_head_amodal.* under "amodal" (reference_names.py).
      # One compute dtype for the whole network (model.compute_dtype).
      self.modal = rcnn_branch.MaskRCNNBranch(cfg.rcnn, dtype=dtype)
      self.amodal = rcnn_branch.MaskRCNNBranch(cfg.rcnn, dtype=dtype)

  def __call__(self, image: jax.Array, *, train: bool,
               targets: dict | None = None, semantic_only: bool = False,
               bn_train: bool | None = None, circular: bool = False) -> dict:
    """Runs the network.

    Args:
      image: normalised images [B, H, W, 3] float32 (H, W multiples of 32 keep
        every level an exact stride; other sizes follow PyTorch's rounding).
      train: training mode (dropout, drop-path, BatchNorm batch statistics).
      targets: with instance heads, ``{"modal": t, "amodal": t}`` where each
        ``t`` holds ``masks [B,N,H,W]``, ``classes [B,N]``, ``boxes [B,N,4]``,
        ``valid [B,N]`` (see ``MaskRCNNBranch``); selects the loss path.
      semantic_only: skip the R-CNN branches (UNLOCK's teacher and mixed-image
        forwards use only the semantic output).
      bn_train: BatchNorm on batch statistics (default: ``train``), apart
        from dropout/drop-path (the EMA teacher: batch statistics, no dropout).
      circular: static; the images are full-width 360° panoramas, so every
        spatial op pads the columns by wrapping around (column -1 is column
        W-1) and the resizes interpolate across the seam; rows stay
        zero-padded. Same parameters; False (pinhole images, crops) is the
        reference's zero padding.

    Returns:
      {"sem_logits": [B, H/4, W/4, num_classes] float32,
       "sem_features": [B, H/4, W/4, head_channels] decode-head features
         before dropout and the classifier (OPLL prototypes),
       "features": 4 backbone maps (strides 4..32),
       "fpn": `fpn_outs` FPN maps (strides 4..64)}, plus with instance heads
      either "losses" ({"modal": {...}, "amodal": {...}} scalar R-CNN losses,
      when `targets` is given) or "modal"/"amodal" padded detections.
    """
    if image.ndim != 4 or image.shape[-1] != 3:
      raise ValueError(f"image must be [B, H, W, 3], got {image.shape}")
    features = self.backbone(image, train=train, circular=circular)
    sem_logits, sem_features = self.decode_head(
        features, train=train, with_features=True, bn_train=bn_train,
        circular=circular)
    fpn = self.neck(features, circular=circular)
    out = {"sem_logits": sem_logits, "sem_features": sem_features,
           "features": features, "fpn": fpn}
    if not self.config.instance_heads or (semantic_only and not self.is_initializing()):
      return out
    hw = tuple(image.shape[1:3])
    if self.is_initializing() and targets is None:
      # Same parameters as a full call, without tracing proposals/NMS/paste.
      self.modal.init_heads(fpn)
      self.amodal.init_heads(fpn)
    elif targets is not None:
      out["losses"] = {
          b: getattr(self, b)(fpn, hw, train=train, targets=targets[b],
                              circular=circular)
          for b in ("modal", "amodal")}
    else:
      out["modal"] = self.modal(fpn, hw, train=False, circular=circular)
      out["amodal"] = self.amodal(fpn, hw, train=False, circular=circular)
    return out


def build(model_cfg: ml_collections.ConfigDict) -> AmodalPASS:
  """Validates `model_cfg` and returns the (unbound) network."""
  compute_dtype(model_cfg)
  for key in ("remat", "remat_head"):
    try:
      layers.remat_policy(model_cfg.get(key, "none"))
    except ValueError as e:
      raise ValueError(f"model_cfg.{key}: {e}") from None
  BACKBONES.get(model_cfg.backbone)  # an unknown name fails here, naming the known ones
  deform.resolve_impl(model_cfg.deform_impl, 1, 1)
  if int(model_cfg.num_classes) <= 0:
    raise ValueError(f"model_cfg.num_classes must be > 0, got "
                     f"{model_cfg.num_classes}")
  return AmodalPASS(model_cfg)
