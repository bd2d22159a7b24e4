"""What the offline stages read from each other, and the errors that name the stage to run.

The library functions behind predict → opll → adcl_pool → adapt (stages
import no other stage; tests/test_imports.py): the store opened empty, the
labelled panoramas with and without predict's skipped list, the pool index,
a store entry without a panorama, and the one-process forms of the
multi-process helpers. No model, no JAX program: fast.
"""
import json
import logging
import os

import numpy as np
import pytest

from unlock_jax import distributed
from unlock_jax import inference
from unlock_jax.pseudo import adcl
from unlock_jax.pseudo import opll
from unlock_jax.pseudo import predictions


class _Reader:
  """The reader interface the stages use: keys, image_size, load_image."""

  def __init__(self, keys, size=(4, 8)):
    self.keys, self.image_size = list(keys), size

  def __len__(self):
    return len(self.keys)

  def load_image(self, i):
    return np.full((*self.image_size, 3), i, np.uint8)


def _packed(folder, names):
  for n in names:
    path = os.path.join(folder, n + ".npz")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    open(path, "wb").close()


def test_an_empty_store_names_the_stage_to_run(tmp_path):
  with pytest.raises(FileNotFoundError, match=r"store .*empty: run the `predict` stage"):
    predictions.open_store(str(tmp_path / "store"))


def test_labelled_images_leave_out_only_what_predict_skipped(tmp_path, caplog):
  packed, store_dir = str(tmp_path / "packed"), str(tmp_path / "store")
  reader = _Reader(["c/a", "c/b", "c/d"])
  with pytest.raises(FileNotFoundError, match="no OPLL pseudo-labels .* run the `opll`"):
    opll.labelled_images(reader, packed, store_dir)
  _packed(packed, ["c/a", "c/b", "c/d"])
  assert opll.labelled_images(reader, packed, store_dir) is reader  # all labelled

  os.remove(os.path.join(packed, "c/b.npz"))
  with pytest.raises(FileNotFoundError, match="1 target images .*first: c/b"):
    opll.labelled_images(reader, packed, store_dir)  # not skipped: labels missing
  os.makedirs(store_dir)
  with open(os.path.join(store_dir, predictions.SKIPPED_FILE), "w") as f:
    json.dump({"total": 3, "skipped": [{"name": "c/b", "path": None,
                                        "reason": "truncated file"}]}, f)
  with caplog.at_level(logging.WARNING):
    sub = opll.labelled_images(reader, packed, store_dir)
  assert sub.keys == ["c/a", "c/d"] and len(sub) == 2
  np.testing.assert_array_equal(sub.load_image(1), reader.load_image(2))
  assert "c/b" in caplog.text and predictions.SKIPPED_FILE in caplog.text
  # The other stages name the same image as skipped, not as unpredicted.
  caplog.clear()
  with caplog.at_level(logging.WARNING):
    missing = predictions.unpredicted(reader.keys, ["c/a", "c/d"], store_dir, "opll")
  assert missing == ["c/b"] and "1 unreadable (c/b" in caplog.text
  assert "not predicted yet" not in caplog.text


def test_the_pool_index_and_a_store_entry_without_a_panorama(tmp_path):
  with pytest.raises(FileNotFoundError, match="no ADCL pool index .* run the `adcl_pool`"):
    adcl.index_path(str(tmp_path), must_exist=True)
  assert adcl.index_path(str(tmp_path)) == str(tmp_path / adcl.INDEX_FILE)
  images = inference.TargetImages(_Reader(["c/a", "c/b"]))
  assert images.image("c/b")[0, 0, 0] == 1
  with pytest.raises(ValueError, match="entry c/z has no image in the target split"):
    images.index_of("c/z")
  got = images.images(["c/a", None])
  assert got.shape == (2, 4, 8, 3) and got.dtype == np.float32 and not got[1].any()


def test_store_key_changes_with_entries_meta_and_settings():
  base = predictions.store_key(["a", "b"], {"quant": 1}, {"p": 0.5})
  assert base == predictions.store_key(["a", "b"], {"quant": 1}, {"p": 0.5})
  assert len({base, predictions.store_key(["a"], {"quant": 1}, {"p": 0.5}),
              predictions.store_key(["a", "b"], {"quant": 2}, {"p": 0.5}),
              predictions.store_key(["a", "b"], {"quant": 1}, {"p": 0.6})}) == 4


def test_multiprocess_helpers_on_one_process():
  class Acc:
    def __init__(self, v):
      self.v = v

    def merge(self, other):
      self.v += other.v

  assert distributed.share([3, 1, 2]) == [3, 1, 2]
  assert distributed.merge_all(Acc(5)).v == 5
  assert distributed.union_all(iter([3, 1, 3])) == [1, 3]
  assert distributed.all_true(True) and not distributed.all_true(False)
