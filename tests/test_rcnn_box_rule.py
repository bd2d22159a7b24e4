"""One box rule, on the host: the data pipeline's ``box_rule`` (source:
``config.input.box_rule``; adaptation: ``config.adapt.paste.box_rule``) sets
the GT boxes the R-CNN losses see; the model has no box setting of its own."""
import jax.numpy as jnp
import numpy as np
import pytest

from configs import default
from unlock_jax.data import keys
from unlock_jax.data import pipeline
from unlock_jax.models import defaults
from unlock_jax.models.rcnn import branch
from unlock_jax.train import steps

H, W = 32, 48


class _Reader:
  """One example whose instance masks carry far-away ignore pixels (as a
  pseudo-label mask carries its image's uncertain pixels)."""

  def __len__(self):
    return 1

  def load(self, index):
    rs = np.random.RandomState(index)
    m = np.zeros((H, W), np.uint8)
    m[5:13, 6:21] = 1        # object: x 6..20, y 5..12 (inclusive)
    m[25:29, 35:41] = 255    # ignore: x 35..40, y 25..28
    inst = [dict(mask=m, category_id=13)]
    return dict(image=rs.randint(0, 255, (H, W, 3)).astype(np.uint8),
                semantic=rs.randint(0, 18, (H, W)).astype(np.uint8),
                modal=inst, amodal=[dict(mask=m.copy(), category_id=13)])


@pytest.mark.parametrize("rule, want", [("positive", [6, 5, 20, 12]),
                                        ("nonzero", [6, 5, 40, 28])])
def test_pipeline_box_rule_reaches_the_loss_targets(rule, want):
  transform = pipeline.TrainTransform(_Reader(), (H, W), cat_max_ratio=1.0,
                                      flip=False, max_instances=2,
                                      box_rule=rule)
  batch = pipeline.collate([transform(0, np.random.default_rng(0))])
  np.testing.assert_array_equal(batch[keys.MODAL_BOXES][0, 0], want)
  targets = steps.instance_targets(batch)
  model = branch.MaskRCNNBranch(branch.freeze(defaults.tiny_rcnn_config()))
  for b in ("modal", "amodal"):
    t = {k: jnp.asarray(v) for k, v in targets[b].items()}
    boxes, classes, valid = model.apply({"params": {}}, t,
                                        method=branch.MaskRCNNBranch._gt)
    np.testing.assert_array_equal(np.asarray(valid), [[True, False]])
    np.testing.assert_array_equal(np.asarray(boxes)[0, 0], want)
    assert int(classes[0, 0]) == 13 - 11


def test_the_model_config_has_no_box_rule():
  c = default.get_config()
  assert c.input.box_rule == "positive"
  assert c.adapt.paste.box_rule == "positive"
  assert "box_rule" not in c.model.rcnn
