"""models/predict.py: the one predict path, and the stages' thin wiring around it.

The jitted predict functions of a tiny model with both R-CNN branches
against numpy (the semantic logits bilinearly resized to the image, as
torch's ``F.interpolate(align_corners=False)``, then argmax and the softmax
maximum); the three functions agree on what they share; the evaluators and
the store's inference build no jitted function of their own (the import
rules and the stages' length: tests/test_imports.py).
"""
import os

import jax
import numpy as np
import pytest

from tests.support import networks
from tests.support import reference
from unlock_jax import sharding as shd
from unlock_jax.models import predict as predict_lib

PKG = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "unlock_jax")
H, W = 32, 64


@pytest.fixture(scope="module")
def outputs():
  mesh, model, variables, image = networks.tiny_detector(H, W)
  fns = predict_lib.jit_predict_fns(model, mesh)
  got = {name: jax.device_get(fn(variables, shd.put_array(image, mesh)))
         for name, fn in fns.items()}
  raw = jax.device_get(jax.jit(lambda v, x: model.apply(v, x, train=False, semantic_only=True))(
      variables, image))
  return got, raw


def test_semantic_and_confidence_against_numpy(outputs):
  got, raw = outputs
  logits = reference.resize_bilinear(raw["sem_logits"], (H, W))
  argmax, conf, clear = reference.semantic_rule(logits)
  assert clear.mean() > 0.9
  pan = got["panorama"]
  assert pan["semantic"].dtype == np.uint8 and pan["semantic"].shape == (4, H, W)
  np.testing.assert_array_equal(pan["semantic"][clear], argmax[clear])
  np.testing.assert_allclose(pan["confidence"], conf, rtol=1e-5, atol=1e-6)


def test_the_functions_agree_and_compute_only_what_they_return(outputs):
  got, _ = outputs
  assert set(got["semantic"]) == {"semantic"}
  assert set(got["oass"]) == {"semantic", "modal", "amodal"}
  assert set(got["panorama"]) == {"semantic", "confidence", "modal", "amodal"}
  for name in ("semantic", "oass"):
    np.testing.assert_array_equal(got[name]["semantic"], got["panorama"]["semantic"])
  for b in ("modal", "amodal"):
    for k, v in got["panorama"][b].items():
      np.testing.assert_array_equal(got["oass"][b][k], v, err_msg=f"{b}/{k}")


def test_evaluators_and_inference_jit_no_predict_of_their_own():
  """They take the functions of models/predict.py (built once by the stage)."""
  for rel in ("evaluation/evaluators.py", "inference.py", "api.py"):
    with open(os.path.join(PKG, rel), encoding="utf-8") as f:
      text = f.read()
    assert "jax.jit" not in text and "model.apply" not in text, rel
