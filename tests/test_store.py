"""Tests of the prediction store: round trips, the confidence codec against
hand-computed bytes, the two-level histogram codec, the summary and two-level
loaders, names, the cheap resume check and the CRC checks at read time,
errors, other format versions, atomicity, meta, size."""
import json
import logging
import os
import struct
import zlib

import numpy as np
import pytest

from tests.support.maps import ellipse_dets
from tests.support.maps import no_dets
from tests.support.maps import softmax_map
from unlock_jax import fileio
from unlock_jax.pseudo import store
from unlock_jax.pseudo import storecodec
from unlock_jax.pseudo import thresholds

H, W = 24, 64


def small_entry(seed=0):
  rng = np.random.default_rng(seed)
  sem = rng.integers(0, 18, (H, W)).astype(np.uint8)
  sem[0, :5] = 255
  code = rng.integers(0, 65536, (H, W)).astype(np.uint16)  # worst case for the codec
  code[1, :3] = (0, 65535, 0)
  return sem, code


def assert_branch_equal(got, want):
  assert got["classes"].dtype == np.int32 and got["scores"].dtype == np.float32
  assert got["boxes"].dtype == np.float32 and got["masks"].dtype == bool
  np.testing.assert_array_equal(got["classes"], want["classes"])
  np.testing.assert_array_equal(got["scores"], want["scores"])
  np.testing.assert_array_equal(got["boxes"], want["boxes"])
  np.testing.assert_array_equal(got["masks"], want["masks"])


def test_round_trip_every_field(tmp_path):
  d = str(tmp_path)
  sem, code = small_entry()
  rng = np.random.default_rng(1)
  modal = ellipse_dets(rng, H, W, 4, empty=(2,))
  amodal = no_dets(H, W)
  extra = {"feat_mean": rng.random((18, 5)).astype(np.float32),
           "count": np.array(7, np.int64), "flags": np.array([True, False])}
  n = store.write_prediction(d, "city_a/0001", sem, code, modal, amodal, extra)
  path = store.entry_path(d, "city_a/0001")
  assert path == os.path.join(d, "entries", "city_a", "0001" + store.SUFFIX)
  assert n == os.path.getsize(path)
  assert store.is_complete(d, "city_a/0001")

  e = store.load_prediction(d, "city_a/0001")
  assert e["name"] == "city_a/0001"
  assert e["semantic"].dtype == np.uint8 and e["confidence_code"].dtype == np.uint16
  np.testing.assert_array_equal(e["semantic"], sem)
  np.testing.assert_array_equal(e["confidence_code"], code)
  assert e["confidence"].dtype == np.float32
  np.testing.assert_array_equal(e["confidence"], thresholds.dequantize(code))
  np.testing.assert_allclose(e["confidence"], code / 65535.0, rtol=1e-7, atol=0)
  assert_branch_equal(e["modal"], modal)
  assert not e["modal"]["masks"][2].any()
  assert_branch_equal(e["amodal"], amodal)
  assert e["amodal"]["masks"].shape == (0, H, W)
  assert sorted(e["extra"]) == ["count", "feat_mean", "flags"]
  for k, v in extra.items():
    assert e["extra"][k].dtype == v.dtype and e["extra"][k].shape == v.shape
    np.testing.assert_array_equal(e["extra"][k], v)
  e["semantic"][0, 0] = 3  # callers may edit what they load (OPLL writes 255 in place)

  p = store.load_prediction(d, "city_a/0001", packed_masks=True)
  assert "masks" not in p["modal"] and sorted(p["modal"]["packed"]) == ["bits", "extent", "offsets"]
  np.testing.assert_array_equal(p["modal"]["packed"]["extent"][2], [0, 0, 0, 0])


def test_extra_is_optional_and_empty_detection_arrays_are_accepted(tmp_path):
  sem, code = small_entry()
  loose = {"classes": [], "scores": [], "boxes": [], "masks": []}
  store.write_prediction(str(tmp_path), "c/x", sem, code, loose, no_dets(H, W))
  e = store.load_prediction(str(tmp_path), "c/x")
  assert e["extra"] == {}
  assert e["modal"]["boxes"].shape == (0, 4) and e["modal"]["masks"].shape == (0, H, W)


def test_source_path_and_size_round_trip_and_default_to_none(tmp_path):
  d = str(tmp_path)
  sem, code = small_entry()
  store.write_prediction(d, "trip/a.jpg", sem, code, no_dets(H, W), no_dets(H, W),
                         source_path="gs://b/pano/trip/a.jpg", source_size=(2688, 5376))
  e = store.load_prediction(d, "trip/a.jpg")
  assert e["source_path"] == "gs://b/pano/trip/a.jpg" and e["source_size"] == (2688, 5376)
  # In the JSON index, beside the entry's own size (readers ignore keys they do not know).
  payload = open(store.entry_path(d, "trip/a.jpg"), "rb").read()[24:]
  (n,) = struct.unpack_from("<I", payload)
  index = json.loads(payload[4:4 + n])
  assert (index["source_path"], index["source_size"]) == ("gs://b/pano/trip/a.jpg", [2688, 5376])
  store.write_prediction(d, "c/x", sem, code, no_dets(H, W), no_dets(H, W))
  e = store.load_prediction(d, "c/x")
  assert e["source_path"] is None and e["source_size"] is None
  for bad in ({"source_size": (0, 5)}, {"source_size": (3,)}, {"source_path": ""},
              {"source_path": 3}):
    with pytest.raises(ValueError, match="source_"):
      store.write_prediction(d, "c/y", sem, code, no_dets(H, W), no_dets(H, W), **bad)
  assert not os.path.exists(store.entry_path(d, "c/y"))


@pytest.mark.parametrize("code, high, low", [
    # second differences along x: [0,1,3] -> [0,1,2] -> [0,1,1]; zigzag 0,2,2
    ([[0, 1, 3]], [0, 0, 0], [0, 2, 2]),
    # [5,3] -> [5,-2] -> [5,-7]; zigzag 10, 13
    ([[5, 3]], [0, 0], [10, 13]),
    # along y: [1,4] -> [1,3] -> [1,2]; zigzag 2, 4
    ([[1], [4]], [0, 0], [2, 4]),
    # wrap: [65535,0] -> [65535,1] -> [65535,2] = int16 [-1, 2]; zigzag 1, 4
    ([[65535, 0]], [0, 0], [1, 4]),
    # 300 -> zigzag 600 = 0x0258: high byte 2, low byte 0x58
    ([[300]], [2], [0x58]),
])
def test_confidence_codec_bytes_by_hand(code, high, low):
  code = np.array(code, np.uint16)
  blob = storecodec.encode_confidence(code)
  assert zlib.decompress(blob) == bytes(high + low)
  np.testing.assert_array_equal(storecodec.decode_confidence(blob, *code.shape), code)


@pytest.mark.parametrize("shape", [(1, 1), (1, 9), (7, 1), (5, 6)])
def test_confidence_codec_exact_on_extremes(shape):
  rng = np.random.default_rng(2)
  yy, xx = np.indices(shape)
  for code in (np.full(shape, 65535), np.zeros(shape), ((yy + xx) % 2) * 65535,
               rng.integers(0, 65536, shape), (xx * 9000 + yy * 7) % 65536):
    code = code.astype(np.uint16)
    np.testing.assert_array_equal(
        storecodec.decode_confidence(storecodec.encode_confidence(code), *shape), code)


def _summary_entry(tmp_path, name="c/s", seed=8):
  rng = np.random.default_rng(seed)
  sem = rng.integers(0, 18, (H, W)).astype(np.uint8)
  sem[:4] = 3  # a big class with ties
  code = rng.choice(np.array([0, 7, 40000, 65535], np.uint16), (H, W))
  modal, amodal = ellipse_dets(rng, H, W, 3), no_dets(H, W)
  store.write_prediction(str(tmp_path), name, sem, code, modal, amodal)
  return sem, code, modal, amodal


def test_load_summary_decodes_only_the_small_members(tmp_path, monkeypatch):
  d = str(tmp_path)
  sem, code, modal, amodal = _summary_entry(tmp_path)
  full = store.load_prediction(d, "c/s")
  assert "histogram" not in full and full["extra"] == {}

  def boom(*args, **kwargs):
    raise AssertionError("load_summary must not decode maps or masks")
  monkeypatch.setattr(storecodec, "decode_confidence", boom)
  monkeypatch.setattr(store.maskcodec, "unpack", boom)
  s = store.load_summary(d, "c/s")
  assert sorted(s) == ["amodal", "height", "histogram", "modal", "name", "width"]
  assert (s["name"], s["height"], s["width"]) == ("c/s", H, W)
  np.testing.assert_array_equal(s["histogram"], thresholds.sparse_histogram(sem, code))
  for got, want in ((s["modal"], modal), (s["amodal"], amodal)):
    assert sorted(got) == ["classes", "scores"]
    assert got["classes"].dtype == np.int32 and got["scores"].dtype == np.float32
    np.testing.assert_array_equal(got["classes"], want["classes"])
    np.testing.assert_array_equal(got["scores"], want["scores"])
  # The histogram gives the same semantic statistics as the maps.
  a, b = thresholds.SemanticHistogram(), thresholds.SemanticHistogram()
  a.add(sem, code)
  b.add_sparse(*s["histogram"])
  np.testing.assert_array_equal(a.counts, b.counts)

  monkeypatch.setattr(storecodec, "decode_blocks", boom)
  s = store.load_summary(d, "c/s", histogram=False)
  assert "histogram" not in s
  np.testing.assert_array_equal(s["modal"]["scores"], modal["scores"])


def test_histogram_readers_check_it_against_the_image_size(tmp_path, monkeypatch):
  real = thresholds.sparse_histogram
  monkeypatch.setattr(thresholds, "sparse_histogram", lambda s, c: real(s[1:], c[1:]))
  _summary_entry(tmp_path)
  for load in (store.load_summary, store.load_blocks,
               lambda d, n: store.load_fine(d, n, np.zeros(18, int))):
    with pytest.raises(store.StoreError, match=f"count {(H - 1) * W} pixels, not {H}x{W}"):
      load(str(tmp_path), "c/s")


def test_block_codec_round_trip_and_formats():
  rng = np.random.default_rng(9)
  keys = np.unique(np.concatenate([[0, 1, 1023, 1024, 65535, 65536 + 5, 3 * 65536 + 2047],
                                   rng.integers(0, 18 * 65536, 3000)]))
  counts = rng.choice([1, 2, 15], keys.size)  # 4-bit chunks ...
  counts[keys // 1024 == 1] = 200             # ... uint8
  counts[keys // 1024 == 65536 // 1024] = 300  # ... uint16 (class 1, block 0)
  counts[keys == 3 * 65536 + 2047] = 2**32 - 3000 * 300  # ... uint32
  for h in (np.stack([keys, counts]), np.zeros((2, 0), np.int64),
            np.array([[255 * 65536 + 7], [3]])):  # ignore label 255: 256 table rows
    table, chunks = storecodec.encode_blocks(h)
    c = h[0].max() // 65536 + 1 if h.size else 0
    assert table.dtype == np.uint32 and table.shape == (4, c, 64)
    np.testing.assert_array_equal(table[0], thresholds.sparse_blocks(*h))
    assert ((table[2] == 0) == (table[0] == 0)).all()
    np.testing.assert_array_equal(storecodec.decode_blocks(table, chunks), h)
    for cls, block in zip(*np.nonzero(table[0])):
      blocks = np.full(c, -1)
      blocks[cls] = block
      np.testing.assert_array_equal(storecodec.decode_chunk(chunks, table, cls, block),
                                    thresholds.sparse_fine(*h, blocks)[cls])
  table, chunks = storecodec.encode_blocks(np.stack([keys, counts]))
  assert table[2, 0, 0] == 1 and table[2, 0, 1] == 2 and table[2, 1, 0] == 3
  assert table[2, 3, 1] == 4
  bad = table.copy()
  bad[3, 0, 0] ^= 1
  with pytest.raises(ValueError, match="checksum mismatch"):
    storecodec.decode_blocks(bad, chunks)
  with pytest.raises(ValueError, match="do not cover"):
    storecodec.decode_blocks(table, chunks[:-1])


class _CountingReads:
  """Counts the bytes read through ``fileio.open_file``."""

  def __init__(self, monkeypatch):
    self.bytes, real = 0, fileio.open_file
    counter = self

    class File:
      def __init__(self, f):
        self.f = f

      def __enter__(self):
        return self

      def __exit__(self, *exc):
        return self.f.__exit__(*exc)

      def read(self, *args):
        data = self.f.read(*args)
        counter.bytes += len(data)
        return data

      def __getattr__(self, name):
        return getattr(self.f, name)

    monkeypatch.setattr(store.fileio, "open_file",
                        lambda *a, **k: File(real(*a, **k).__enter__()))


def test_load_blocks_and_fine_read_only_their_members(tmp_path, monkeypatch):
  d = str(tmp_path)
  sem, code, modal, amodal = _summary_entry(tmp_path)
  h = thresholds.sparse_histogram(sem, code)

  def boom(*args, **kwargs):
    raise AssertionError("the two-level readers must not decode maps, masks or all chunks")
  for f in ("decode_confidence", "decode_blocks"):
    monkeypatch.setattr(storecodec, f, boom)
  monkeypatch.setattr(store.maskcodec, "unpack", boom)
  b = store.load_blocks(d, "c/s")
  assert sorted(b) == ["amodal", "blocks", "height", "modal", "name", "width"]
  assert (b["name"], b["height"], b["width"]) == ("c/s", H, W)
  assert b["blocks"].dtype == np.int64
  np.testing.assert_array_equal(b["blocks"], thresholds.sparse_blocks(*h))
  for got, want in ((b["modal"], modal), (b["amodal"], amodal)):
    assert got["classes"].dtype == np.int32 and got["scores"].dtype == np.float32
    np.testing.assert_array_equal(got["classes"], want["classes"])
    np.testing.assert_array_equal(got["scores"], want["scores"])
  for blocks in (np.full(18, -1), np.array([0, 39, 61, 63] * 4 + [0, -1]),
                 np.full(20, 63), np.full(3, 39)):
    f = store.load_fine(d, "c/s", blocks)
    assert f.dtype == np.int64 and f.shape == (blocks.size, 1024)
    np.testing.assert_array_equal(f, thresholds.sparse_fine(*h, blocks))
  with pytest.raises(ValueError, match="blocks must be"):
    store.load_fine(d, "c/s", [64])


def _index(path):
  """``(index, offset of the blobs)`` of an entry file, parsed here from the documented bytes."""
  data = open(path, "rb").read()
  (n,) = struct.unpack_from("<I", data, 24)
  return json.loads(data[28:28 + n]), 28 + n


def _rewrite_index(path, edit):
  """Rewrites an entry with ``edit(index)`` applied, header length and CRC-32 updated."""
  data = open(path, "rb").read()
  index, base = _index(path)
  edit(index)
  idx = json.dumps(index, separators=(",", ":")).encode()
  payload = struct.pack("<I", len(idx)) + idx + data[base:]
  with open(path, "wb") as f:
    f.write(struct.pack("<8sIQI", store.MAGIC, store.FORMAT_VERSION, len(payload),
                        zlib.crc32(payload)) + payload)


def test_resume_check_reads_the_header_and_index_only(tmp_path, monkeypatch):
  d = str(tmp_path)
  rng = np.random.default_rng(0)
  sem = rng.integers(0, 18, (200, 512)).astype(np.uint8)
  code = rng.integers(0, 65536, (200, 512)).astype(np.uint16)  # ~0.4 MB of noise
  size = store.write_prediction(d, "c/big", sem, code, ellipse_dets(rng, 200, 512, 20),
                                ellipse_dets(rng, 200, 512, 20))
  assert size > 300_000
  reads = _CountingReads(monkeypatch)
  assert store.is_complete(d, "c/big")
  assert reads.bytes <= 8192, reads.bytes
  reads.bytes = 0
  store.load_blocks(d, "c/big")
  assert reads.bytes <= 65536, reads.bytes


@pytest.mark.parametrize("member", ["table", "chunk"])
def test_two_level_readers_check_their_members(tmp_path, member):
  d = str(tmp_path)
  sem, code, _, _ = _summary_entry(tmp_path)
  path = store.entry_path(d, "c/s")
  data = bytearray(open(path, "rb").read())
  index, base = _index(path)
  recs = {r["key"]: r for r in index["arrays"]}
  rec = recs[store.BLOCKS_KEY if member == "table" else store.FINE_KEY]
  at = rec["size"] // 2
  data[base + rec["offset"] + at] ^= 0x04
  with open(path, "wb") as f:
    f.write(data)
  table, _ = storecodec.encode_blocks(thresholds.sparse_histogram(sem, code))
  blocks = np.arange(18) % 64
  if member == "chunk":  # the class and block of the chunk holding byte ``at``
    flat = int(np.searchsorted(table[1].reshape(-1), at, side="right"))
    blocks[flat // 64] = flat % 64
  with pytest.raises(store.StoreError, match="checksum mismatch"):
    store.load_fine(d, "c/s", blocks)
  if member == "table":
    with pytest.raises(store.StoreError, match="checksum mismatch"):
      store.load_blocks(d, "c/s")
  else:
    store.load_blocks(d, "c/s")  # the chunks are not read by pass 1
  assert store.is_complete(d, "c/s")  # the resume check does not read the content


def test_names_with_city_folders_and_list_order(tmp_path):
  d = str(tmp_path)
  assert store.list_predictions(d) == []
  sem, code = small_entry()
  names = ["zurich/0002", "aachen/0010", "aachen/0002", "a/b/c", "aachen_x/1"]
  for name in names:
    store.write_prediction(d, name, sem, code, no_dets(H, W), no_dets(H, W))
  # leftovers of a killed write and foreign files are not entries
  open(os.path.join(d, "entries", "aachen", "0003.pred.tmp12-34"), "wb").close()
  open(os.path.join(d, "entries", "aachen", "notes.txt"), "wb").close()
  assert store.list_predictions(d) == sorted(names)
  assert store.load_prediction(d, "a/b/c")["name"] == "a/b/c"


@pytest.mark.parametrize("name", ["../x", "a/../b", "/abs/x", "", "a//b", "a/./b", "a\\b"])
def test_bad_names_are_rejected(tmp_path, name):
  sem, code = small_entry()
  with pytest.raises(ValueError):
    store.entry_path(str(tmp_path), name)
  with pytest.raises(ValueError):
    store.write_prediction(str(tmp_path), name, sem, code, no_dets(H, W), no_dets(H, W))
  assert not os.path.exists(os.path.join(str(tmp_path), "entries"))


def _written(tmp_path, name="c/e"):
  sem, code = small_entry()
  store.write_prediction(str(tmp_path), name, sem, code,
                         ellipse_dets(np.random.default_rng(3), H, W, 2), no_dets(H, W))
  return str(tmp_path), store.entry_path(str(tmp_path), name)


def _truncate(path):
  with open(path, "rb") as f:
    data = f.read()
  with open(path, "wb") as f:
    f.write(data[:len(data) // 2])


def _cut_last_byte(path):
  with open(path, "r+b") as f:
    f.truncate(os.path.getsize(path) - 1)


def _garbage(path):
  with open(path, "wb") as f:
    f.write(b"this is not a store entry, just some text of some length")


def _short(path):
  with open(path, "wb") as f:
    f.write(b"UNLK")


def _gap(path):  # an array record moved 3 bytes on: the records no longer tile the payload
  _rewrite_index(path, lambda index: index["arrays"][-1].update(
      offset=index["arrays"][-1]["offset"] + 3))


_LOADS = (store.load_prediction, store.load_summary, store.load_blocks,
          lambda d, n: store.load_fine(d, n, np.full(18, 63)))
_REDO = "delete it and rerun the `predict` stage"


@pytest.mark.parametrize("damage, what", [
    (_truncate, "bad length"), (_cut_last_byte, "bad length"), (_garbage, "bad magic"),
    (_short, "truncated"), (_gap, "do not tile the payload")])
def test_damaged_entry_is_incomplete_and_named(tmp_path, caplog, damage, what):
  d, path = _written(tmp_path)
  damage(path)
  with caplog.at_level(logging.WARNING):
    assert not store.is_complete(d, "c/e")
  assert path in caplog.text and what in caplog.text
  for load in _LOADS:
    with pytest.raises(store.StoreError) as err:
      load(d, "c/e")
    msg = str(err.value)
    assert path in msg and what in msg and _REDO in msg


def test_corrupt_byte_is_named_where_it_is_read(tmp_path):
  """A flipped byte passes the resume check (it reads no content); reading the entry
  names the file and the array whose CRC-32 fails."""
  d, path = _written(tmp_path)
  clean = open(path, "rb").read()
  index, base = _index(path)
  assert len(index["arrays"]) > 10
  for rec in index["arrays"]:
    if rec["size"] == 0:
      continue
    data = bytearray(clean)
    data[base + rec["offset"] + rec["size"] // 2] ^= 0x10
    with open(path, "wb") as f:
      f.write(data)
    assert store.is_complete(d, "c/e")
    with pytest.raises(store.StoreError) as err:
      store.load_prediction(d, "c/e")
    msg = str(err.value)
    assert path in msg and f"checksum mismatch in array '{rec['key']}'" in msg and _REDO in msg
  # In the index (the payload's CRC-32 covers it): a height that still parses.
  data = bytearray(clean)
  at = data.index(b'"height":24')
  data[at + 10] = ord("5")
  with open(path, "wb") as f:
    f.write(data)
  assert store.is_complete(d, "c/e")
  with pytest.raises(store.StoreError, match="checksum mismatch in the index"):
    store.load_prediction(d, "c/e")


def test_other_format_versions_are_refused(tmp_path, caplog):
  d, path = _written(tmp_path)
  with open(path, "r+b") as f:  # bytes 8..12 hold the version
    f.seek(8)
    f.write(struct.pack("<I", store.FORMAT_VERSION + 1))
  with caplog.at_level(logging.WARNING):
    assert not store.is_complete(d, "c/e")  # so `predict` rewrites it
  want = (f"{path}: written in store format version {store.FORMAT_VERSION + 1}; this code "
          f"reads only version {store.FORMAT_VERSION}: rerun the `predict` stage with "
          "--config.predict.overwrite=True")
  assert want in caplog.text
  for load in _LOADS:
    with pytest.raises(store.StoreError, match="written in store format version") as err:
      load(d, "c/e")
    assert want in str(err.value)
  store.write_meta(d, {"image_size": [H, W]})
  meta_path = os.path.join(d, store.META_FILE)
  for version in (store.FORMAT_VERSION + 1, None):
    meta = json.load(open(meta_path))
    meta.pop("format_version")
    if version is not None:
      meta["format_version"] = version
    with open(meta_path, "w") as f:
      json.dump(meta, f)
    for read in (store.read_meta, lambda d: store.check_meta(d, {"image_size": [H, W]})):
      with pytest.raises(store.StoreError) as err:
        read(d)
      assert (f"{meta_path}: a prediction store of format version "
              f"{'<missing>' if version is None else version}; this code reads only version "
              f"{store.FORMAT_VERSION}: rerun the `predict` stage with "
              "--config.predict.overwrite=True") in str(err.value)


def test_records_of_another_codec_are_refused(tmp_path):
  d, path = _written(tmp_path)
  _rewrite_index(path, lambda index: index["arrays"][0].update(codec="hist"))
  for load in _LOADS[:3]:
    with pytest.raises(store.StoreError, match="unknown codec 'hist'") as err:
      load(d, "c/e")
    assert path in str(err.value)


def _undecodable(path):  # valid header, length and checksum around a broken index
  payload = struct.pack("<I", 5) + b"{oops" + b"\0" * 10
  header = struct.pack("<8sIQI", store.MAGIC, store.FORMAT_VERSION, len(payload),
                       zlib.crc32(payload))
  with open(path, "wb") as f:
    f.write(header + payload)


def test_undecodable_payload_raises_store_error(tmp_path):
  d, path = _written(tmp_path)
  _undecodable(path)
  assert not store.is_complete(d, "c/e")  # the resume check parses the index
  for load in _LOADS:
    with pytest.raises(store.StoreError, match="cannot decode") as err:
      load(d, "c/e")
    assert path in str(err.value) and isinstance(err.value, ValueError)


def test_moved_entry_is_detected(tmp_path):
  d, path = _written(tmp_path, "c/e")
  other = store.entry_path(d, "c/f")
  os.rename(path, other)
  for load in _LOADS:
    with pytest.raises(store.StoreError, match="holds the entry of 'c/e'"):
      load(d, "c/f")


def test_missing_entry(tmp_path):
  d = str(tmp_path)
  assert not store.is_complete(d, "c/none")
  for load in _LOADS:
    with pytest.raises(FileNotFoundError) as err:
      load(d, "c/none")
    assert store.entry_path(d, "c/none") in str(err.value) and "`predict`" in str(err.value)


def test_writes_are_atomic(tmp_path, monkeypatch):
  d, path = _written(tmp_path)
  before = open(path, "rb").read()

  def failing_replace(src, dst):
    raise OSError("disk full")
  monkeypatch.setattr(fileio.os, "replace", failing_replace)
  sem, code = small_entry(seed=5)
  for name in ("c/e", "c/new"):
    with pytest.raises(OSError, match="disk full"):
      store.write_prediction(d, name, sem, code, no_dets(H, W), no_dets(H, W))
  monkeypatch.undo()
  assert open(path, "rb").read() == before  # old entry intact
  assert not store.is_complete(d, "c/new")
  assert os.listdir(os.path.join(d, "entries", "c")) == ["e" + store.SUFFIX]  # no temp files


@pytest.mark.parametrize("change, match", [
    (dict(confidence_code=np.zeros((H, W), np.float32)), "thresholds.quantize"),
    (dict(semantic=np.zeros((H, W), np.int32)), "semantic must be uint8"),
    (dict(modal_classes=np.array([3])), "thing ids"),
    (dict(modal_masks=np.zeros((1, H, W + 1), bool)), "disagree"),
])
def test_bad_inputs_are_rejected(tmp_path, change, match):
  sem, code = small_entry()
  modal = ellipse_dets(np.random.default_rng(4), H, W, 1)
  args = {"semantic": sem, "confidence_code": code}
  for k, v in change.items():
    if k.startswith("modal_"):
      modal[k[len("modal_"):]] = v
    else:
      args[k] = v
  with pytest.raises(ValueError, match=match):
    store.write_prediction(str(tmp_path), "c/x", args["semantic"], args["confidence_code"],
                           modal, no_dets(H, W))
  assert store.list_predictions(str(tmp_path)) == []


def test_meta_round_trip_and_mismatch(tmp_path):
  d = str(tmp_path)
  with pytest.raises(FileNotFoundError, match="`predict`"):
    store.read_meta(d)
  meta = {"image_size": (400, 2048), "quant": thresholds.QUANT, "checkpoint": "/ck/a"}
  store.write_meta(d, meta)
  got = store.read_meta(d)
  assert got == {"image_size": [400, 2048], "quant": 65535, "checkpoint": "/ck/a",
                 "format_version": store.FORMAT_VERSION}
  assert store.check_meta(d, {"image_size": [400, 2048], "checkpoint": "/ck/a"}) == got
  assert store.check_meta(d, {"image_size": (np.int64(400), 2048)}) == got

  with pytest.raises(store.StoreError) as err:
    store.check_meta(d, {"image_size": (200, 1024), "checkpoint": "/ck/b", "quant": 65535,
                         "seed": 3})
  msg = str(err.value)
  assert d in msg and "rerun the `predict` stage" in msg
  assert "image_size: store has [400, 2048], current config has [200, 1024]" in msg
  assert "checkpoint: store has '/ck/a', current config has '/ck/b'" in msg
  assert "seed: store has '<missing>'" in msg and "quant" not in msg

  with open(os.path.join(d, store.META_FILE), "w") as f:
    f.write("{broken")
  with pytest.raises(store.StoreError, match="cannot parse"):
    store.read_meta(d)


def test_panorama_entry_is_under_1mb(tmp_path):
  h, w = 400, 2048
  probs = softmax_map(np.random.default_rng(0), h, w)
  sem, conf = probs.argmax(0).astype(np.uint8), probs.max(0)
  del probs
  assert 0.97 < np.median(conf) < 1.0 and conf.min() > 1 / 18 - 1e-6
  code = thresholds.quantize(conf)
  rng = np.random.default_rng(0)
  modal, amodal = ellipse_dets(rng, h, w, 20), ellipse_dets(rng, h, w, 20)
  d = str(tmp_path)
  n = store.write_prediction(d, "city/pano", sem, code, modal, amodal,
                             {"feat_sum": np.ones((18, 64), np.float32)})
  e = store.load_prediction(d, "city/pano")
  np.testing.assert_array_equal(e["confidence_code"], code)
  assert_branch_equal(e["amodal"], amodal)
  s = store.load_summary(d, "city/pano")
  np.testing.assert_array_equal(s["histogram"], thresholds.sparse_histogram(sem, code))
  # The reference keeps 18x400x2048 float32 = 59 MB (docs/formats.md §3 has the sizes).
  assert n < 1_000_000, n
  index, _ = _index(store.entry_path(d, "city/pano"))
  hist = sum(r["size"] for r in index["arrays"] if r["key"] in (store.BLOCKS_KEY, store.FINE_KEY))
  assert hist < 180_000, hist
