"""convert_torch: key mapping, layouts, prefixes, strict mode, Orbax output.

The synthetic checkpoints are built here from our own template by the inverse
rules (PyTorch layouts written out explicitly), so the converter must undo
them exactly.
"""

import re
import sys
import zipfile

import jax
from absl import flags
import numpy as np
import pytest

from unlock_jax import model_info
from unlock_jax.models import amodalpass
from unlock_jax.models import defaults
from unlock_jax.tools import convert_torch


def _template(instance_heads=False):
  cfg = defaults.tiny_model_config()
  cfg.instance_heads = instance_heads
  model = amodalpass.build(cfg)
  x = np.zeros((1, 64, 64, 3), np.float32)
  shapes = jax.eval_shape(lambda: model.init(
      {"params": jax.random.key(0), "dropout": jax.random.key(1)}, x,
      train=False))
  rng = np.random.default_rng(0)
  return jax.tree.map(
      lambda s: rng.normal(size=s.shape).astype(np.float32), dict(shapes))


def _flat(tree, prefix=()):
  for k, v in tree.items():
    if isinstance(v, dict):
      yield from _flat(v, prefix + (k,))
    else:
      yield prefix + (k,), v


_BRANCHES = {("modal", "rpn_head"): "rpn_head",
             ("modal", "roi_head"): "roi_head",
             ("amodal", "rpn_head"): "rpn_head_amodal",
             ("amodal", "roi_head"): "roi_head_amodal"}


def _torch_key(path, leaf):
  if tuple(path[:2]) in _BRANCHES:
    path = (_BRANCHES[tuple(path[:2])],) + tuple(path[2:])
  mods = [re.sub(r"_(\d+)$", r".\1", p) for p in path]
  if "mask_head" in path and path[-1].startswith("convs_"):
    mods.append("conv")  # reference mask_head.convs.i.conv (mmcv ConvModule)
  return ".".join(mods + [leaf])


def _to_torch_layout(path, leaf, a):
  """Our kernel layouts -> PyTorch's, written independently of the tool."""
  if leaf != "kernel":
    return a
  if path[-1] == "shared_fcs_0":  # NHWC (h, w, c) flatten -> torch (c, h, w)
    c = a.shape[0] // 49
    return np.ascontiguousarray(
        a.reshape(7, 7, c, -1).transpose(3, 2, 0, 1).reshape(-1, 49 * c))
  if path[-1] == "upsample":  # (kh, kw, in, out) -> ConvTranspose (in, out, kh, kw)
    return np.ascontiguousarray(a.transpose(2, 3, 0, 1))
  if a.ndim == 2:  # Dense (in, out) -> Linear (out, in)
    return np.ascontiguousarray(a.T)
  # Conv (kh, kw, in, out) -> (out, in, kh, kw)
  return np.ascontiguousarray(np.moveaxis(a, (0, 1, 2, 3), (2, 3, 1, 0)))


def _synthetic_state_dict(variables):
  sd = {}
  names = {"kernel": "weight", "scale": "weight", "bias": "bias"}
  for path, a in _flat(variables["params"]):
    sd[_torch_key(path[:-1], names[path[-1]])] = _to_torch_layout(
        path[:-1], path[-1], a)
  for path, a in _flat(variables["batch_stats"]):
    leaf = {"mean": "running_mean", "var": "running_var"}[path[-1]]
    sd[_torch_key(path[:-1], leaf)] = a
    sd[_torch_key(path[:-1], "num_batches_tracked")] = np.array(7)
  return sd


def _assert_trees_equal(a, b):
  fa, fb = dict(_flat(a)), dict(_flat(b))
  assert fa.keys() == fb.keys()
  for k in fa:
    np.testing.assert_array_equal(fa[k], fb[k], err_msg="/".join(k))


def test_round_trip_reference_naming():
  variables = _template()
  sd = _synthetic_state_dict(variables)
  assert "backbone.block1.0.attn.kv.weight" in sd
  assert "decode_head.fuse_layer.aspp_modules.1.depthwise_conv.bn.running_var" in sd
  assert sd["backbone.patch_embed2.offset_conv.weight"].shape == (18, 8, 3, 3)
  assert sd["backbone.block1.0.mlp.dwconv.dwconv.weight"].shape == (32, 1, 3, 3)
  params, stats, report = convert_torch.torch_to_flax(sd, variables)
  assert report.clean, report.format()
  _assert_trees_equal(params, variables["params"])
  _assert_trees_equal(stats, variables["batch_stats"])


def test_round_trip_with_instance_heads():
  variables = _template(instance_heads=True)
  sd = _synthetic_state_dict(variables)
  for key in ("rpn_head.rpn_conv.weight", "rpn_head_amodal.rpn_cls.bias",
              "roi_head.bbox_head.shared_fcs.0.weight",
              "roi_head_amodal.mask_head.upsample.weight",
              "roi_head.mask_head.convs.3.conv.weight"):
    assert key in sd, key
  params, stats, report = convert_torch.torch_to_flax(
      sd, variables, renames=convert_torch.DEFAULT_RENAMES)
  assert report.clean, report.format()
  _assert_trees_equal(params, variables["params"])
  _assert_trees_equal(stats, variables["batch_stats"])


def test_prefixes_model_ema_source_module():
  variables = _template()
  sd = _synthetic_state_dict(variables)
  wrapped = {}
  for k, v in sd.items():
    wrapped["module.model." + k] = v
    wrapped["module.ema_model." + k] = v + 1  # must be ignored
    wrapped["module.source_model." + k] = v - 1
  wrapped["module.imnet_model.backbone.norm1.weight"] = np.zeros(8)
  params, _, report = convert_torch.torch_to_flax(wrapped, variables)
  assert report.clean, report.format()
  _assert_trees_equal(params, variables["params"])
  # Without a `model.` prefix the bare keys are used and the others dropped.
  bare = dict(sd)
  bare["ema_model.backbone.norm1.weight"] = np.zeros(8)
  _, _, report = convert_torch.torch_to_flax(bare, variables)
  assert report.clean, report.format()


def test_report_lists_unmatched_missing_and_misshaped():
  variables = _template()
  sd = _synthetic_state_dict(variables)
  sd["backbone.block9.0.attn.q.weight"] = np.zeros((8, 8))
  del sd["neck.fpn_convs.2.conv.bias"]
  sd["decode_head.conv_seg.weight"] = np.zeros((19, 16, 1, 1))
  params, _, report = convert_torch.torch_to_flax(sd, variables)
  assert report.unmatched == ["backbone.block9.0.attn.q.weight"]
  assert sorted(report.missing) == ["params/decode_head/conv_seg/kernel",
                                    "params/neck/fpn_convs_2/conv/bias"]
  assert report.mis_shaped == [("decode_head.conv_seg.weight", (19, 16, 1, 1),
                                (1, 1, 16, 19), (1, 1, 16, 18))]
  text = report.format()
  for key in ("block9.0.attn.q.weight", "fpn_convs_2/conv/bias",
              "conv_seg.weight"):
    assert key in text
  # Missing leaves fall back to the template's arrays.
  np.testing.assert_array_equal(
      params["neck"]["fpn_convs_2"]["conv"]["bias"],
      variables["params"]["neck"]["fpn_convs_2"]["conv"]["bias"])


def test_shared_fcs_flatten_order_and_transposed_conv():
  rng = np.random.default_rng(1)
  c, s, out = 3, 7, 5
  kernel = rng.normal(size=(s * s * c, out)).astype(np.float32)  # NHWC order
  # torch weight[o, c*49 + h*7 + w] = kernel[(h*7 + w)*C + c, o]
  torch_w = np.zeros((out, c * s * s), np.float32)
  for ch in range(c):
    for h in range(s):
      for w in range(s):
        torch_w[:, ch * s * s + h * s + w] = kernel[(h * s + w) * c + ch]
  up = rng.normal(size=(2, 2, 4, 6)).astype(np.float32)  # (kh, kw, in, out)
  torch_up = np.ascontiguousarray(up.transpose(2, 3, 0, 1))  # (in, out, kh, kw)
  template = {"params": {"roi_head": {
      "bbox_head": {"shared_fcs_0": {"kernel": np.zeros_like(kernel)}},
      "mask_head": {"upsample": {"kernel": np.zeros_like(up)}}}}}
  sd = {"roi_head.bbox_head.shared_fcs.0.weight": torch_w,
        "roi_head.mask_head.upsample.weight": torch_up}
  params, _, report = convert_torch.torch_to_flax(sd, template)
  assert report.clean, report.format()
  np.testing.assert_array_equal(
      params["roi_head"]["bbox_head"]["shared_fcs_0"]["kernel"], kernel)
  np.testing.assert_array_equal(
      params["roi_head"]["mask_head"]["upsample"]["kernel"], up)
  # Functional check: same features, both flatten orders, same output.
  feat = rng.normal(size=(s, s, c)).astype(np.float32)
  np.testing.assert_allclose(feat.reshape(-1) @ kernel,
                             torch_w @ feat.transpose(2, 0, 1).reshape(-1),
                             rtol=1e-5, atol=1e-5)


def test_renames_map_reference_prefixes():
  path, leaf = convert_torch.key_to_path(
      "roi_head_amodal.bbox_head.shared_fcs.1.bias",
      {"roi_head_amodal": "amodal/roi_head", "roi_head": "modal/roi_head"})
  assert path == ("amodal", "roi_head", "bbox_head", "shared_fcs_1")
  assert leaf == "bias"
  path, _ = convert_torch.key_to_path(
      "roi_head.bbox_head.fc_cls.weight",
      {"roi_head_amodal": "amodal/roi_head", "roi_head": "modal/roi_head"})
  assert path == ("modal", "roi_head", "bbox_head", "fc_cls")


_TINY_CFG = (
    "import ml_collections\n"
    "from unlock_jax.models import defaults\n"
    "def get_config(arg=None):\n"
    "  return ml_collections.ConfigDict(\n"
    "      dict(model=defaults.tiny_model_config()))\n")


@pytest.fixture
def cfg_file(tmp_path):
  path = tmp_path / "tiny_cfg.py"
  path.write_text(_TINY_CFG)
  return str(path)


def _save(torch, sd, path, **extra):
  torch.save({"state_dict": {k: torch.from_numpy(np.asarray(v)) for k, v in sd.items()},
              **extra}, path)


def test_convert_writes_orbax_and_fails_by_default(tmp_path, cfg_file):
  torch = pytest.importorskip("torch")
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top

  variables = _template()
  sd = _synthetic_state_dict(variables)
  pth = tmp_path / "model.pth"
  _save(torch, sd, pth, meta={"mmcv_version": "1.3.7", "CLASSES": ("road",),
                              "iter": 4000, "best_score": np.float64(0.5)})
  out = tmp_path / "converted"
  report = convert_torch.convert(str(pth), str(out), config=cfg_file)
  assert report.clean
  restored = ocp.StandardCheckpointer().restore(str(out))
  _assert_trees_equal(restored["params"], variables["params"])
  _assert_trees_equal(restored["batch_stats"], variables["batch_stats"])
  rec = model_info.read(str(out))  # the architecture beside the weights
  assert rec["model"].to_dict() == defaults.tiny_model_config().to_dict()
  assert rec["image_size"] == convert_torch.REFERENCE_SIZE and rec["written_by"] == "convert_torch"

  bad = dict(sd)
  bad["decode_head.extra.weight"] = np.zeros(3)
  bad["neck.lateral_convs.0.conv.weight"] = np.zeros((16, 9, 1, 1))
  del bad["decode_head.conv_seg.bias"]
  _save(torch, bad, tmp_path / "bad.pth")
  with pytest.raises(convert_torch.ConversionError) as err:
    convert_torch.convert(str(tmp_path / "bad.pth"), str(tmp_path / "o2"),
                          config=cfg_file)
  for key in ("decode_head.extra.weight", "neck.lateral_convs.0.conv.weight",
              "params/decode_head/conv_seg/bias", "--allow_missing"):
    assert key in str(err.value)
  assert not (tmp_path / "o2").exists()
  with pytest.raises(FileExistsError):
    convert_torch.convert(str(pth), str(out), config=cfg_file)

  # --allow_missing: written; the leaves the file lacks are freshly initialised,
  # everything else comes from the file.
  report = convert_torch.convert(str(tmp_path / "bad.pth"), str(tmp_path / "o3"),
                                 config=cfg_file, allow_missing=True)
  assert not report.clean
  assert sorted(report.missing) == ["params/decode_head/conv_seg/bias",
                                    "params/neck/lateral_convs_0/conv/kernel"]
  restored = ocp.StandardCheckpointer().restore(str(tmp_path / "o3"))
  np.testing.assert_array_equal(restored["params"]["decode_head"]["conv_seg"]["bias"],
                                np.zeros(18))  # a conv bias starts at zero
  np.testing.assert_array_equal(restored["params"]["decode_head"]["conv_seg"]["kernel"],
                                variables["params"]["decode_head"]["conv_seg"]["kernel"])


def test_command_line_exit_codes_and_summary(tmp_path, cfg_file, capsys):
  torch = pytest.importorskip("torch")

  sd = _synthetic_state_dict(_template())
  del sd["decode_head.conv_seg.bias"]
  _save(torch, sd, tmp_path / "partial.pth")
  args = [f"--checkpoint={tmp_path / 'partial.pth'}", f"--config={cfg_file}"]

  def run(*extra):
    values = flags.FlagValues()
    convert_torch.define_flags(values)
    values(["convert_torch", *args, *extra])
    return convert_torch.main(["convert_torch"], values)

  assert run(f"--out={tmp_path / 'a'}") == 1
  err = capsys.readouterr().err
  assert "params/decode_head/conv_seg/bias" in err and "nothing written" in err
  assert not (tmp_path / "a").exists()
  assert run(f"--out={tmp_path / 'b'}", "--allow_missing") == 0
  captured = capsys.readouterr()
  assert "WARNING (--allow_missing): 1 model leaves are NOT from the checkpoint" in (
      captured.err)
  assert "params/decode_head/conv_seg/bias" in captured.out
  assert (tmp_path / "b").is_dir()


class _Payload:
  """Pickles as a call that creates ``marker``: what a hostile checkpoint does."""

  def __init__(self, marker):
    self.marker = str(marker)

  def __reduce__(self):
    return (exec, (f"open({self.marker!r}, 'w').close()",))


def test_pickled_code_does_not_run_unless_trusted(tmp_path):
  torch = pytest.importorskip("torch")
  marker = tmp_path / "payload_ran"
  pth = tmp_path / "hostile.pth"
  _save(torch, {"backbone.norm1.weight": np.ones(8, np.float32)}, pth,
        meta={"hook": _Payload(marker)})
  with pytest.raises(ValueError) as err:
    convert_torch.read_pth(str(pth))
  assert not marker.exists()
  assert "builtins.exec" in str(err.value) and "--trust_checkpoint" in str(err.value)
  assert str(pth) in str(err.value)
  sd = convert_torch.read_pth(str(pth), trust_checkpoint=True)
  assert marker.exists()  # the full unpickler ran it
  np.testing.assert_array_equal(sd["backbone.norm1.weight"], np.ones(8))


def test_numpy_meta_loads_safely_under_both_numpy_names(tmp_path):
  """mmcv's meta may hold numpy scalars/arrays, pickled by numpy 2 or numpy 1."""
  torch = pytest.importorskip("torch")
  pth = tmp_path / "np2.pth"
  _save(torch, {"a.weight": np.arange(3, dtype=np.float32)}, pth,
        meta={"best": np.float64(0.25), "palette": np.zeros((2, 3), np.uint8),
              "seed": np.int64(7)})
  np.testing.assert_array_equal(convert_torch.read_pth(str(pth))["a.weight"], [0, 1, 2])
  # The same file as numpy 1.x writes it (numpy.core.multiarray.*).
  old = tmp_path / "np1.pth"
  with zipfile.ZipFile(pth) as zin, zipfile.ZipFile(old, "w", zipfile.ZIP_STORED) as zout:
    for info in zin.infolist():
      data = zin.read(info.filename)
      if info.filename.endswith("data.pkl"):
        assert b"numpy._core.multiarray" in data
        data = data.replace(b"numpy._core.multiarray", b"numpy.core.multiarray")
      zout.writestr(info.filename, data)
  assert "numpy.core.multiarray._reconstruct" in (
      torch.serialization.get_unsafe_globals_in_checkpoint(str(old)))
  np.testing.assert_array_equal(convert_torch.read_pth(str(old))["a.weight"], [0, 1, 2])


def test_missing_torch_says_how_to_install(monkeypatch, tmp_path):
  monkeypatch.setitem(sys.modules, "torch", None)  # `import torch` now fails
  with pytest.raises(ImportError, match=re.escape("pip install -e '.[convert]'")):
    convert_torch.read_pth(str(tmp_path / "x.pth"))


def test_imagenet_mit_weights_fill_the_backbone(tmp_path, cfg_file):
  """SegFormer's mit_b*.pth: bare keys + an ImageNet classifier, no deformable/SimPool."""
  torch = pytest.importorskip("torch")
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top

  variables = _template()
  ref = _synthetic_state_dict(variables)
  plain_mit = {k[len("backbone."):]: v for k, v in ref.items() if k.startswith("backbone.")
               and not any(f".{m}." in k for m in convert_torch.NOT_IN_IMAGENET_MIT)}
  assert "patch_embed2.proj.weight" in plain_mit and "block1.0.attn.kv.weight" in plain_mit
  plain_mit["head.weight"] = np.ones((1000, 32), np.float32)
  plain_mit["head.bias"] = np.zeros(1000, np.float32)
  torch.save({k: torch.from_numpy(np.asarray(v)) for k, v in plain_mit.items()},
             tmp_path / "mit_b0.pth")
  report = convert_torch.convert(str(tmp_path / "mit_b0.pth"), str(tmp_path / "out"),
                                 config=cfg_file)
  assert report.clean, report.format()
  assert report.ignored == ["head.bias", "head.weight"]
  assert "params/backbone/patch_embed2/offset_conv/kernel" in report.fresh
  assert "params/backbone/block1_0/attn/image_pool/wq/kernel" in report.fresh
  assert any(f.startswith("params/decode_head/") for f in report.fresh)
  assert not any(f.startswith("params/backbone/") and "/image_pool/" not in f
                 and "_conv/" not in f for f in report.fresh)
  assert "params/backbone/*/offset_conv" in report.format()
  restored = ocp.StandardCheckpointer().restore(str(tmp_path / "out"))
  got = dict(_flat(restored["params"]["backbone"]))
  want = dict(_flat(variables["params"]["backbone"]))
  for path, value in got.items():
    if set(path) & set(convert_torch.NOT_IN_IMAGENET_MIT):
      assert not np.array_equal(value, want[path]), path  # not from the file
    else:
      np.testing.assert_array_equal(value, want[path], err_msg="/".join(path))
  assert set(restored["params"]) == set(variables["params"])  # heads present too

  # A real backbone leaf missing from the file is still an error.
  del plain_mit["block1.0.attn.q.weight"]
  torch.save({k: torch.from_numpy(np.asarray(v)) for k, v in plain_mit.items()},
             tmp_path / "broken.pth")
  with pytest.raises(convert_torch.ConversionError, match="block1_0/attn/q/kernel"):
    convert_torch.convert(str(tmp_path / "broken.pth"), str(tmp_path / "out2"),
                          config=cfg_file)


_SCAN_CFG = (
    "import ml_collections\n"
    "from unlock_jax.models import defaults\n"
    "def get_config(arg=None):\n"
    "  m = defaults.tiny_model_config()\n"
    "  m.mit.depths = (2, 1, 1, 3)\n"
    "  m.scan_blocks = arg == 'scan'\n"
    "  return ml_collections.ConfigDict(dict(model=m))\n")


def test_convert_into_the_scanned_tree(tmp_path):
  """A scan_blocks config gets the stacked backbone; same network outputs."""
  torch = pytest.importorskip("torch")
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top

  cfg_path = tmp_path / "scan_cfg.py"
  cfg_path.write_text(_SCAN_CFG)
  unrolled_cfg = model_info.config_from_file(str(cfg_path)).model
  scanned_cfg = model_info.config_from_file(f"{cfg_path}:scan").model
  model = amodalpass.build(unrolled_cfg)
  x = np.random.default_rng(3).normal(size=(1, 64, 64, 3)).astype(np.float32)
  shapes = jax.eval_shape(lambda: model.init(
      {"params": jax.random.key(0), "dropout": jax.random.key(1)}, x, train=False))
  rng = np.random.default_rng(0)
  variables = jax.tree.map(lambda s: (0.3 * rng.normal(size=s.shape)).astype(np.float32),
                           dict(shapes))
  variables["batch_stats"] = jax.tree.map(np.abs, variables["batch_stats"])
  _save(torch, _synthetic_state_dict(variables), tmp_path / "model.pth")
  out = tmp_path / "scanned"
  assert convert_torch.convert(str(tmp_path / "model.pth"), str(out),
                               config=f"{cfg_path}:scan").clean
  restored = ocp.StandardCheckpointer().restore(str(out))
  backbone = restored["params"]["backbone"]
  assert "block1_0" not in backbone and "block4_2" not in backbone
  for j in range(3):  # block4_j is slice j of the stacked block4
    for a, b in zip(jax.tree.leaves(variables["params"]["backbone"][f"block4_{j}"]),
                    jax.tree.leaves(backbone["block4"])):
      np.testing.assert_array_equal(b[j], a)
  assert model_info.read(str(out))["model"].scan_blocks
  got = amodalpass.build(scanned_cfg).apply(restored, x, train=False)["sem_logits"]
  want = model.apply(variables, x, train=False)["sem_logits"]
  np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-5)
