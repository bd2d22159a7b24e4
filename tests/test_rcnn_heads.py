"""Head layers vs torch with the documented weight conversions (what the
torch-checkpoint converter must do for ``rpn_head.*`` / ``roi_head.*``)."""
import jax.numpy as jnp
import numpy as np
import pytest

from unlock_jax.models.rcnn import roi_heads
from unlock_jax.models.rcnn import rpn

torch = pytest.importorskip("torch")
F = torch.nn.functional


def test_upsample_matches_torch_conv_transpose():
  rs = np.random.RandomState(0)
  x = rs.normal(size=(2, 5, 6, 4)).astype(np.float32)
  w_t = rs.normal(size=(4, 3, 2, 2)).astype(np.float32)  # (in, out, kh, kw)
  b_t = rs.normal(size=(3,)).astype(np.float32)
  want = F.conv_transpose2d(torch.from_numpy(x).permute(0, 3, 1, 2),
                            torch.from_numpy(w_t), torch.from_numpy(b_t),
                            stride=2).permute(0, 2, 3, 1).numpy()
  mod = roi_heads.TransposeConv2x2(3)
  params = {"kernel": jnp.asarray(w_t.transpose(2, 3, 0, 1)),
            "bias": jnp.asarray(b_t)}
  got = np.asarray(mod.apply({"params": params}, jnp.asarray(x)))
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_bbox_head_flatten_order_conversion():
  rs = np.random.RandomState(1)
  c, fc, ncls = 4, 6, 3
  x = rs.normal(size=(5, 7, 7, c)).astype(np.float32)  # NHWC RoI features
  w0 = rs.normal(size=(fc, c * 49)).astype(np.float32) * 0.1
  w1 = rs.normal(size=(fc, fc)).astype(np.float32) * 0.1
  wc = rs.normal(size=(ncls + 1, fc)).astype(np.float32)
  wr = rs.normal(size=(ncls * 4, fc)).astype(np.float32)
  bs = [rs.normal(size=(n,)).astype(np.float32)
        for n in (fc, fc, ncls + 1, ncls * 4)]
  # Torch: NCHW flatten, Linear layers.
  xt = torch.from_numpy(x).permute(0, 3, 1, 2).flatten(1)
  h = F.relu(F.linear(xt, torch.from_numpy(w0), torch.from_numpy(bs[0])))
  h = F.relu(F.linear(h, torch.from_numpy(w1), torch.from_numpy(bs[1])))
  cls_t = F.linear(h, torch.from_numpy(wc), torch.from_numpy(bs[2])).numpy()
  reg_t = F.linear(h, torch.from_numpy(wr), torch.from_numpy(bs[3])).numpy()
  # Documented conversion (roi_heads module docstring).
  k0 = w0.reshape(fc, c, 7, 7).transpose(2, 3, 1, 0).reshape(49 * c, fc)
  params = {"shared_fcs_0": {"kernel": k0, "bias": bs[0]},
            "shared_fcs_1": {"kernel": w1.T, "bias": bs[1]},
            "fc_cls": {"kernel": wc.T, "bias": bs[2]},
            "fc_reg": {"kernel": wr.T, "bias": bs[3]}}
  head = roi_heads.BBoxHead(ncls, fc)
  cls, reg = head.apply({"params": params}, jnp.asarray(x))
  np.testing.assert_allclose(np.asarray(cls), cls_t, rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(np.asarray(reg).reshape(5, -1), reg_t,
                             rtol=1e-4, atol=1e-4)


def test_rpn_head_layout_matches_torch():
  rs = np.random.RandomState(2)
  c, a = 5, 3
  x = rs.normal(size=(1, 4, 6, c)).astype(np.float32)
  wc = rs.normal(size=(c, c, 3, 3)).astype(np.float32) * 0.2
  bc = rs.normal(size=(c,)).astype(np.float32)
  wcls = rs.normal(size=(a, c, 1, 1)).astype(np.float32)
  bcls = rs.normal(size=(a,)).astype(np.float32)
  wreg = rs.normal(size=(4 * a, c, 1, 1)).astype(np.float32)
  breg = rs.normal(size=(4 * a,)).astype(np.float32)
  xt = torch.from_numpy(x).permute(0, 3, 1, 2)
  h = F.relu(F.conv2d(xt, torch.from_numpy(wc), torch.from_numpy(bc),
                      padding=1))
  cls_t = F.conv2d(h, torch.from_numpy(wcls), torch.from_numpy(bcls))
  reg_t = F.conv2d(h, torch.from_numpy(wreg), torch.from_numpy(breg))
  # mmdet's flattening: permute(0, 2, 3, 1).reshape(-1) / reshape(-1, 4).
  cls_t = cls_t.permute(0, 2, 3, 1).reshape(1, -1).numpy()
  reg_t = reg_t.permute(0, 2, 3, 1).reshape(1, -1, 4).numpy()
  hwio = lambda w: jnp.asarray(w.transpose(2, 3, 1, 0))
  params = {"rpn_conv": {"kernel": hwio(wc), "bias": bc},
            "rpn_cls": {"kernel": hwio(wcls), "bias": bcls},
            "rpn_reg": {"kernel": hwio(wreg), "bias": breg}}
  cls, reg = rpn.RPNHead(a, c).apply({"params": params}, [jnp.asarray(x)])
  np.testing.assert_allclose(np.asarray(cls[0]), cls_t, rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(np.asarray(reg[0]), reg_t, rtol=1e-4, atol=1e-4)
