"""The compact prediction store: one file per panorama, written by ``predict``.

Layout of a store folder::

    <store_dir>/meta.json              format version, image size, quantisation, checkpoint
    <store_dir>/entries/<name>.pred    one entry per panorama; name = "<city>/<stem>" or
                                       a relative path (a folder of one's own panoramas)

The reference dumps an 18x400x2048 float32 softmax map per panorama (59 MB;
docs/method.md §4); OPLL only needs its argmax and max probability, so an entry keeps

* ``semantic`` uint8 [H,W]: the argmax (deflate; large flat regions);
* ``confidence_code`` uint16 [H,W]: ``thresholds.quantize(max prob)``, kept
  losslessly: second differences along both axes (mod 2^16), zigzag, the
  high and low bytes as two planes, deflate. The maps are bilinearly
  upsampled stride-4 logits, so second differences are small, and saturated
  regions (code 65535) give zeros. On a synthetic 400x2048 softmax map
  (median 0.99; the size test's) this takes 0.65 MB (decode 10 ms) against
  1.25 MB for deflated raw codes, 1.03 MB for byte planes, 0.91 MB for
  byte planes of horizontal differences and 1.04 MB for a 16-bit PNG; bz2
  of the same residuals is 7% smaller but decodes 4x slower;
* both branches' detections (classes 11..17, scores, boxes) with masks as
  box crops of packed bits (``maskcodec``), deflated;
* the per-class histogram of the stored codes in two levels, computed here
  from the maps (so it cannot disagree with them), for the OPLL threshold
  pass (``stages/opll.py``; docs/method.md §5.1): ``conf_blocks`` uint32 [4, C, 64]
  (deflated, ~8 kB): per (class, 1024-code block) its pixel count, the end
  offset, format and CRC-32 of its chunk; ``conf_fine`` (codec ``chunks``):
  per non-empty (class, block) the 1024 code counts as 4-bit pairs or
  uint8/16/32, each chunk raw-deflated alone (``encode_blocks``). Pass 1
  reads the block counts and the scores (``load_blocks``), pass 2 inflates
  one chunk per class (``load_fine``); both read only the file's first
  ~10 kB / ~160 kB (these members are stored first), check the header and
  the CRC-32 of what they decode (not the whole payload's: 0.3 ms), and take
  ~0.15 / ~0.3 ms per 400x2048 panorama. On the synthetic 400x2048
  panoramas of benchmarks/opll.py (~193k class/code pairs, ~900 non-empty
  blocks) this is 0.145 MB (0.82 MB entries); the earlier one-level
  ``conf_hist`` (below) took 0.12 MB but had to be inflated whole (~3.5 ms
  per panorama with the adds). Without the 4-bit form the chunks took 0.156
  MB (0.191 MB at deflate level 1; 4-bit at level 1: 0.159 MB, ~15 ms less
  per write);
* ``extra``: small named arrays the caller wants alongside;
* ``source_path`` and ``source_size`` (in the index, optional): the image
  file the entry was predicted from and its ``(height, width)`` before it
  was resized to the store's size, recorded for the user's own panoramas
  (``layouts/folder.py``) so exports can be written back at that size
  (``pseudo/export.py``). Entries without them (a data set split, or written
  before they were recorded) load with ``None`` for both; adding them kept
  the format version, as readers ignore index keys they do not know.

Older entries still load: with ``conf_hist`` int64 [2,K] (the sparse
histogram ``thresholds.sparse_histogram``: sorted keys ``class * 65536 +
code`` and their counts; codec ``hist``: per pair one byte of two nibbles,
key gap - 1 and count - 1, 15 = escape with the value in an overflow list
of byte planes, deflate, ``encode_histogram``) or without any histogram;
``load_summary``, ``load_blocks`` and ``load_fine`` then use it, or compute
it from the maps (~25 ms per panorama instead of ~0.5 ms). ``load_summary``
returns the sparse histogram of every entry (all chunks, ~10 ms).

An entry is ``header | payload``; the 24-byte header holds a magic, the
format version, the payload length and its CRC-32, so a truncated or
corrupted file is detected cheaply (``is_complete``) and named
(``StoreError``). The payload is a JSON index (name, size, one record per
array: key, dtype, shape, codec, offset, size, CRC-32) followed by the array
blobs, the detection classes and scores and the two-level histogram first.
"""
from __future__ import annotations

import json
import logging
import os
import struct
import zlib

import numpy as np

from unlock_jax import fileio
from unlock_jax.data import labels
from unlock_jax.data import maskcodec
from unlock_jax.pseudo import thresholds

_log = logging.getLogger(__name__)

FORMAT_VERSION = 1
MAGIC = b"UNLKPRED"
SUFFIX = ".pred"
META_FILE = "meta.json"
ENTRIES = "entries"
_HEADER = struct.Struct("<8sIQI")  # magic, version, payload length, crc32(payload)
_LEVEL = 6  # deflate level: level 9 is 3x slower for 0.5% less
_BRANCHES = ("modal", "amodal")
_NUMERIC_KINDS = "biuf"
_REDO = "delete it and rerun the `predict` stage (it skips complete entries)"
HIST_KEY = "conf_hist"
_HIST = struct.Struct("<IIIIBB")  # pairs, first key, escapes (gaps, counts), their bytes
_SUMMARY_BRANCH_KEYS = tuple(f"{b}/{k}" for b in _BRANCHES for k in ("classes", "scores"))
BLOCKS_KEY = "conf_blocks"  # uint32 [4, C, 64]: block counts, chunk ends, formats, CRC-32s
FINE_KEY = "conf_fine"  # uint8 [bytes]: the chunks (codec "chunks")
_CHUNK_LEVEL = 6  # 10% smaller than level 1, ~15 ms more per entry write, same inflate
_CHUNK_DTYPES = {2: "<u1", 3: "<u2", 4: "<u4"}  # chunk format 1: two 4-bit counts per byte
_HIST_KEYS = (HIST_KEY, BLOCKS_KEY, FINE_KEY)
_FIRST = _SUMMARY_BRANCH_KEYS + (BLOCKS_KEY, FINE_KEY)  # stored first: one short read
_PREFIX = 1 << 16  # first read of the two-level readers
_no_hist_logged: set = set()  # stores whose old entries made load_summary decode the maps
_one_level_logged: set = set()  # stores whose old entries load_blocks read whole


class StoreError(ValueError):
  """A store entry or meta file is truncated, corrupt or from another config."""


# ---------------------------------------------------------------- names, paths


def _name_parts(name: str) -> list[str]:
  if not isinstance(name, str) or not name:
    raise ValueError(f"prediction name must be a non-empty string, got {name!r}")
  if name.startswith("/") or "\\" in name or "\0" in name:
    raise ValueError(f"prediction name {name!r} must be a relative path like '<city>/<stem>' "
                     "with '/' separators")
  parts = name.split("/")
  if any(p in ("", ".", "..") for p in parts):
    raise ValueError(f"prediction name {name!r} has an empty, '.' or '..' part")
  return parts


def entry_path(store_dir: str, name: str) -> str:
  """``<store_dir>/entries/<name>.pred``; ValueError for '..' or absolute names."""
  return os.path.join(store_dir, ENTRIES, *_name_parts(name)) + SUFFIX


def list_predictions(store_dir: str) -> list[str]:
  """Sorted names of the entries in the store (temp files of a killed write excluded)."""
  root = os.path.join(store_dir, ENTRIES)
  names = []
  for rel, _, files in fileio.walk(root):
    for f in files:
      if f.endswith(SUFFIX):
        stem = f[:-len(SUFFIX)]
        names.append(stem if not rel else "/".join(rel.split(os.sep) + [stem]))
  return sorted(names)


# ------------------------------------------------------------------- codecs


def _zigzag(r: np.ndarray) -> np.ndarray:
  """uint16 residuals read as int16 → small unsigned codes (0, -1, 1, -2 → 0, 1, 2, 3)."""
  s = r.view(np.int16)
  return ((s << 1) ^ (s >> 15)).view(np.uint16)


def _unzigzag(z: np.ndarray) -> np.ndarray:
  return (z >> 1) ^ ((z & 1) * np.uint16(0xFFFF))


def encode_confidence(code: np.ndarray) -> bytes:
  """uint16 [H,W] → deflated byte planes of zigzagged second differences."""
  r = np.ascontiguousarray(code, np.uint16)
  for axis in (1, 1, 0, 0):  # uint16 arithmetic wraps mod 2^16, so cumsum inverts it
    d = r.copy()
    if axis == 1:
      d[:, 1:] -= r[:, :-1]
    else:
      d[1:] -= r[:-1]
    r = d
  z = _zigzag(r)
  planes = np.concatenate([(z >> 8).astype(np.uint8).ravel(), z.astype(np.uint8).ravel()])
  return zlib.compress(planes.tobytes(), _LEVEL)


def decode_confidence(blob: bytes, height: int, width: int) -> np.ndarray:
  """Inverse of :func:`encode_confidence` (exact)."""
  n = height * width
  planes = np.frombuffer(zlib.decompress(blob), np.uint8)
  if planes.size != 2 * n:
    raise ValueError(f"confidence planes hold {planes.size} bytes, expected {2 * n}")
  z = (planes[:n].astype(np.uint16) << 8) | planes[n:]
  r = _unzigzag(z).reshape(height, width)
  for _ in range(2):
    for i in range(1, height):  # row by row: 10x faster than a strided cumsum(axis=0)
      np.add(r[i], r[i - 1], out=r[i])
  for _ in range(2):
    r = np.cumsum(r, axis=1, dtype=np.uint16)
  return r


def _planes(v: np.ndarray) -> tuple[bytes, int]:
  """Non-negative int64 [n] → (little-endian byte planes, bytes per value)."""
  nb = max(1, (int(v.max()).bit_length() + 7) // 8) if v.size else 1
  planes = v.astype("<u8").view(np.uint8).reshape(-1, 8)[:, :nb].T
  return np.ascontiguousarray(planes).tobytes(), nb


def _unplanes(raw: bytes, offset: int, n: int, nb: int) -> np.ndarray:
  p = np.frombuffer(raw, np.uint8, n * nb, offset).reshape(nb, n)
  out = p[0].astype(np.int64)
  for j in range(1, nb):
    out |= p[j].astype(np.int64) << (8 * j)
  return out


def encode_histogram(hist: np.ndarray) -> bytes:
  """int64 [2,K] (strictly increasing keys in [0, 2^31), counts >= 1) → codec ``hist``.

  Header ``K, first key, #gap escapes, #count escapes, bytes per gap escape,
  bytes per count escape``, then deflate of: one byte per pair, high nibble
  ``min(gap - 1, 15)`` (gap = key - previous key; 0 for the first pair),
  low nibble ``min(count - 1, 15)``; then the gaps and counts whose nibble is
  15, in full, as little-endian byte planes.
  """
  h = np.asarray(hist)
  if h.ndim != 2 or h.shape[0] != 2 or (h.size and h.dtype.kind not in "iu"):
    raise ValueError(f"histogram must be an integer [2, K] array, got {h.dtype} {h.shape}")
  h = h.astype(np.int64)
  k = h.shape[1]
  gap = np.diff(h[0], prepend=h[0, :1] - 1)  # the first gap (1) stands for the header's key
  if k and (gap.min() < 1 or h[1].min() < 1 or h[0, 0] < 0 or h[0, -1] >= 2**31):
    raise ValueError("histogram keys must be strictly increasing in [0, 2^31) and counts >= 1")
  g, c = np.minimum(gap - 1, 15).astype(np.uint8), np.minimum(h[1] - 1, 15).astype(np.uint8)
  (pg, bg), (pc, bc) = _planes(gap[g == 15]), _planes(h[1][c == 15])
  head = _HIST.pack(k, int(h[0, 0]) if k else 0, int((g == 15).sum()), int((c == 15).sum()),
                    bg, bc)
  # Level 1: level 6 is 1.4% smaller and 5x slower to write, no faster to read.
  return head + zlib.compress(((g << 4) | c).tobytes() + pg + pc, 1)


def decode_histogram(blob: bytes) -> np.ndarray:
  """Inverse of :func:`encode_histogram` (exact); ~1.5 ms for 200k pairs, 2/3 of it inflate."""
  if len(blob) < _HIST.size:
    raise ValueError("histogram blob shorter than its header")
  k, first, ng, nc, bg, bc = _HIST.unpack_from(blob)
  if not (1 <= bg <= 8 and 1 <= bc <= 8):
    raise ValueError(f"histogram escapes of {bg}, {bc} bytes")
  total = k + ng * bg + nc * bc
  raw = zlib.decompress(memoryview(blob)[_HIST.size:], bufsize=max(total, 1))
  if len(raw) != total:
    raise ValueError(f"histogram holds {len(raw)} bytes, expected {total}")
  tok = np.frombuffer(raw, np.uint8, k)
  out = np.empty((2, k), np.int64)
  for row, nib, n, nb, off in ((out[0], tok >> 4, ng, bg, k),
                               (out[1], tok & 15, nc, bc, k + ng * bg)):
    esc = np.flatnonzero(nib == 15)  # (index assignment: 3x faster than a bool mask)
    if esc.size != n:
      raise ValueError(f"histogram has {esc.size} escapes, its header says {n}")
    nib += np.uint8(1)  # uint8 math, one int64 pass per row
    row[:] = nib
    row[esc] = _unplanes(raw, off, n, nb)
  if k:
    out[0, 0] = first
    np.cumsum(out[0], out=out[0])
  return out


def encode_blocks(hist: np.ndarray) -> tuple[np.ndarray, bytes]:
  """A sparse histogram (``thresholds.sparse_histogram``) → ``(table, chunks)``.

  The codes of a class are cut into ``thresholds.NUM_BLOCKS`` blocks of
  ``thresholds.BLOCK``; ``table`` uint32 [4, C, 64] (C = largest class + 1)
  holds per (class, block) row 0 its pixel count, row 1 the end offset of its
  chunk in ``chunks`` (it starts at the previous end), row 2 the chunk format
  (0 = no pixels, no chunk; 1 = 1024 4-bit counts, two per byte; 2, 3, 4 =
  1024 little-endian uint8, uint16, uint32 counts; the smallest that fits)
  and row 3 the chunk's CRC-32. Each chunk is deflated alone (raw deflate),
  so one (class, block) slice inflates without the rest.
  """
  keys, counts = np.asarray(hist)
  keys, counts = keys.astype(np.int64), counts.astype(np.int64)
  c = int(keys.max()) // (thresholds.QUANT + 1) + 1 if keys.size else 0
  table = np.zeros((4, c * thresholds.NUM_BLOCKS), np.uint32)
  chunk = keys // thresholds.BLOCK  # class * 64 + block; keys are sorted
  total = np.zeros(c * thresholds.NUM_BLOCKS, np.int64)
  np.add.at(total, chunk, counts)
  if total.size and total.max() >= 2**32:
    raise ValueError("block counts must be below 2^32")
  table[0] = total
  ids, starts = np.unique(chunk, return_index=True)
  bounds = np.append(starts, keys.size)
  sizes, blobs = np.zeros(c * thresholds.NUM_BLOCKS, np.int64), []
  dense = np.zeros(thresholds.BLOCK, np.int64)
  for j, a, b in zip(ids.tolist(), bounds[:-1].tolist(), bounds[1:].tolist()):
    dense[:] = 0
    dense[keys[a:b] % thresholds.BLOCK] = counts[a:b]
    m = int(counts[a:b].max())
    if m < 16:
      fmt, raw = 1, ((dense[0::2] << 4) | dense[1::2]).astype(np.uint8).tobytes()
    else:
      fmt = 2 if m < 256 else 3 if m < 65536 else 4
      raw = dense.astype(_CHUNK_DTYPES[fmt]).tobytes()
    co = zlib.compressobj(_CHUNK_LEVEL, zlib.DEFLATED, -15)
    blob = co.compress(raw) + co.flush()
    table[2, j], table[3, j], sizes[j] = fmt, zlib.crc32(blob), len(blob)
    blobs.append(blob)
  table[1] = np.cumsum(sizes)
  return table.reshape(4, c, thresholds.NUM_BLOCKS), b"".join(blobs)


def _check_table(table: np.ndarray, nbytes: int) -> None:
  if table.ndim != 3 or table.shape[0] != 4 or table.shape[2] != thresholds.NUM_BLOCKS:
    raise ValueError(f"block table has shape {list(table.shape)}, expected "
                     f"[4, C, {thresholds.NUM_BLOCKS}]")
  counts, ends, fmt = (table[i].reshape(-1).astype(np.int64) for i in range(3))
  sizes = np.diff(ends, prepend=0)
  if (sizes < 0).any() or (ends[-1] if ends.size else 0) != nbytes:
    raise ValueError(f"block table chunk offsets do not cover the {nbytes} chunk bytes")
  if (fmt > 4).any() or ((fmt == 0) != (counts == 0)).any() or ((fmt == 0) != (sizes == 0)).any():
    raise ValueError("block table formats disagree with its counts or chunk sizes")


def _inflate_chunk(chunks, start: int, end: int, fmt: int, crc: int) -> np.ndarray:
  """One chunk's 1024 counts (a read-only view; int64 for format 1)."""
  if not (0 <= start <= end <= len(chunks)) or not 1 <= fmt <= 4:
    raise ValueError(f"histogram chunk at {start}..{end} of format {fmt} is not in the "
                     f"{len(chunks)} chunk bytes")
  blob = chunks[start:end]
  if zlib.crc32(blob) != crc:
    raise ValueError("checksum mismatch in a histogram chunk")
  raw = zlib.decompress(blob, -15)
  if fmt == 1:
    if len(raw) != thresholds.BLOCK // 2:
      raise ValueError(f"histogram chunk holds {len(raw)} bytes, expected "
                       f"{thresholds.BLOCK // 2}")
    b = np.frombuffer(raw, np.uint8)
    out = np.empty(thresholds.BLOCK, np.int64)
    out[0::2], out[1::2] = b >> 4, b & 15
    return out
  d = np.dtype(_CHUNK_DTYPES[fmt])
  if len(raw) != thresholds.BLOCK * d.itemsize:
    raise ValueError(f"histogram chunk holds {len(raw)} bytes, expected "
                     f"{thresholds.BLOCK * d.itemsize}")
  return np.frombuffer(raw, d)


def decode_chunk(chunks, table: np.ndarray, cls: int, block: int) -> np.ndarray:
  """The 1024 code counts (int64) of ``(cls, block)`` from :func:`encode_blocks`'s output.

  Checks the chunk's CRC-32 (the sum against the table's count is checked
  once per class by ``thresholds.SemanticQuantiles``).
  """
  fmt = int(table[2, cls, block])
  if fmt == 0:
    return np.zeros(thresholds.BLOCK, np.int64)
  flat = cls * thresholds.NUM_BLOCKS + block
  start = int(table[1].reshape(-1)[flat - 1]) if flat else 0
  return _inflate_chunk(chunks, start, int(table[1, cls, block]), fmt,
                        int(table[3, cls, block])).astype(np.int64)


def decode_blocks(table: np.ndarray, chunks) -> np.ndarray:
  """Inverse of :func:`encode_blocks`: the sparse histogram int64 [2, K] (all chunks)."""
  _check_table(table, len(chunks))
  keys, counts = [], []
  for cls, block in zip(*np.nonzero(table[2])):
    d = decode_chunk(chunks, table, int(cls), int(block))
    if int(d.sum()) != int(table[0, cls, block]):
      raise ValueError(f"histogram chunk of class {cls}, block {block} counts {int(d.sum())} "
                       f"pixels, the block table {int(table[0, cls, block])}")
    nz = np.flatnonzero(d)
    keys.append((int(cls) * thresholds.NUM_BLOCKS + int(block)) * thresholds.BLOCK + nz)
    counts.append(d[nz])
  if not keys:
    return np.zeros((2, 0), np.int64)
  return np.stack([np.concatenate(keys), np.concatenate(counts)])


def _encode(key: str, arr: np.ndarray, codec: str) -> tuple[dict, bytes]:
  if codec == "d2zz":
    blob = encode_confidence(arr)
  elif codec == "hist":
    blob = encode_histogram(arr)
  elif codec == "zlib":
    blob = zlib.compress(np.ascontiguousarray(arr).tobytes(), _LEVEL)
  else:  # raw, chunks (already encoded bytes)
    blob = np.ascontiguousarray(arr).tobytes()
  rec = {"key": key, "dtype": arr.dtype.str, "shape": list(arr.shape),
         "codec": codec, "size": len(blob), "crc": zlib.crc32(blob)}
  return rec, blob


def _decode(rec: dict, blob: bytes) -> np.ndarray:
  dtype, shape = np.dtype(rec["dtype"]), tuple(int(s) for s in rec["shape"])
  if dtype.kind not in _NUMERIC_KINDS or dtype.fields is not None:
    raise ValueError(f"array '{rec['key']}' has unsupported dtype {rec['dtype']}")
  if rec["codec"] == "d2zz":
    if dtype != np.uint16 or len(shape) != 2:
      raise ValueError(f"array '{rec['key']}': codec d2zz needs uint16 [H,W]")
    return decode_confidence(blob, *shape)
  if rec["codec"] == "hist":
    if dtype != np.int64 or len(shape) != 2 or shape[0] != 2:
      raise ValueError(f"array '{rec['key']}': codec hist needs int64 [2,K]")
    hist = decode_histogram(blob)
    if hist.shape != shape:
      raise ValueError(f"array '{rec['key']}' decodes to {list(hist.shape)}, "
                       f"expected {list(shape)}")
    return hist
  if rec["codec"] == "zlib":
    blob = zlib.decompress(blob)
  elif rec["codec"] not in ("raw", "chunks"):
    raise ValueError(f"array '{rec['key']}' has unknown codec {rec['codec']!r}")
  count = int(np.prod(shape, dtype=np.int64))
  if len(blob) != count * dtype.itemsize:
    raise ValueError(f"array '{rec['key']}' holds {len(blob)} bytes, "
                     f"expected {count * dtype.itemsize} for {dtype} {list(shape)}")
  return np.frombuffer(blob, dtype).reshape(shape).copy()  # writable for callers


def _plain(key: str, arr: np.ndarray) -> tuple[dict, bytes]:
  """Small arrays raw, larger ones deflated."""
  return _encode(key, arr, "zlib" if arr.nbytes >= 256 else "raw")


# ------------------------------------------------------------------- writing


def _check_branch(branch: str, dets: dict, height: int, width: int) -> dict:
  """Validated, dtype-normalised copy of one branch's detections."""
  for k in ("classes", "scores", "boxes", "masks"):
    if k not in dets:
      raise ValueError(f"{branch} detections have no '{k}'")
  classes = np.asarray(dets["classes"])
  n = classes.shape[0] if classes.ndim == 1 else -1
  if classes.ndim != 1 or (n and classes.dtype.kind not in "iu"):
    raise ValueError(f"{branch} classes must be an integer [N] array, got "
                     f"{classes.dtype} {classes.shape}")
  if n and not np.isin(classes, labels.THING_IDS).all():
    raise ValueError(f"{branch} classes must be thing ids {labels.THING_IDS[0]}.."
                     f"{labels.THING_IDS[-1]}, got {sorted(set(classes.tolist()))}")
  scores = np.asarray(dets["scores"], np.float32)
  boxes = np.asarray(dets["boxes"], np.float32)
  masks = np.asarray(dets["masks"])
  if n == 0:  # accept any empty array for "no detections"
    scores = scores.reshape(0) if scores.size == 0 else scores
    boxes = boxes.reshape(0, 4) if boxes.size == 0 else boxes
    masks = np.zeros((0, height, width), bool) if masks.size == 0 else masks
  if scores.shape != (n,) or boxes.shape != (n, 4) or masks.shape != (n, height, width):
    raise ValueError(f"{branch} detections disagree: classes {classes.shape}, scores "
                     f"{scores.shape}, boxes {boxes.shape}, masks {masks.shape}; "
                     f"expected [N], [N], [N,4], [N,{height},{width}]")
  return {"classes": classes.astype(np.int32), "scores": scores, "boxes": boxes,
          "packed": maskcodec.pack(masks)}


def _check_extra(extra: dict | None) -> dict:
  out = {}
  for k, v in (extra or {}).items():
    if not isinstance(k, str) or not k:
      raise ValueError(f"extra keys must be non-empty strings, got {k!r}")
    a = np.asarray(v)
    if a.dtype.kind not in _NUMERIC_KINDS or a.dtype.fields is not None:
      raise ValueError(f"extra '{k}' must be a numeric or bool array, got {a.dtype}")
    out[k] = a
  return out


def _check_source(source_path, source_size) -> dict:
  """The index's source keys; ValueError for a path that is not a string or a bad size."""
  out = {}
  if source_path is not None:
    if not isinstance(source_path, str) or not source_path:
      raise ValueError(f"source_path must be a non-empty string, got {source_path!r}")
    out["source_path"] = source_path
  if source_size is not None:
    size = [int(v) for v in np.asarray(source_size).reshape(-1)]
    if len(size) != 2 or min(size) < 1:
      raise ValueError(f"source_size must be (height, width) >= 1, got {source_size!r}")
    out["source_size"] = size
  return out


def encode_entry(name: str, semantic, confidence_code, modal: dict, amodal: dict,
                 extra: dict | None = None, source_path: str | None = None,
                 source_size=None) -> bytes:
  """The bytes of one entry file (header + payload); validates every input."""
  _name_parts(name)
  source = _check_source(source_path, source_size)
  semantic, code = np.asarray(semantic), np.asarray(confidence_code)
  if semantic.dtype != np.uint8 or semantic.ndim != 2:
    raise ValueError(f"semantic must be uint8 [H,W], got {semantic.dtype} {semantic.shape}")
  if code.dtype != np.uint16 or code.shape != semantic.shape:
    raise ValueError(f"confidence_code must be uint16 {list(semantic.shape)} (quantise the "
                     f"max probability with thresholds.quantize), got {code.dtype} {code.shape}")
  h, w = semantic.shape
  if h * w >= 2**32:
    raise ValueError(f"a {h}x{w} image has too many pixels for the block counts (uint32)")
  table, chunks = encode_blocks(thresholds.sparse_histogram(semantic, code))
  parts = [_encode("semantic", semantic, "zlib"), _encode("confidence_code", code, "d2zz"),
           _plain(BLOCKS_KEY, table),
           _encode(FINE_KEY, np.frombuffer(chunks, np.uint8), "chunks")]
  for branch, dets in (("modal", modal), ("amodal", amodal)):
    d = _check_branch(branch, dets, h, w)
    for k in ("classes", "scores", "boxes"):
      parts.append(_plain(f"{branch}/{k}", d[k]))
    for k, a in d["packed"].items():
      parts.append(_plain(f"{branch}/packed/{k}", a))
  for k, a in _check_extra(extra).items():
    parts.append(_plain(f"extra/{k}", a))

  offset, arrays = 0, []
  first = {k: i for i, k in enumerate(_FIRST)}  # the summary members first, in this order
  parts.sort(key=lambda part: first.get(part[0]["key"], len(first)))
  for rec, blob in parts:
    arrays.append(dict(rec, offset=offset))
    offset += len(blob)
  index = json.dumps({"name": name, "height": h, "width": w, **source, "arrays": arrays},
                     separators=(",", ":")).encode("utf-8")
  payload = b"".join([struct.pack("<I", len(index)), index] + [b for _, b in parts])
  return _HEADER.pack(MAGIC, FORMAT_VERSION, len(payload), zlib.crc32(payload)) + payload


def write_prediction(store_dir: str, name: str, semantic, confidence_code, modal: dict,
                     amodal: dict, extra: dict | None = None, source_path: str | None = None,
                     source_size=None) -> int:
  """Writes ``<store_dir>/entries/<name>.pred`` atomically; returns its size in bytes.

  ``modal``/``amodal``: ``{"classes" int [N] (11..17), "scores" [N], "boxes"
  [N,4] x1,y1,x2,y2, "masks" bool [N,H,W]}``; ``extra``: small named numeric
  arrays returned by the loader under "extra"; ``source_path`` and
  ``source_size`` ``(height, width)``: the image file and its size before
  resizing, when known (returned by the loader, None otherwise). The two-level confidence
  histogram is computed and stored here (~50 ms for 400x2048: the sparse
  histogram ~20 ms, ~900 chunks deflated ~30 ms).
  """
  data = encode_entry(name, semantic, confidence_code, modal, amodal, extra, source_path,
                      source_size)
  fileio.atomic_write_bytes(entry_path(store_dir, name), data)
  return len(data)


# ------------------------------------------------------------------- reading


def _header(path: str, data) -> tuple[int, int]:
  """``(payload length, crc)`` from an entry's header, after its magic and version checks."""
  magic, version, length, crc = _HEADER.unpack_from(data)
  if magic != MAGIC:
    raise StoreError(f"{path}: not a prediction store entry (bad magic {magic!r}); {_REDO}")
  if version != FORMAT_VERSION:
    raise StoreError(f"{path}: written in store format version {version}, this code reads "
                     f"version {FORMAT_VERSION}; {_REDO}")
  return length, crc


def _verified_payload(path: str) -> bytes:
  """The payload of an entry file after the header checks; StoreError naming the fault."""
  data = fileio.read_bytes(path)
  if len(data) < _HEADER.size:
    raise StoreError(f"{path}: truncated ({len(data)} bytes, shorter than the header); {_REDO}")
  length, crc = _header(path, data)
  payload = memoryview(data)[_HEADER.size:]  # no copy of the ~0.7 MB
  if len(payload) != length:
    raise StoreError(f"{path}: bad length, payload is {len(payload)} bytes but the header "
                     f"says {length} (truncated or appended to); {_REDO}")
  if zlib.crc32(payload) != crc:
    raise StoreError(f"{path}: checksum mismatch (payload corrupted); {_REDO}")
  return payload


def is_complete(store_dir: str, name: str) -> bool:
  """True iff the entry exists and its header, length and CRC-32 check out.

  Reads the file once (~1 ms for a 0.7 MB entry); a present but bad entry is
  logged and reported incomplete, so ``predict`` rewrites it.
  """
  path = entry_path(store_dir, name)
  if not fileio.isfile(path):
    return False
  try:
    _verified_payload(path)
  except (StoreError, OSError) as e:
    _log.warning("prediction entry will be rewritten: %s", e)
    return False
  return True


def _parse(payload, want=None) -> tuple[dict, dict]:
  """(index, {key: array}) of a verified payload; only keys ``want(key)`` is true of."""
  (n,) = struct.unpack_from("<I", payload)
  index = json.loads(bytes(payload[4:4 + n]).decode("utf-8"))
  base, arrays = 4 + n, {}
  for rec in index["arrays"]:
    if want is not None and not want(rec["key"]):
      continue
    start = base + int(rec["offset"])
    blob = payload[start:start + int(rec["size"])]
    if len(blob) != int(rec["size"]):
      raise ValueError(f"array '{rec['key']}' runs past the end of the payload")
    arrays[rec["key"]] = _decode(rec, blob)
  return index, arrays


def _branch(arrays: dict, branch: str, height: int, width: int, packed_masks: bool) -> dict:
  a = {k: arrays[f"{branch}/{k}"] for k in ("classes", "scores", "boxes")}
  packed = {k: arrays[f"{branch}/packed/{k}"] for k in ("extent", "bits", "offsets")}
  n = a["classes"].shape[0]
  ext = packed["extent"].astype(np.int64)
  if (a["scores"].shape != (n,) or a["boxes"].shape != (n, 4) or ext.shape != (n, 4)
      or packed["offsets"].shape != (n + 1,)):
    raise ValueError(f"{branch} arrays disagree on the number of detections")
  nbytes = ((ext[:, 1] - ext[:, 0]) * (ext[:, 3] - ext[:, 2]) + 7) // 8
  if (np.diff(packed["offsets"]) != nbytes).any() or packed["offsets"][-1] != packed["bits"].size:
    raise ValueError(f"{branch} mask offsets do not match the mask extents")
  out = {"classes": a["classes"].astype(np.int32), "scores": a["scores"].astype(np.float32),
         "boxes": a["boxes"].astype(np.float32)}
  if packed_masks:
    out["packed"] = packed
  else:
    out["masks"] = maskcodec.unpack(packed, height, width)
  return out


def load_prediction(store_dir: str, name: str, packed_masks: bool = False) -> dict:
  """One entry as numpy arrays.

  Returns ``{"name", "semantic" uint8 [H,W], "confidence" float32 [H,W]
  (= thresholds.dequantize(code)), "confidence_code" uint16 [H,W], "modal",
  "amodal", "extra", "source_path" (str or None), "source_size" ((height,
  width) or None)}``; each branch is ``{"classes" int32 [N], "scores"
  float32 [N], "boxes" float32 [N,4], "masks" bool [N,H,W]}``. With
  ``packed_masks`` a branch carries ``"packed"`` (``maskcodec``'s extent,
  bits, offsets) instead of ``"masks"``: 100 full-size masks are 82 MB.
  Raises FileNotFoundError for a missing entry, StoreError for a bad one.
  """
  path = entry_path(store_dir, name)
  if not fileio.isfile(path):
    raise FileNotFoundError(f"no prediction entry {path}: run the `predict` stage "
                            "to write the prediction store")
  payload = _verified_payload(path)
  try:
    index, arrays = _parse(payload, lambda k: k not in _HIST_KEYS)
    h, w = int(index["height"]), int(index["width"])
    if index["name"] != name:
      raise ValueError(f"it holds the entry of '{index['name']}', not '{name}'")
    semantic, code = arrays["semantic"], arrays["confidence_code"]
    if semantic.shape != (h, w) or code.shape != (h, w):
      raise ValueError(f"map shapes {semantic.shape}, {code.shape} differ from {h}x{w}")
    out = {"name": name, "semantic": semantic, "confidence": thresholds.dequantize(code),
           "confidence_code": code}
    for b in _BRANCHES:
      out[b] = _branch(arrays, b, h, w, packed_masks)
    out["extra"] = {k[len("extra/"):]: v for k, v in arrays.items() if k.startswith("extra/")}
    size = index.get("source_size")
    _check_source(index.get("source_path"), size)
    out["source_path"] = index.get("source_path")
    out["source_size"] = None if size is None else (int(size[0]), int(size[1]))
  except (ValueError, KeyError, TypeError, IndexError, struct.error, zlib.error) as e:
    detail = f"missing array {e}" if isinstance(e, KeyError) else str(e)
    raise StoreError(f"{path}: cannot decode ({detail}); {_REDO}") from e
  return out


def load_summary(store_dir: str, name: str, histogram: bool = True) -> dict:
  """What the threshold passes need of one entry, without decoding its maps.

  Returns ``{"name", "height", "width", "conf_hist" int64 [2,K] (the
  entry's ``thresholds.sparse_histogram``; only with ``histogram``),
  "modal", "amodal"}``, each branch ``{"classes" int32 [N], "scores" float32
  [N]}``. The whole file is read and its CRC-32 checked (~0.4 ms for 0.8 MB)
  but only these members are inflated: 0.4 ms per 400x2048 panorama without
  the histogram; with it ~10 ms (all ~900 chunks; ~2.5 ms for an entry with
  the one-level ``conf_hist``), against ~25 ms for ``load_prediction``. An
  entry written before any histogram was stored gets it computed from its
  maps (logged once per store). The OPLL threshold pass uses ``load_blocks``
  and ``load_fine`` instead. Raises like ``load_prediction``.
  """
  path = entry_path(store_dir, name)
  if not fileio.isfile(path):
    raise FileNotFoundError(f"no prediction entry {path}: run the `predict` stage "
                            "to write the prediction store")
  payload = _verified_payload(path)
  want = set(_SUMMARY_BRANCH_KEYS) | (set(_HIST_KEYS) if histogram else set())
  try:
    index, arrays = _parse(payload, want.__contains__)
    h, w = int(index["height"]), int(index["width"])
    if index["name"] != name:
      raise ValueError(f"it holds the entry of '{index['name']}', not '{name}'")
    out = {"name": name, "height": h, "width": w}
    for b in _BRANCHES:
      classes, scores = arrays[f"{b}/classes"], arrays[f"{b}/scores"]
      if classes.ndim != 1 or scores.shape != classes.shape:
        raise ValueError(f"{b} arrays disagree on the number of detections")
      out[b] = {"classes": classes.astype(np.int32), "scores": scores.astype(np.float32)}
    if histogram:
      hist = arrays.get(HIST_KEY)
      if BLOCKS_KEY in arrays:  # the two-level form: all its chunks (~10 ms)
        hist = decode_blocks(arrays[BLOCKS_KEY], arrays[FINE_KEY].tobytes())
      if hist is None:  # an entry from before the histogram was stored
        if store_dir not in _no_hist_logged:
          _no_hist_logged.add(store_dir)
          _log.warning(
              "prediction store %s has entries without the confidence histogram (written "
              "by an older version): computing it from the maps, ~25 ms per panorama "
              "instead of ~0.5 ms. For faster OPLL thresholds delete %s and rerun the "
              "`predict` stage", store_dir, os.path.join(store_dir, ENTRIES))
        _, maps = _parse(payload, {"semantic", "confidence_code"}.__contains__)
        if maps["semantic"].shape != (h, w) or maps["confidence_code"].shape != (h, w):
          raise ValueError(f"map shapes differ from {h}x{w}")
        hist = thresholds.sparse_histogram(maps["semantic"], maps["confidence_code"])
      elif int(hist[1].sum()) != h * w:
        raise ValueError(f"the confidence histogram counts {int(hist[1].sum())} pixels, "
                         f"not {h}x{w}")
      out[HIST_KEY] = hist
  except (ValueError, KeyError, TypeError, IndexError, struct.error, zlib.error) as e:
    detail = f"missing array {e}" if isinstance(e, KeyError) else str(e)
    raise StoreError(f"{path}: cannot decode ({detail}); {_REDO}") from e
  return out


def _fast_read(store_dir: str, name: str, keys: tuple) -> tuple | None:
  """(height, width, {key: record}, buffer, base) of a two-level entry; None for an
  older entry (no block table). The buffer holds the file from its start to the end
  of the ``keys`` members (stored first: ~10 kB, or ~160 kB with the chunks).

  Checks the header (magic, version, length against the file size) but not the
  payload CRC-32 (0.3 ms): the members read carry their own (``_check_crc``).
  """
  path = entry_path(store_dir, name)
  if not fileio.isfile(path):
    raise FileNotFoundError(f"no prediction entry {path}: run the `predict` stage "
                            "to write the prediction store")
  with fileio.open_file(path, "rb") as f:
    buf = f.read(_PREFIX)
    f.seek(0, os.SEEK_END)  # the file's size, without a second stat on a URL
    size = f.tell()
    f.seek(len(buf))
    if len(buf) < _HEADER.size + 4:
      raise StoreError(f"{path}: truncated ({len(buf)} bytes); {_REDO}")
    length, _ = _header(path, buf)
    if size - _HEADER.size != length:
      raise StoreError(f"{path}: bad length, payload is {size - _HEADER.size} bytes but the "
                       f"header says {length} (truncated or appended to); {_REDO}")
    try:
      (n,) = struct.unpack_from("<I", buf, _HEADER.size)
      base = _HEADER.size + 4 + n
      if base > size:
        raise ValueError("the index runs past the end of the file")
      if base > len(buf):
        buf += f.read(base - len(buf))
      index = json.loads(bytes(buf[_HEADER.size + 4:base]).decode("utf-8"))
      if index["name"] != name:
        raise ValueError(f"it holds the entry of '{index['name']}', not '{name}'")
      recs = {r["key"]: r for r in index["arrays"]}
      if BLOCKS_KEY not in recs:
        return None
      end = base + max(int(recs[k]["offset"]) + int(recs[k]["size"]) for k in keys)
      if end > size:
        raise ValueError("an array runs past the end of the payload")
      if end > len(buf):
        buf += f.read(end - len(buf))
      return int(index["height"]), int(index["width"]), recs, buf, base
    except (ValueError, KeyError, TypeError, struct.error) as e:
      detail = f"missing array {e}" if isinstance(e, KeyError) else str(e)
      raise StoreError(f"{path}: cannot decode ({detail}); {_REDO}") from e


def _member(rec: dict, buf: bytes, base: int, check_crc: bool = True):
  start = base + int(rec["offset"])
  blob = memoryview(buf)[start:start + int(rec["size"])]
  if check_crc and zlib.crc32(blob) != rec["crc"]:
    raise ValueError(f"checksum mismatch in array '{rec['key']}'")
  return blob


def _block_table(recs: dict, buf: bytes, base: int, h: int, w: int) -> np.ndarray:
  """The CRC-checked block table; its shape and pixel total checked (its chunk
  offsets are checked where a chunk is read)."""
  table = _decode(recs[BLOCKS_KEY], _member(recs[BLOCKS_KEY], buf, base))
  if (table.dtype != np.uint32 or table.ndim != 3 or table.shape[0] != 4
      or table.shape[2] != thresholds.NUM_BLOCKS):
    raise ValueError(f"block table is {table.dtype} {list(table.shape)}, expected uint32 "
                     f"[4, C, {thresholds.NUM_BLOCKS}]")
  if int(table[0].sum(dtype=np.int64)) != h * w:
    raise ValueError(f"the block counts count {int(table[0].sum(dtype=np.int64))} pixels, "
                     f"not {h}x{w}")
  return table


def _redo(store_dir: str, name: str, e: Exception) -> StoreError:
  detail = f"missing array {e}" if isinstance(e, KeyError) else str(e)
  return StoreError(f"{entry_path(store_dir, name)}: cannot decode ({detail}); {_REDO}")


def load_blocks(store_dir: str, name: str) -> dict:
  """Pass 1 of the two-level threshold pass: block counts and detection scores.

  Returns ``{"name", "height", "width", "blocks" int64 [C, 64] (pixels per
  class and 1024-code block, ``thresholds.sparse_blocks``), "modal",
  "amodal"}`` (branches as ``load_summary``). Reads the file's first ~20 kB
  and inflates the ~3 kB block table: ~0.2 ms per 400x2048 panorama. An
  older entry (no block table) goes through ``load_summary`` (its stored
  histogram or maps). Raises like ``load_prediction``.
  """
  got = _fast_read(store_dir, name, _SUMMARY_BRANCH_KEYS + (BLOCKS_KEY,))
  if got is None:
    if store_dir not in _one_level_logged:
      _one_level_logged.add(store_dir)
      _log.warning("prediction store %s has entries without the two-level confidence "
                   "histogram (written by an older version): each OPLL threshold pass "
                   "reads them whole (~3 ms per panorama with a one-level histogram, ~25 "
                   "ms without, instead of ~0.2-0.3 ms). For faster thresholds delete %s "
                   "and rerun the `predict` stage", store_dir,
                   os.path.join(store_dir, ENTRIES))
    s = load_summary(store_dir, name)
    h = s.pop(HIST_KEY)
    return dict(s, blocks=thresholds.sparse_blocks(h[0], h[1]))
  h, w, recs, buf, base = got
  try:
    out = {"name": name, "height": h, "width": w,
           "blocks": _block_table(recs, buf, base, h, w)[0].astype(np.int64)}
    for b in _BRANCHES:
      classes, scores = (_decode(recs[k], _member(recs[k], buf, base))
                         for k in (f"{b}/classes", f"{b}/scores"))
      if classes.ndim != 1 or scores.shape != classes.shape:
        raise ValueError(f"{b} arrays disagree on the number of detections")
      out[b] = {"classes": classes.astype(np.int32), "scores": scores.astype(np.float32)}
  except (ValueError, KeyError, TypeError, IndexError, struct.error, zlib.error) as e:
    raise _redo(store_dir, name, e) from e
  return out


def load_fine(store_dir: str, name: str, blocks) -> np.ndarray:
  """Pass 2 of the two-level threshold pass: one code block per class.

  ``blocks`` int [C] (-1: none) → int64 [C, 1024], row ``c`` the pixel
  counts of class ``c``'s codes ``blocks[c] * 1024 + 0..1023``
  (``thresholds.sparse_fine``). Inflates only those <= C chunks (each
  CRC-checked): ~0.3 ms per 400x2048 panorama. Older entries go through
  ``load_summary``. Raises like ``load_prediction``.
  """
  blocks = np.asarray(blocks, np.int64)
  if blocks.ndim != 1 or (blocks.size and (blocks.min() < -1
                                           or blocks.max() >= thresholds.NUM_BLOCKS)):
    raise ValueError(f"blocks must be [C] in -1..{thresholds.NUM_BLOCKS - 1}, got {blocks}")
  got = _fast_read(store_dir, name, (BLOCKS_KEY, FINE_KEY))
  if got is None:
    h = load_summary(store_dir, name)[HIST_KEY]
    return thresholds.sparse_fine(h[0], h[1], blocks)
  h, w, recs, buf, base = got
  out = np.zeros((blocks.size, thresholds.BLOCK), np.int64)
  try:
    table = _block_table(recs, buf, base, h, w)
    chunks = _member(recs[FINE_KEY], buf, base, check_crc=False)  # per-chunk CRCs instead
    ends = table[1].reshape(-1)
    for cls in np.flatnonzero(blocks[:table.shape[1]] >= 0).tolist():
      b = int(blocks[cls])
      fmt = int(table[2, cls, b])
      if fmt:
        flat = cls * thresholds.NUM_BLOCKS + b
        out[cls] = _inflate_chunk(chunks, int(ends[flat - 1]) if flat else 0, int(ends[flat]),
                                  fmt, int(table[3, cls, b]))
  except (ValueError, KeyError, TypeError, IndexError, struct.error, zlib.error) as e:
    raise _redo(store_dir, name, e) from e
  return out


# ---------------------------------------------------------------------- meta


def write_meta(store_dir: str, meta: dict) -> None:
  """Writes ``meta.json`` (atomically), adding this code's ``format_version``."""
  fileio.atomic_write_json(os.path.join(store_dir, META_FILE),
                           dict(meta, format_version=FORMAT_VERSION))


def read_meta(store_dir: str) -> dict:
  path = os.path.join(store_dir, META_FILE)
  if not fileio.isfile(path):
    raise FileNotFoundError(f"no store meta file {path}: run the `predict` stage "
                            "to write the prediction store")
  try:
    meta = json.loads(fileio.read_text(path))
  except ValueError as e:
    raise StoreError(f"{path}: cannot parse store meta ({e}); delete it and rerun "
                     "the `predict` stage") from e
  if not isinstance(meta, dict):
    raise StoreError(f"{path}: store meta is a {type(meta).__name__}, expected an object")
  return meta


def _canonical(x):
  """JSON view of a value, so tuples, lists and numpy scalars compare alike."""
  return json.loads(json.dumps(x, default=lambda v: v.tolist() if hasattr(v, "tolist") else str(v)))


def check_meta(store_dir: str, expected: dict) -> dict:
  """The store's meta; StoreError listing every key that differs from ``expected``.

  ``expected`` is what the current config would write (image size,
  checkpoint, ...): a store from another model or size must not be mixed in.
  """
  meta = read_meta(store_dir)
  want = dict(expected, format_version=FORMAT_VERSION)
  diffs = []
  for k in sorted(want):
    have = _canonical(meta[k]) if k in meta else "<missing>"
    if have != _canonical(want[k]):
      diffs.append(f"{k}: store has {have!r}, current config has {_canonical(want[k])!r}")
  if diffs:
    raise StoreError(
        f"prediction store {store_dir} was written for another configuration ("
        + "; ".join(diffs) + f"). Point the config at a store written for it, or delete "
        f"{store_dir} and rerun the `predict` stage")
  return meta
