"""The codecs of the prediction store's arrays (``store`` holds the container).

An array is stored with one of four codecs, named in its index record:

* ``raw``: its bytes; ``zlib``: its bytes deflated (``plain`` picks raw
  below 256 bytes);
* ``d2zz`` (the confidence codes, uint16 [H,W]): second differences along
  both axes (mod 2^16), zigzag, the high and low bytes as two planes, deflate.
  The codes are quantised bilinearly upsampled stride-4 softmax maps, so second
  differences are small and saturated regions give zeros;
* ``chunks`` (uint8 [bytes]): the per-(class, block) chunks of the confidence
  histogram, each raw-deflated alone (``encode_blocks``), so one chunk
  inflates without the rest; their table (``conf_blocks``) is a plain array.

docs/formats.md §3 describes the bytes and gives the measured sizes and times.
"""
from __future__ import annotations

import zlib

import numpy as np

from unlock_jax.pseudo import thresholds

CODECS = ("raw", "zlib", "d2zz", "chunks")
LEVEL = 6  # deflate level; 9 is much slower for next to nothing (docs/formats.md §3)
_CHUNK_LEVEL = 6  # against level 1: smaller chunks, a slower write, the same inflate
_CHUNK_DTYPES = {2: "<u1", 3: "<u2", 4: "<u4"}  # chunk format 1: two 4-bit counts per byte
_NUMERIC_KINDS = "biuf"


# ------------------------------------------------------- confidence codes (d2zz)


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
  return zlib.compress(planes.tobytes(), LEVEL)


def decode_confidence(blob: bytes, height: int, width: int) -> np.ndarray:
  """Inverse of :func:`encode_confidence` (exact)."""
  n = height * width
  planes = np.frombuffer(zlib.decompress(blob), np.uint8)
  if planes.size != 2 * n:
    raise ValueError(f"confidence planes hold {planes.size} bytes, expected {2 * n}")
  z = (planes[:n].astype(np.uint16) << 8) | planes[n:]
  r = _unzigzag(z).reshape(height, width)
  for _ in range(2):
    for i in range(1, height):  # row by row: much faster than a strided cumsum(axis=0)
      np.add(r[i], r[i - 1], out=r[i])
  for _ in range(2):
    r = np.cumsum(r, axis=1, dtype=np.uint16)
  return r


# ---------------------------------------------- the two-level histogram (chunks)


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


def check_table(table: np.ndarray, nbytes: int) -> None:
  """ValueError unless ``table`` is a block table whose chunks tile ``nbytes`` bytes."""
  if table.ndim != 3 or table.shape[0] != 4 or table.shape[2] != thresholds.NUM_BLOCKS:
    raise ValueError(f"block table has shape {list(table.shape)}, expected "
                     f"[4, C, {thresholds.NUM_BLOCKS}]")
  counts, ends, fmt = (table[i].reshape(-1).astype(np.int64) for i in range(3))
  sizes = np.diff(ends, prepend=0)
  if (sizes < 0).any() or (ends[-1] if ends.size else 0) != nbytes:
    raise ValueError(f"block table chunk offsets do not cover the {nbytes} chunk bytes")
  if (fmt > 4).any() or ((fmt == 0) != (counts == 0)).any() or ((fmt == 0) != (sizes == 0)).any():
    raise ValueError("block table formats disagree with its counts or chunk sizes")


def inflate_chunk(chunks, start: int, end: int, fmt: int, crc: int) -> np.ndarray:
  """One chunk's 1024 counts after its CRC-32 check (a read-only view; int64 for format 1)."""
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
  return inflate_chunk(chunks, start, int(table[1, cls, block]), fmt,
                       int(table[3, cls, block])).astype(np.int64)


def decode_blocks(table: np.ndarray, chunks) -> np.ndarray:
  """Inverse of :func:`encode_blocks`: the sparse histogram int64 [2, K] (all chunks)."""
  check_table(table, len(chunks))
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


# ------------------------------------------------------------- index records


def encode_array(key: str, arr: np.ndarray, codec: str) -> tuple[dict, bytes]:
  """``(index record without its offset, blob)`` of one array; ``chunks`` takes the
  already encoded bytes as uint8."""
  if codec == "d2zz":
    blob = encode_confidence(arr)
  elif codec == "zlib":
    blob = zlib.compress(np.ascontiguousarray(arr).tobytes(), LEVEL)
  elif codec in ("raw", "chunks"):
    blob = np.ascontiguousarray(arr).tobytes()
  else:
    raise ValueError(f"unknown codec {codec!r}; the store's codecs are {CODECS}")
  rec = {"key": key, "dtype": arr.dtype.str, "shape": list(arr.shape),
         "codec": codec, "size": len(blob), "crc": zlib.crc32(blob)}
  return rec, blob


def plain(key: str, arr: np.ndarray) -> tuple[dict, bytes]:
  """Small arrays raw, larger ones deflated."""
  return encode_array(key, arr, "zlib" if arr.nbytes >= 256 else "raw")


def decode_array(rec: dict, blob) -> np.ndarray:
  """The array of an index record from its (CRC-checked) blob; ValueError if they disagree."""
  dtype, shape = np.dtype(rec["dtype"]), tuple(int(s) for s in rec["shape"])
  if dtype.kind not in _NUMERIC_KINDS or dtype.fields is not None:
    raise ValueError(f"array '{rec['key']}' has unsupported dtype {rec['dtype']}")
  codec = rec["codec"]
  if codec not in CODECS:
    raise ValueError(f"array '{rec['key']}' has unknown codec {codec!r}")
  if codec == "d2zz":
    if dtype != np.uint16 or len(shape) != 2:
      raise ValueError(f"array '{rec['key']}': codec d2zz needs uint16 [H,W]")
    return decode_confidence(blob, *shape)
  if codec == "zlib":
    blob = zlib.decompress(blob)
  count = int(np.prod(shape, dtype=np.int64))
  if len(blob) != count * dtype.itemsize:
    raise ValueError(f"array '{rec['key']}' holds {len(blob)} bytes, "
                     f"expected {count * dtype.itemsize} for {dtype} {list(shape)}")
  return np.frombuffer(blob, dtype).reshape(shape).copy()  # writable for callers
