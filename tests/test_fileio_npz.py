"""fileio.load_npz: every array of an .npz, one reader at a time.

numpy parses .npy headers with ast.literal_eval, which CPython 3.11 before
3.11.8 cannot run from two threads at once (gh-106905: "SystemError: AST
constructor recursion depth mismatch", seen in an adaptation run reading
pseudo-labels from grain's threads). The test records how many np.load calls
are open at once while many threads read.
"""
import io
import threading
import time

import numpy as np
import pytest

from unlock_jax import fileio


def _npz(**arrays) -> bytes:
  buf = io.BytesIO()
  np.savez_compressed(buf, **arrays)
  return buf.getvalue()


def test_reads_every_array_from_a_path_or_bytes(tmp_path):
  data = _npz(a=np.arange(6).reshape(2, 3), name=np.array("x"))
  (tmp_path / "f.npz").write_bytes(data)
  for source in (str(tmp_path / "f.npz"), data):
    got = fileio.load_npz(source)
    assert sorted(got) == ["a", "name"]
    np.testing.assert_array_equal(got["a"], np.arange(6).reshape(2, 3))
    assert str(got["name"]) == "x"


def test_never_unpickles():
  with pytest.raises(ValueError, match="allow_pickle"):
    fileio.load_npz(_npz(obj=np.array([{"a": 1}], dtype=object)))


def test_concurrent_reads_are_serialised(monkeypatch):
  data = _npz(a=np.arange(100))
  real_load, active, peak = np.load, [0], [0]
  guard = threading.Lock()

  def slow_load(*args, **kwargs):
    with guard:
      active[0] += 1
      peak[0] = max(peak[0], active[0])
    time.sleep(0.01)  # time for another thread to enter, were it allowed
    with guard:
      active[0] -= 1
    return real_load(*args, **kwargs)

  monkeypatch.setattr(np, "load", slow_load)
  results = []
  threads = [threading.Thread(target=lambda: results.append(fileio.load_npz(data)))
             for _ in range(8)]
  for t in threads:
    t.start()
  for t in threads:
    t.join()
  assert peak[0] == 1
  assert len(results) == 8
  for r in results:
    np.testing.assert_array_equal(r["a"], np.arange(100))
