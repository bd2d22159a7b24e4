"""Evaluator plumbing: padded batches, per-process merge, pictures, tables, results vs
direct accumulation."""
import ast
import glob
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import common
from tests.support import synthpass as synth_testing
from unlock_jax import sharding as shd
from unlock_jax.data import keys
from unlock_jax.data import labels
from unlock_jax.data import pipeline
from unlock_jax.data import synthpass
from unlock_jax.evaluation import evaluators, report, semantic


@pytest.fixture(scope="module")
def root(tmp_path_factory):
  return synth_testing.make_tiny_dataset(str(tmp_path_factory.mktemp("data")))


def _cfg(root, make=common.semantic_eval, **kwargs):
  """An evaluator config as the experiment files build it."""
  size = synthpass.image_sizes(0.125)["target"]
  return make("blendpass", os.path.join(root, "BlendPASS"), "val", size, batch_size=4,
              **kwargs)


def _fake_predict_fns(mesh):
  """Predicts class (row index mod 18) everywhere: deterministic, not the GT.

  What ``models/predict.jit_predict_fns`` gives the evaluators: the
  argmax under ``semantic`` (uint8), here without detections.
  """
  def predict(variables, image):
    b, h, w, _ = image.shape
    sem = jnp.broadcast_to((jnp.arange(h) % 18)[None, :, None], (b, h, w))
    return {"semantic": sem.astype(jnp.uint8)}
  fn = jax.jit(predict, out_shardings=shd.data_sharding(mesh))
  return {"semantic": fn, "oass": fn}


def _expected(root, cfg):
  reader = pipeline.open_reader(cfg.layout, cfg.root, cfg.split, cfg.image_size)
  h, w = cfg.image_size
  pred = np.broadcast_to((np.arange(h) % 18)[:, None], (h, w))
  sem_acc, oass = semantic.SemanticAccumulator(), report.OassMetrics(stuff_area=10,
                                                                     min_region_size=5)
  empty = {"boxes": np.zeros((0, 4)), "scores": np.zeros(0), "classes": np.zeros(0, int),
           "masks": np.zeros((0, h, w), bool), "valid": np.zeros(0, bool)}
  for i in range(len(reader)):
    gt = reader.load(i)
    sem_acc.add(pred, gt["semantic"])
    oass.add(gt, {"sem": pred, "modal": empty, "amodal": empty})
  return sem_acc.result(), oass.result(), len(reader)


def test_semantic_and_oass_evaluators_match_direct_accumulation(root, tmp_path, capsys):
  mesh = shd.make_mesh()
  fns = _fake_predict_fns(mesh)
  cfg = _cfg(root)
  sem_ref, oass_ref, n = _expected(root, cfg)
  assert n % 4 != 0, "the split should not fill whole batches (padding is under test)"

  ev = evaluators.from_config("val", cfg, predict_fns=fns, mesh=mesh, workdir=str(tmp_path))
  got = dict(ev.run({}))
  assert got["mIoU"] == pytest.approx(sem_ref["mIoU"])
  for c, name in enumerate(labels.CLASS_NAMES):  # only classes in GT or prediction
    if sem_ref["class_counted"][c]:
      assert got[f"IoU/{name}"] == pytest.approx(sem_ref["class_iou"][c]), name
    else:
      assert f"IoU/{name}" not in got
  table = ev.table().splitlines()
  assert table[0].split() == ["class", "IoU"]
  assert table[-1].split() == ["-mIoU:", f"{sem_ref['mIoU']:.2f}"]

  # (The reference's thresholds at 2048x400, scaled to this 256x50 split.)
  ocfg = _cfg(root, common.oass_eval, scale=0.125, num_pictures=2)
  ocfg.pictures_dir = str(tmp_path / "pics")
  assert (ocfg.stuff_area, ocfg.min_region_size) == (32, 2)
  ocfg.stuff_area, ocfg.min_region_size = 10, 5
  ev = evaluators.from_config("val", ocfg, predict_fns=fns, mesh=mesh, workdir=str(tmp_path))
  got = dict(ev.run({}))
  for k in report.HEADLINE + ("AP50", "AAP50"):
    assert got[k] == pytest.approx(oass_ref[k]), k
  assert ev.result["num_images"] == n
  pics = sorted(os.listdir(tmp_path / "pics"))
  assert len(pics) == 2 and all(p.endswith(".png") for p in pics)
  assert ev.pictures[0][1].dtype == np.uint8 and ev.pictures[0][1].ndim == 3
  # Two named runs in the same folder (evaluate's source_only and UNLOCK): each
  # run's pictures keep their own names; none overwrites another's.
  for run in ("source_only", "UNLOCK"):
    named = evaluators.from_config("val", ocfg, predict_fns=fns, mesh=mesh,
                                   workdir=str(tmp_path), run=run)
    dict(named.run({}))
    assert [n for n, _ in named.pictures] == [f"{run}_{n}" for n, _ in ev.pictures]
  pics = sorted(os.listdir(tmp_path / "pics"))
  assert len(pics) == 6
  for run in ("source_only", "UNLOCK"):
    assert sum(p.startswith(f"{run}_val_") for p in pics) == 2
  # Evaluators print nothing (the stage prints each table once); the OASS
  # table has one row per class and one headline line.
  assert capsys.readouterr().out == ""
  table = ev.table().splitlines()
  assert table[0].split() == ["class", "IoU", "PQ", "APQ", "AP", "AAP"]
  assert [line[:16].strip() for line in table[1:1 + labels.NUM_CLASSES]] == list(
      labels.CLASS_NAMES)
  assert sum(line.startswith("-mIoU:") for line in table) == 1


def test_padding_rows_are_skipped_by_their_mask(root, tmp_path, monkeypatch):
  """A padding row whose host slot is not None is still skipped: ``_mask`` decides."""
  real_batches = pipeline.eval_batches

  def batches_with_decoys(reader, **kwargs):
    for batch in real_batches(reader, **kwargs):
      decoy = reader.load(0)  # would add a 5th image if it were scored
      batch["_host_gt"] = [gt if real else decoy
                           for gt, real in zip(batch["_host_gt"], batch[keys.MASK])]
      yield batch

  monkeypatch.setattr(pipeline, "eval_batches", batches_with_decoys)
  ocfg = _cfg(root, common.oass_eval)
  mesh = shd.make_mesh()
  ev = evaluators.from_config("val", ocfg, predict_fns=_fake_predict_fns(mesh), mesh=mesh,
                              workdir=str(tmp_path))
  dict(ev.run({}))
  assert ev.result["num_images"] == len(ev.reader) == 3


def test_unknown_evaluator_type_is_named(root, tmp_path):
  cfg = _cfg(root)
  cfg.type = "mystery"
  with pytest.raises(ValueError, match="config.evals.val.type='mystery'"):
    evaluators.from_config("val", cfg, predict_fns={}, mesh=shd.make_mesh(),
                           workdir=str(tmp_path))


def test_evaluation_does_not_import_training():
  """Evaluation reads models and data only (the logits resize is models.layers')."""
  folder = os.path.join(os.path.dirname(evaluators.__file__))
  for path in glob.glob(os.path.join(folder, "*.py")):
    tree = ast.parse(open(path).read())
    for node in ast.walk(tree):
      if isinstance(node, ast.ImportFrom) and node.module:
        assert not node.module.startswith("unlock_jax.train"), (path, node.module)
      if isinstance(node, ast.Import):
        for alias in node.names:
          assert not alias.name.startswith("unlock_jax.train"), (path, alias.name)
