"""ConvModule's BatchNorm vs torch.nn.BatchNorm2d over several train-mode updates."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from unlock_jax.models import layers


@pytest.mark.parametrize("shape", [(4, 6, 5, 3), (4, 1, 1, 3), (2, 1, 1, 5)])
def test_running_statistics_match_torch(shape):
  """Incl. the image-pool case: one pooled vector per image (n = batch)."""
  rng = np.random.default_rng(0)
  c = shape[-1]
  bn = layers.BatchNorm(use_running_average=False)
  x0 = rng.normal(size=shape).astype(np.float32)
  variables = bn.init(jax.random.key(0), jnp.asarray(x0))
  scale = rng.uniform(0.5, 1.5, c).astype(np.float32)
  bias = rng.normal(size=c).astype(np.float32)
  variables = {"params": {"scale": jnp.asarray(scale), "bias": jnp.asarray(bias)},
               "batch_stats": variables["batch_stats"]}
  ref = torch.nn.BatchNorm2d(c, eps=1e-5, momentum=0.1)
  with torch.no_grad():
    ref.weight.copy_(torch.from_numpy(scale))
    ref.bias.copy_(torch.from_numpy(bias))
  ref.train()
  for _ in range(4):
    x = (rng.normal(size=shape) * 3 + 1).astype(np.float32)
    y, mut = bn.apply(variables, jnp.asarray(x), mutable=["batch_stats"])
    variables = {"params": variables["params"], "batch_stats": mut["batch_stats"]}
    y_ref = ref(torch.from_numpy(x).permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
    np.testing.assert_allclose(np.asarray(y), y_ref.detach().numpy(), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(np.asarray(variables["batch_stats"]["mean"]),
                               ref.running_mean.numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.asarray(variables["batch_stats"]["var"]),
                               ref.running_var.numpy(), rtol=1e-5, atol=1e-6)
  # Evaluation uses the running statistics, as torch's eval mode.
  ref.eval()
  x = rng.normal(size=shape).astype(np.float32)
  y = layers.BatchNorm(use_running_average=True).apply(variables, jnp.asarray(x))
  y_ref = ref(torch.from_numpy(x).permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
  np.testing.assert_allclose(np.asarray(y), y_ref.detach().numpy(), rtol=1e-4, atol=1e-4)


def test_conv_module_keeps_its_variable_names():
  m = layers.ConvModule(4, 1)
  v = m.init(jax.random.key(0), jnp.zeros((1, 3, 3, 2)), train=False)
  assert set(v["params"]["bn"]) == {"scale", "bias"}
  assert set(v["batch_stats"]["bn"]) == {"mean", "var"}
