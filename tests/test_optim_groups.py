"""Optimiser groups: every parameter of the real B5 network against hand-written
tables of the reference's source and adaptation recipes; mmcv's longest-key-first
rule; the multipliers reaching the optax update."""
import re

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from configs import default
from unlock_jax import constants
from unlock_jax.models import amodalpass
from unlock_jax.models import variables as variables_lib
from unlock_jax.tools import convert_torch
from unlock_jax.train import optim

# What the reference does to each part of the network, written from its
# configs (docs/method.md §7.6, experiments.py pmult=True), not from optim.py's rule.
# Rows are disjoint; every parameter must match exactly one.
_NORM = r"^backbone/(.+/)?(norm\d?|norm_patches)/(scale|bias)$"
_PARTS = {
    "decode_head": r"^decode_head/",
    "neck": r"^neck/",
    "rcnn": r"^(modal|amodal)/(rpn_head|roi_head)/",
    "backbone_norm": _NORM,
    "backbone_rest": r"^backbone/(?!(.+/)?(norm\d?|norm_patches)/(scale|bias)$)",
}
SOURCE_TABLE = {"decode_head": "head", "neck": "neck", "rcnn": "head",
                "backbone_norm": "norm", "backbone_rest": "default"}
ADAPT_TABLE = {"decode_head": "decode_head", "neck": "neck", "rcnn": "head",
               "backbone_norm": "norm", "backbone_rest": "default"}
# (lr_mult, wd_mult) per group of each recipe.
SOURCE_MULTS = {"head": (10.0, 1.0), "neck": (10.0, 1.0), "norm": (1.0, 0.0)}
ADAPT_MULTS = {"decode_head": (1e4, 1.0), "neck": (10.0, 1.0), "head": (0.1, 1.0),
               "norm": (1.0, 0.0)}


def _flat(tree):
  leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
  return {"/".join(str(getattr(k, "key", k)) for k in path): v for path, v in leaves}


@pytest.fixture(scope="module")
def b5_params():
  cfg = default.get_config().model
  cfg.instance_heads = True
  model = amodalpass.build(cfg)
  return jax.eval_shape(
      lambda r: variables_lib.init_variables(model, r, (1, 64, 64, 3))["params"],
      jax.random.key(0))


def _part(path):
  hits = [part for part, rx in _PARTS.items() if re.search(rx, path)]
  assert len(hits) == 1, (path, hits)
  return hits[0]


@pytest.mark.parametrize("groups,table,mults", [
    (constants.SOURCE_GROUPS, SOURCE_TABLE, SOURCE_MULTS),
    (constants.ADAPT_GROUPS, ADAPT_TABLE, ADAPT_MULTS)])
def test_b5_groups_match_reference_tables(b5_params, groups, table, mults):
  assert {g[0]: (g[2], g[3]) for g in groups} == mults
  labels = _flat(optim.group_labels(b5_params, groups))
  parts = {path: _part(path) for path in labels}
  wrong = {p: (g, table[parts[p]]) for p, g in labels.items() if g != table[parts[p]]}
  assert not wrong, wrong
  counts = {part: sum(v == part for v in parts.values()) for part in _PARTS}
  # Every row is exercised, and the norms are the backbone's LayerNorms:
  # 52 blocks x (norm1, norm2, image_pool/norm_patches) + attn/norm in the 49
  # blocks with spatial reduction + 4 patch-embed + 4 stage norms, x2 leaves.
  assert min(counts.values()) > 0, counts
  assert counts["backbone_norm"] == 2 * (52 * 3 + 49 + 4 + 4)


def test_b5_names_are_the_converters_reference_names(b5_params):
  """reference_name inverts convert_torch.key_to_path on every parameter."""
  assert {v: k for k, v in optim._BRANCHES.items()} == convert_torch.DEFAULT_RENAMES
  for path in _flat(b5_params):
    name = optim.reference_name(path)
    mods, leaf = convert_torch.key_to_path(name, convert_torch.DEFAULT_RENAMES)
    assert "/".join(mods) == path.rsplit("/", 1)[0], (path, name)
    assert leaf == optim._LEAVES.get(path.rsplit("/", 1)[1], path.rsplit("/", 1)[1])
  assert (optim.reference_name("amodal/roi_head/bbox_head/shared_fcs_0/kernel")
          == "roi_head_amodal.bbox_head.shared_fcs.0.weight")
  assert (optim.reference_name("backbone/block3_17/attn/norm/scale")
          == "backbone.block3.17.attn.norm.weight")


def test_configs_use_the_source_recipe():
  from configs.k2b import source_b5  # pylint: disable=g-import-not-at-top
  from configs.synth import source_full  # pylint: disable=g-import-not-at-top
  for cfg in (default.get_config(), source_b5.get_config(), source_full.get_config()):
    assert cfg.optim.match == "mmcv"
    assert (cfg.optim.weight_decay, cfg.optim.power, cfg.optim.end_lr) == (0.01, 1.0, 0.0)
  for cfg in (default.get_config(), source_b5.get_config()):
    assert tuple(map(tuple, cfg.optim.groups)) == constants.SOURCE_GROUPS
  # The CPU config's base lr is 10x the reference's: only the decode head
  # gets x10 there, so the R-CNN heads keep the reference's head lr (6e-4).
  cfg = source_full.get_config()
  assert cfg.optim.lr == 6e-4
  assert tuple(map(tuple, cfg.optim.groups)) == (
      ("decode_head", "decode_head", 10.0, 1.0), ("norm", "norm", 1.0, 0.0))


def test_longest_key_wins_whatever_the_order():
  tree = {"decode_head": {"conv_seg": {"kernel": 0}, "image_pool_1": {"norm_patches": {"scale": 0}}},
          "modal": {"rpn_head": {"rpn_conv": {"kernel": 0}}},
          "amodal": {"rpn_head": {"rpn_conv": {"kernel": 0}}},
          "backbone": {"norm1": {"scale": 0}, "block1_0": {"attn": {"q": {"kernel": 0}}}}}
  groups = (("head", "head", 0.1, 1.0), ("norm", "norm", 1.0, 0.0),
            ("amodal", "_amodal", 2.0, 1.0), ("decode_head", "decode_head", 1e4, 1.0),
            ("block", "block1.0.", 3.0, 1.0))
  want = {"decode_head/conv_seg/kernel": "decode_head",
          "decode_head/image_pool_1/norm_patches/scale": "decode_head",
          "modal/rpn_head/rpn_conv/kernel": "head",
          "amodal/rpn_head/rpn_conv/kernel": "amodal",
          "backbone/norm1/scale": "norm",
          "backbone/block1_0/attn/q/kernel": "block"}
  assert _flat(optim.group_labels(tree, groups)) == want
  assert _flat(optim.group_labels(tree, groups[::-1])) == want
  # Equal lengths: alphabetical, as mmcv (``head`` before ``norm``).
  assert optim.assign("x.head.norm", (("n", "norm", 1, 0), ("h", "head", 1, 1))) == "h"
  assert optim.assign("backbone.q.weight", groups) == "default"


@pytest.mark.parametrize("groups,msg", [
    ((("head", r"^decode_head/", 10.0, 1.0),), "not a substring"),
    ((("head", "decode_head/", 10.0, 1.0),), "not a substring"),
    ((("a", "head", 1.0, 1.0), ("b", "head", 2.0, 1.0)), "keys must be unique"),
    ((("default", "head", 1.0, 1.0),), "names must be unique")])
def test_bad_groups_fail(groups, msg):
  with pytest.raises(ValueError, match=msg):
    optim.group_labels({"decode_head": {"kernel": 0}}, groups)


def test_multipliers_reach_the_update():
  """First AdamW step: |update| = lr·mult for unit gradients; decay lr·wd·mult·θ."""
  lr, wd = 1e-3, 0.1
  cfg = ml_collections.ConfigDict(dict(
      lr=lr, weight_decay=wd, b1=0.9, b2=0.999, eps=1e-8, power=1.0, end_lr=0.0,
      warmup_steps=0, match="mmcv", groups=constants.ADAPT_GROUPS))
  params = {"decode_head": {"w": jnp.ones(3)}, "neck": {"w": jnp.ones(3)},
            "modal": {"roi_head": {"w": jnp.ones(3)}},
            "backbone": {"norm1": {"scale": jnp.ones(3)}, "q": {"kernel": jnp.ones(3)}}}
  tx, sched = optim.make(cfg, 10, params)
  assert float(sched(0)) == pytest.approx(lr)
  mult = {"decode_head/w": (1e4, 1.0), "neck/w": (10.0, 1.0),
          "modal/roi_head/w": (0.1, 1.0), "backbone/norm1/scale": (1.0, 0.0),
          "backbone/q/kernel": (1.0, 1.0)}
  ones = jax.tree.map(jnp.ones_like, params)
  zeros = jax.tree.map(jnp.zeros_like, params)
  # Unit gradients, decay off: the Adam step is lr·lr_mult.
  cfg0 = ml_collections.ConfigDict(cfg.to_dict() | {"weight_decay": 0.0})
  tx0, _ = optim.make(cfg0, 10, params)
  step = _flat(tx0.update(ones, tx0.init(params), params)[0])
  # Zero gradients: only the decoupled decay, lr·lr_mult·wd·wd_mult·θ.
  decay = _flat(tx.update(zeros, tx.init(params), params)[0])
  for path, (lm, wm) in mult.items():
    np.testing.assert_allclose(step[path], -lr * lm, rtol=1e-5, err_msg=path)
    np.testing.assert_allclose(decay[path], -lr * lm * wd * wm, rtol=1e-5, err_msg=path)
  assert not np.any(decay["backbone/norm1/scale"])


def test_match_must_be_mmcv():
  cfg = ml_collections.ConfigDict(dict(
      lr=1.0, weight_decay=0.0, b1=0.9, b2=0.999, eps=1e-8, power=1.0, end_lr=0.0,
      warmup_steps=0, match="regex_first", groups=()))
  with pytest.raises(ValueError, match="mmcv"):
    optim.make(cfg, 10, {"w": jnp.ones(2)})
