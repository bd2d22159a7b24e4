"""Plain MiT vs HF transformers' PyTorch SegformerModel (random weights).

The HF encoder is an independent implementation of the same network; its
weights go through `convert_torch`'s HF table, so this also checks the
mechanical key mapping and every layout transpose of the backbone.
"""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import jax  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from unlock_jax.models import mit as mit_lib  # noqa: E402
from unlock_jax.tools import convert_torch  # noqa: E402

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")


def _hf_model(dims, depths, heads, sr_ratios, seed):
  cfg = transformers.SegformerConfig(
      num_channels=3, num_encoder_blocks=4, depths=list(depths),
      sr_ratios=list(sr_ratios), hidden_sizes=list(dims),
      num_attention_heads=list(heads), hidden_dropout_prob=0.0,
      attention_probs_dropout_prob=0.0, drop_path_rate=0.0)
  torch.manual_seed(seed)
  model = transformers.SegformerModel(cfg).eval()
  # HF initialises norms to 1/0 and biases to 0; randomise everything so that
  # a swapped scale/bias or a missing bias cannot hide.
  with torch.no_grad():
    for name, p in model.named_parameters():
      is_norm_scale = "norm" in name and name.endswith("weight")
      if name.endswith("bias") or is_norm_scale:
        p.copy_(torch.randn_like(p) * 0.2 + (1.0 if is_norm_scale else 0.0))
  return model


def _compare(dims, depths, heads, sr_ratios, shape, seed=0, scan=False):
  hf = _hf_model(dims, depths, heads, sr_ratios, seed)
  sd = {k: v.detach().numpy() for k, v in hf.state_dict().items()}
  ref_sd, unmatched = convert_torch.hf_segformer_to_reference(sd)
  assert not unmatched
  ours = mit_lib.MiT(dims=dims, depths=depths, heads=heads,
                     sr_ratios=sr_ratios, drop_path_rate=0.0, norm_eps=1e-5,
                     scan_blocks=scan)
  b, h, w = shape
  x = np.random.default_rng(seed).normal(size=(b, 3, h, w)).astype(np.float32)
  x_nhwc = x.transpose(0, 2, 3, 1)
  template = jax.eval_shape(lambda: mit_lib.MiT(
      dims=dims, depths=depths, heads=heads, sr_ratios=sr_ratios).init(
          jax.random.key(0), x_nhwc, train=False))  # the reference's names
  params, stats, report = convert_torch.torch_to_flax(
      ref_sd, {"params": {"backbone": template["params"]}})
  assert report.clean, report.format()
  assert report.converted == len(ref_sd)
  assert not stats
  if scan:  # the converter's last step for a scan_blocks model
    params["backbone"] = mit_lib.stack_blocks(params["backbone"], depths)
    assert params["backbone"]["block2"]["attn"]["q"]["kernel"].shape == (
        depths[1], dims[1], dims[1])
  feats = jax.jit(lambda p, x: ours.apply({"params": p}, x, train=False))(
      params["backbone"], x_nhwc)
  with torch.no_grad():
    out = hf(torch.from_numpy(x), output_hidden_states=True)
  assert len(out.hidden_states) == 4
  for s, (ref, got) in enumerate(zip(out.hidden_states, feats)):
    ref = ref.numpy().transpose(0, 2, 3, 1)
    assert got.shape == ref.shape, (s, got.shape, ref.shape)
    np.testing.assert_allclose(np.asarray(got), ref, atol=1e-4, rtol=1e-4,
                               err_msg=f"stage {s + 1}")


@pytest.mark.parametrize("scan", [False, True], ids=["unrolled", "scanned"])
def test_small_mit_matches_hf_segformer(scan):
  # Non-square input with odd stage sizes (13 -> 7 -> 4 -> 2 rows) checks
  # H/W order and PyTorch's rounding of the strided and sr convs.
  _compare(dims=(8, 16, 24, 32), depths=(1, 2, 1, 3), heads=(1, 2, 3, 4),
           sr_ratios=(8, 4, 2, 1), shape=(2, 52, 96), scan=scan)


def test_mit_b0_layout_matches_hf_segformer():
  size = mit_lib.mit_size("mit_b0")
  _compare(size.dims, size.depths, size.heads, size.sr_ratios,
           shape=(1, 64, 64), seed=1)
