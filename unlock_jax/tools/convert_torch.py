r"""Converts a reference PyTorch checkpoint into an Orbax `{params, batch_stats}`.

    pip install -e '.[convert]'   # torch, for reading .pth files
    python -m unlock_jax.tools.convert_torch --checkpoint model.pth --out DIR \
        [--config configs/x.py[:arg]] [--allow_missing] [--trust_checkpoint]

Every leaf of the configured model must come from the checkpoint, else the
conversion fails and lists what is unmatched, missing or mis-shaped;
`--allow_missing` writes anyway, those leaves keeping a fresh initialisation,
and ends with a loud summary of them.

The public ImageNet MiT weights (SegFormer's `mit_b*.pth`: bare backbone keys,
plus a `head.*` classifier) are recognised and fill the backbone only, as
the reference's backbone `init_cfg` loads them (`load_state_dict(strict=
False)`): the classifier is dropped, and what plain MiT lacks (deformable
offset/modulator convs, SimPool) and everything outside the backbone keep a
fresh initialisation. Use the result as `config.init_checkpoint`.

The output folder also gets `model_config.json` (the configured model, its
panorama size and the source-only fusion threshold; `unlock_jax/model_info.py`),
so `unlock_jax.load(out)` needs no config.

Files are read with `torch.load(weights_only=True)`: tensors, plain containers
and the numpy scalars/arrays mmcv's `meta` can carry, nothing else, so a
downloaded checkpoint cannot run code. `--trust_checkpoint` unpickles in full
(only for files from a source you trust).

The reference (mmdet/mmseg, NVlabs SegFormer naming) state dict maps onto our
flax tree mechanically: split the key on ".", glue a list index to the module
before it (`block1.0` -> `block1_0`, `shared_fcs.0` -> `shared_fcs_0`), and
convert the leaf: Linear `weight (out,in)` -> `kernel (in,out)`; Conv
`(O,I,kh,kw)` -> `(kh,kw,I,O)` (depthwise `(C,1,3,3)` -> `(3,3,1,C)`);
ConvTranspose `(in,out,2,2)` -> `(2,2,in,out)`; LayerNorm/BatchNorm `weight` ->
`scale`; BN `running_mean/var` -> `batch_stats` `mean/var`. `shared_fcs_0`
additionally reorders its input from PyTorch's (C,H,W) flatten to NHWC (H,W,C).

The R-CNN branches `rpn_head`/`roi_head` and `rpn_head_amodal`/
`roi_head_amodal` live under `modal/` and `amodal/` in `AmodalPASS`
(`DEFAULT_RENAMES`).

Checkpoint prefixes: `module.` is stripped; if keys start with `model.` only
those are kept (the adapted student) and the prefix is stripped; `ema_model.`,
`source_model.`, `imnet_model.` and `num_batches_tracked` are dropped.

HF transformers SegFormer state dicts (both the v5 `stages.*` naming and the
v4 `encoder.*` naming) are first renamed to the reference naming by
`hf_segformer_to_reference`, with separate key/value projections fused into
`attn.kv`.

Only `read_pth` needs torch; everything else works on numpy arrays.
`--checkpoint` and `--out` may be URLs (`gs://...`): the checkpoint is read
through etils.epath, Orbax writes URLs itself.
"""

from collections.abc import Callable, Mapping
import dataclasses
import io
import os
import pickle
import re
import sys
from typing import Any

from absl import app
from absl import flags
from absl import logging
from etils import epath
import numpy as np

from unlock_jax import fileio
from unlock_jax import model_info
from unlock_jax.models import defaults
from unlock_jax.models import reference_names

IGNORED_PREFIXES = ("ema_model.", "source_model.", "imnet_model.")
# Backbone modules plain (ImageNet) MiT does not have; the reference's
# non-strict backbone load leaves them to their own initialisation.
NOT_IN_IMAGENET_MIT = ("offset_conv", "modulator_conv", "image_pool")
# Where `AmodalPASS` keeps the reference's two R-CNN branches.
DEFAULT_RENAMES = reference_names.REFERENCE_BRANCHES
_BN_LEAVES = {"running_mean": "mean", "running_var": "var"}
# The reference's panorama size (BlendPASS), recorded when the config names none.
REFERENCE_SIZE = (400, 2048)


@dataclasses.dataclass
class Report:
  """What did not convert cleanly.

  Attributes:
    unmatched: torch keys with no flax leaf.
    missing: flax leaves ("params/a/b/kernel") no torch key filled.
    mis_shaped: (torch key, torch shape, converted shape, expected shape).
    converted: number of leaves converted.
    fresh: flax leaves outside what the checkpoint covers by design (the
      non-backbone part of the model, for ImageNet MiT weights): freshly
      initialised, not an error.
    ignored: torch keys dropped by design (the ImageNet classifier).
  """
  unmatched: list[str] = dataclasses.field(default_factory=list)
  missing: list[str] = dataclasses.field(default_factory=list)
  mis_shaped: list[tuple[str, tuple, tuple, tuple]] = dataclasses.field(
      default_factory=list)
  converted: int = 0
  fresh: list[str] = dataclasses.field(default_factory=list)
  ignored: list[str] = dataclasses.field(default_factory=list)

  @property
  def clean(self) -> bool:
    return not (self.unmatched or self.missing or self.mis_shaped)

  def format(self) -> str:
    lines = [f"converted {self.converted} leaves"]
    if self.ignored:
      lines.append(f"{len(self.ignored)} torch keys ignored (ImageNet "
                   f"classifier): {', '.join(self.ignored)}")
    if self.fresh:
      groups: dict[str, int] = {}
      for leaf in self.fresh:
        groups[_group(leaf)] = groups.get(_group(leaf), 0) + 1
      lines.append(f"{len(self.fresh)} leaves freshly initialised (not in "
                   "this kind of checkpoint): " + ", ".join(
                       f"{g} ({n})" for g, n in groups.items()))
    if self.unmatched:
      lines.append(f"{len(self.unmatched)} unmatched torch keys:")
      lines += [f"  {k}" for k in self.unmatched]
    if self.missing:
      lines.append(f"{len(self.missing)} flax leaves not in the checkpoint:")
      lines += [f"  {k}" for k in self.missing]
    if self.mis_shaped:
      lines.append(f"{len(self.mis_shaped)} mis-shaped keys:")
      lines += [f"  {k}: torch {t} -> {c}, expected {e}"
                for k, t, c, e in self.mis_shaped]
    return "\n".join(lines)


def _group(leaf: str) -> str:
  """"params/backbone/block1_0/attn/image_pool/wq/kernel" -> "params/backbone/*/image_pool"."""
  parts = leaf.split("/")
  for name in NOT_IN_IMAGENET_MIT:
    if name in parts:
      return "/".join(parts[:2] + ["*", name])
  return "/".join(parts[:2])


def select_model_state(state_dict: Mapping[str, Any]) -> dict[str, Any]:
  """Applies the prefix rules (module./model./ema_model./...) of the module doc."""
  sd = {}
  for k, v in state_dict.items():
    if k.startswith("module."):
      k = k[len("module."):]
    sd[k] = v
  if any(k.startswith("model.") for k in sd):
    sd = {k[len("model."):]: v for k, v in sd.items()
          if k.startswith("model.")}
  return {k: v for k, v in sd.items()
          if not k.startswith(IGNORED_PREFIXES)
          and not k.endswith("num_batches_tracked")}


def key_to_path(key: str,
                renames: Mapping[str, str] | None = None
                ) -> tuple[tuple[str, ...], str]:
  """`backbone.block1.0.attn.q.weight` -> (("backbone","block1_0","attn","q"), "weight").

  `renames` maps a reference module prefix ("rpn_head_amodal") to the flax
  path prefix it lives under ("amodal/rpn_head"); the longest match wins.
  """
  parts = key.split(".")
  leaf = parts[-1]
  mods: list[str] = []
  for p in parts[:-1]:
    if p.isdigit() and mods:
      mods[-1] = f"{mods[-1]}_{p}"
    else:
      mods.append(p)
  path = "/".join(mods)
  for src in sorted(renames or {}, key=len, reverse=True):
    if path == src or path.startswith(src + "/"):
      path = renames[src] + path[len(src):]
      break
  return tuple(path.split("/")), leaf


def convert_weight(path: tuple[str, ...], array: np.ndarray,
                   roi_size: int = 7) -> np.ndarray:
  """Torch weight layout -> flax kernel layout (see module doc)."""
  a = np.asarray(array)
  if a.ndim == 2:
    if path[-1] == "shared_fcs_0":
      out_dim, in_dim = a.shape
      c = in_dim // (roi_size * roi_size)
      if c * roi_size * roi_size != in_dim:
        raise ValueError(f"{'/'.join(path)}: input dim {in_dim} is not "
                         f"C*{roi_size}*{roi_size}")
      return (a.reshape(out_dim, c, roi_size, roi_size)
              .transpose(2, 3, 1, 0).reshape(in_dim, out_dim))
    return a.T
  if a.ndim == 4:
    if path[-1] == "upsample":  # ConvTranspose2d (in, out, kh, kw)
      return a.transpose(2, 3, 0, 1)
    return a.transpose(2, 3, 1, 0)
  return a


def _flatten(tree: Mapping, prefix: tuple = ()) -> dict[tuple, Any]:
  out = {}
  for k, v in tree.items():
    if isinstance(v, Mapping):
      out.update(_flatten(v, prefix + (k,)))
    else:
      out[prefix + (k,)] = v
  return out


def _unflatten(flat: Mapping[tuple, Any]) -> dict:
  out: dict = {}
  for path, v in flat.items():
    node = out
    for p in path[:-1]:
      node = node.setdefault(p, {})
    node[path[-1]] = v
  return out


def torch_to_flax(state_dict: Mapping[str, Any], template: Mapping[str, Any],
                  *, renames: Mapping[str, str] | None = None,
                  roi_size: int = 7) -> tuple[dict, dict, Report]:
  """Maps a reference state dict onto a flax variables template.

  Args:
    state_dict: torch key -> numpy array (prefix rules applied here).
    template: `{"params": ..., "batch_stats": ...}` with arrays or
      ShapeDtypeStructs as leaves (e.g. from `jax.eval_shape(model.init...)`).
    renames: reference prefix -> flax path prefix (see `key_to_path`).
    roi_size: RoI feature size behind `shared_fcs_0`.

  Returns:
    (params, batch_stats, report). Leaves the checkpoint does not provide are
    taken from the template when it holds arrays and omitted otherwise (the
    report lists them either way).
  """
  sd = select_model_state(state_dict)
  tp = _flatten(template.get("params", {}))
  tb = _flatten(template.get("batch_stats", {}))
  report = Report()
  out_p: dict[tuple, Any] = {}
  out_b: dict[tuple, Any] = {}
  for key in sorted(sd):
    path, leaf = key_to_path(key, renames)
    if leaf in _BN_LEAVES:
      table, dest, name = tb, out_b, _BN_LEAVES[leaf]
    elif leaf == "weight":
      table, dest = tp, out_p
      name = "kernel" if path + ("kernel",) in tp else "scale"
    elif leaf == "bias":
      table, dest, name = tp, out_p, "bias"
    else:
      table, dest, name = {}, out_p, leaf
    target = table.get(path + (name,))
    if target is None and path[-1] == "conv" and len(path) > 1:
      # mmcv ConvModule wraps its conv as `.conv`; a flax layer that is a bare
      # conv (e.g. the R-CNN mask head `convs_i`) has no such level.
      path = path[:-1]
      if leaf == "weight":
        name = "kernel" if path + ("kernel",) in tp else "scale"
      target = table.get(path + (name,))
    if target is None:
      report.unmatched.append(key)
      continue
    arr = np.asarray(sd[key])
    conv = convert_weight(path, arr, roi_size) if name == "kernel" else arr
    if tuple(conv.shape) != tuple(target.shape):
      report.mis_shaped.append((key, tuple(arr.shape), tuple(conv.shape),
                                tuple(target.shape)))
      continue
    dest[path + (name,)] = np.asarray(conv, dtype=target.dtype)
    report.converted += 1
  for coll, table, dest in (("params", tp, out_p),
                            ("batch_stats", tb, out_b)):
    for path, leaf in table.items():
      if path not in dest:
        report.missing.append("/".join((coll,) + path))
        if isinstance(leaf, np.ndarray) or hasattr(leaf, "__array__"):
          dest[path] = np.asarray(leaf)
  return _unflatten(out_p), _unflatten(out_b), report


# HF transformers SegFormer -> reference (NVlabs) names. `{s}` is the 0-based
# HF stage, written back 1-based.
_HF_RULES: list[tuple[str, Callable[[re.Match], str]]] = [
    # transformers >= 5: stages.{s}.*
    (r"stages\.(\d+)\.patch_embeddings\.proj\.(\w+)",
     lambda m: f"patch_embed{int(m[1]) + 1}.proj.{m[2]}"),
    (r"stages\.(\d+)\.patch_embeddings\.layer_norm\.(\w+)",
     lambda m: f"patch_embed{int(m[1]) + 1}.norm.{m[2]}"),
    (r"stages\.(\d+)\.layer_norm\.(\w+)",
     lambda m: f"norm{int(m[1]) + 1}.{m[2]}"),
    (r"stages\.(\d+)\.blocks\.(\d+)\.(.*)",
     lambda m: f"block{int(m[1]) + 1}.{m[2]}.{_hf_block(m[3])}"),
    # transformers 4.x: encoder.*
    (r"encoder\.patch_embeddings\.(\d+)\.proj\.(\w+)",
     lambda m: f"patch_embed{int(m[1]) + 1}.proj.{m[2]}"),
    (r"encoder\.patch_embeddings\.(\d+)\.layer_norm\.(\w+)",
     lambda m: f"patch_embed{int(m[1]) + 1}.norm.{m[2]}"),
    (r"encoder\.layer_norm\.(\d+)\.(\w+)",
     lambda m: f"norm{int(m[1]) + 1}.{m[2]}"),
    (r"encoder\.block\.(\d+)\.(\d+)\.(.*)",
     lambda m: f"block{int(m[1]) + 1}.{m[2]}.{_hf_block(m[3])}"),
]

_HF_BLOCK = {
    "layernorm_before": "norm1", "layernorm_after": "norm2",
    "attention.q_proj": "attn.q", "attention.k_proj": "attn.k",
    "attention.v_proj": "attn.v", "attention.o_proj": "attn.proj",
    "attention.sequence_reduction.sequence_reduction": "attn.sr",
    "attention.sequence_reduction.layer_norm": "attn.norm",
    "layer_norm_1": "norm1", "layer_norm_2": "norm2",
    "attention.self.query": "attn.q", "attention.self.key": "attn.k",
    "attention.self.value": "attn.v", "attention.output.dense": "attn.proj",
    "attention.self.sr": "attn.sr", "attention.self.layer_norm": "attn.norm",
    "mlp.dense1": "mlp.fc1", "mlp.dense2": "mlp.fc2",
    "mlp.fc1": "mlp.fc1", "mlp.fc2": "mlp.fc2",
    "mlp.dwconv.dwconv": "mlp.dwconv.dwconv",
}


def _hf_block(rest: str) -> str:
  module, leaf = rest.rsplit(".", 1)
  if module not in _HF_BLOCK:
    raise KeyError(module)
  return f"{_HF_BLOCK[module]}.{leaf}"


def hf_segformer_to_reference(state_dict: Mapping[str, Any],
                              prefix: str = "backbone."
                              ) -> tuple[dict[str, np.ndarray], list[str]]:
  """Renames an HF SegFormer encoder state dict to reference keys.

  Accepts `SegformerModel` keys and `segformer.`-prefixed ones (the decode
  head of `SegformerForSemanticSegmentation` is not part of UNLOCK and is
  returned as unmatched). Key and value projections are fused into `attn.kv`
  as [key; value] along the output dimension.

  Returns:
    (reference state dict with `prefix` prepended, unmatched HF keys).
  """
  out: dict[str, np.ndarray] = {}
  unmatched = []
  for key, value in state_dict.items():
    k = key[len("segformer."):] if key.startswith("segformer.") else key
    new = None
    for pattern, rule in _HF_RULES:
      m = re.fullmatch(pattern, k)
      if m:
        try:
          new = rule(m)
        except KeyError:
          new = None
        break
    if new is None:
      unmatched.append(key)
      continue
    out[prefix + new] = np.asarray(value)
  for k in [k for k in out if ".attn.k." in k]:
    v = k.replace(".attn.k.", ".attn.v.")
    kv = k.replace(".attn.k.", ".attn.kv.")
    out[kv] = np.concatenate([out.pop(k), out.pop(v)], axis=0)
  return out, unmatched


def import_torch():
  """torch, or an ImportError that says how to install it."""
  try:
    import torch  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise ImportError(
        "reading PyTorch .pth checkpoints needs torch, which unlock_jax does "
        "not install by default: pip install -e '.[convert]' (CPU-only "
        "wheels: add --extra-index-url https://download.pytorch.org/whl/cpu)"
    ) from e
  return torch


def _safe_globals() -> list:
  """What mmcv checkpoints' `meta` holds beyond tensors and plain containers:
  numpy scalars and arrays (e.g. a best score), under numpy 2 and numpy 1 names."""
  from numpy._core import multiarray  # pylint: disable=g-import-not-at-top

  reconstruct = multiarray._reconstruct  # pylint: disable=protected-access
  dtypes = sorted({type(np.dtype(c)) for c in np.typecodes["All"] if c not in "OMmV"},
                  key=lambda t: t.__name__)
  return [reconstruct, multiarray.scalar, np.ndarray, np.dtype, *dtypes,
          (reconstruct, "numpy.core.multiarray._reconstruct"),
          (multiarray.scalar, "numpy.core.multiarray.scalar")]


def load_pth(path: str, *, trust_checkpoint: bool = False) -> Any:
  """`torch.load` of `path`, refusing anything but weights unless trusted.

  Raises:
    ValueError: the file pickles other objects (which could run code on
      loading); names them and the `--trust_checkpoint` way out.
  """
  torch = import_torch()
  if not epath.Path(path).exists():
    raise FileNotFoundError(f"checkpoint {path} does not exist")
  if trust_checkpoint:
    logging.warning("--trust_checkpoint: unpickling %s in full, which runs any "
                    "code the file carries", path)
    with _checkpoint_file(path) as f:
      return torch.load(f, map_location="cpu", weights_only=False)
  try:
    with torch.serialization.safe_globals(_safe_globals()), _checkpoint_file(path) as f:
      return torch.load(f, map_location="cpu", weights_only=True)
  except pickle.UnpicklingError as e:
    try:
      with _checkpoint_file(path) as f:
        found = torch.serialization.get_unsafe_globals_in_checkpoint(f)
    except Exception:  # pylint: disable=broad-except
      found = []
    allowed = {g if isinstance(g, str) else f"{g.__module__}.{g.__qualname__}"
               for g in (x[1] if isinstance(x, tuple) else x for x in _safe_globals())}
    refused = [g for g in found if g not in allowed] or [
        f"objects torch's safe loader refused ({type(e).__name__})"]
    raise ValueError(
        f"{path} was not loaded: besides weights it pickles "
        f"{', '.join(refused)}, and unpickling that can run arbitrary code. "
        "If the file comes from a source you trust, rerun with "
        "--trust_checkpoint.") from None


def _checkpoint_file(path: str):
  """`path` opened for torch, which seeks: a URL is read into memory first."""
  if fileio.is_url(path):
    return io.BytesIO(epath.Path(path).read_bytes())
  return epath.Path(path).open("rb")


def read_pth(path: str, *, trust_checkpoint: bool = False) -> dict[str, np.ndarray]:
  """Reads a `.pth` (mmcv dict with `state_dict`, or a bare state dict)."""
  torch = import_torch()
  ckpt = load_pth(path, trust_checkpoint=trust_checkpoint)
  if isinstance(ckpt, Mapping) and "state_dict" in ckpt:
    ckpt = ckpt["state_dict"]
  elif isinstance(ckpt, Mapping) and "model" in ckpt and isinstance(
      ckpt["model"], Mapping):
    ckpt = ckpt["model"]
  if not isinstance(ckpt, Mapping):
    raise ValueError(f"{path}: expected a state dict, got {type(ckpt)}")
  out = {}
  for k, v in ckpt.items():
    if hasattr(v, "detach"):
      v = v.detach().cpu()
      if v.dtype == torch.bfloat16 or v.dtype == torch.float16:
        v = v.float()
      out[k] = v.numpy()
  return out


def load_model_config(spec: str | None):
  """`configs/x.py[:arg]` -> (its `get_config(arg).model`, the panorama size it
  predicts at, when the config says); None -> (defaults, the reference's 400x2048)."""
  if not spec:
    return defaults.default_model_config(), REFERENCE_SIZE
  cfg = model_info.config_from_file(spec)
  if "model" not in cfg:
    raise ValueError(f"{spec.partition(':')[0]}: get_config() has no `model` section")
  size = model_info.panorama_size(cfg) if "predict" in cfg and "data" in cfg else REFERENCE_SIZE
  return cfg.model, size


def is_imagenet_mit(state_dict: Mapping[str, Any]) -> bool:
  """SegFormer's ImageNet `mit_b*.pth`: bare `patch_embed1.`/`block1.` keys."""
  return any(k.startswith("patch_embed1.") for k in state_dict) and not any(
      k.startswith("backbone.") for k in state_dict)


class ConversionError(ValueError):
  """The checkpoint does not fill the configured model (see the report)."""


def convert(checkpoint: str, out_dir: str, *, config: str | None = None,
            allow_missing: bool = False, trust_checkpoint: bool = False,
            renames: Mapping[str, str] | None = None) -> Report:
  """Reads `checkpoint`, converts it for the configured model, saves Orbax.

  Fails (ConversionError, nothing written) unless every leaf the checkpoint
  should fill is filled exactly; with `allow_missing` the rest keeps a fresh
  initialisation (the report lists it). ImageNet MiT weights fill the backbone
  only (module doc). `renames` defaults to `DEFAULT_RENAMES` (R-CNN branches
  under `modal`/`amodal`).
  """
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top

  from unlock_jax.evaluation import report as report_lib  # pylint: disable=g-import-not-at-top
  from unlock_jax.models import amodalpass  # pylint: disable=g-import-not-at-top

  out_dir = fileio.absolute(out_dir)
  if epath.Path(out_dir).exists():
    raise FileExistsError(f"output {out_dir} already exists")
  model_cfg, image_size = load_model_config(config)
  model = amodalpass.build(amodalpass.unscanned(model_cfg))  # the reference's names
  roi_size = int(model_cfg.rcnn.roi_size) if model_cfg.instance_heads else 7
  x = jnp.zeros((1, 64, 64, 3), jnp.float32)
  init = lambda: model.init({"params": jax.random.key(0),  # noqa: E731
                             "dropout": jax.random.key(1)}, x, train=False)
  template = dict(jax.eval_shape(init))
  sd = select_model_state(read_pth(checkpoint, trust_checkpoint=trust_checkpoint))
  backbone_only = is_imagenet_mit(sd)
  ignored = sorted(k for k in sd if backbone_only and k.startswith("head."))
  if backbone_only:
    logging.info("%s: ImageNet MiT weights, loaded into the backbone", checkpoint)
    sd = {f"backbone.{k}": v for k, v in sd.items() if not k.startswith("head.")}
  params, stats, report = torch_to_flax(
      sd, template, renames=DEFAULT_RENAMES if renames is None else renames,
      roi_size=roi_size)
  report.ignored = ignored
  if backbone_only:
    expected = [m for m in report.missing
                if not m.startswith("params/backbone/")
                or set(m.split("/")) & set(NOT_IN_IMAGENET_MIT)]
    report.fresh = expected
    report.missing = [m for m in report.missing if m not in set(expected)]
  if not report.clean and not allow_missing:
    raise ConversionError(
        f"{checkpoint} does not fill the configured model, nothing written "
        f"(--allow_missing writes it with fresh values there):\n{report.format()}")
  if report.missing or report.fresh:
    # Fill what the checkpoint lacks from a real initialisation.
    fresh = jax.jit(init)()
    params = _fill(params, fresh["params"])
    stats = _fill(stats, fresh.get("batch_stats", {}))
  params = amodalpass.to_layout(params, model_cfg)  # scan_blocks: stacked per stage
  ckptr = ocp.StandardCheckpointer()
  # Orbax writes into a temporary folder and renames it when complete.
  ckptr.save(out_dir, {"params": params, "batch_stats": stats})
  ckptr.wait_until_finished()
  # The architecture beside the weights (unlock_jax.load); the source-only
  # fusion threshold, which unlock_jax.load(tau_m=...) overrides for an adapted model.
  model_info.write(out_dir, model_cfg, image_size, report_lib.TAU_SOURCE_ONLY, "convert_torch")
  return report


def _fill(tree: dict, fresh: Mapping) -> dict:
  flat = _flatten(tree)
  for path, leaf in _flatten(fresh).items():
    flat.setdefault(path, np.asarray(leaf))
  return _unflatten(flat)


def define_flags(values: flags.FlagValues = flags.FLAGS) -> None:
  """The command line's flags; defined only when run as a program (or by a test
  on its own FlagValues), so importing this module next to main.py, which has
  its own --config, registers nothing."""
  flags.DEFINE_string("checkpoint", None, "reference .pth file", flag_values=values)
  flags.DEFINE_string("out", None, "output Orbax checkpoint folder", flag_values=values)
  flags.DEFINE_bool(
      "allow_missing", False, "write the checkpoint even if torch keys are "
      "unmatched or flax leaves missing/mis-shaped (those keep fresh values)",
      flag_values=values)
  flags.DEFINE_bool(
      "trust_checkpoint", False, "unpickle the .pth in full (runs any code it "
      "carries): only for files from a source you trust", flag_values=values)
  flags.DEFINE_string("config", None, "experiment config file[:arg] whose `model` "
                      "section describes the network", flag_values=values)


def main(argv, values: flags.FlagValues = flags.FLAGS):
  f = values
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments {argv[1:]}")
  if not f.checkpoint or not f.out:
    raise app.UsageError("--checkpoint and --out are required")
  try:
    report = convert(f.checkpoint, f.out, config=f.config,
                     allow_missing=f.allow_missing,
                     trust_checkpoint=f.trust_checkpoint)
  except (ImportError, OSError, ValueError) as e:  # ConversionError included
    print(f"convert_torch: {e}", file=sys.stderr)
    return 1
  print(report.format())
  print(f"wrote {fileio.absolute(f.out)}")
  if not report.clean:
    print(f"\nWARNING (--allow_missing): {len(report.missing)} model leaves are "
          "NOT from the checkpoint and keep fresh random values (missing or "
          f"mis-shaped); {len(report.unmatched)} torch keys were not used. "
          "See the lists above.", file=sys.stderr)
  return 0


if __name__ == "__main__":
  define_flags()
  app.run(main)
