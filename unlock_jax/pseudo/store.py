"""The compact prediction store: one file per panorama, written by ``predict``.

Layout of a store folder::

    <store_dir>/meta.json              format version, image size, quantisation, checkpoint
    <store_dir>/entries/<name>.pred    one entry per panorama; name = "<city>/<stem>" or
                                       a relative path (a folder of one's own panoramas)

An entry keeps what OPLL and ADCL need of the reference's 18xHxW softmax
map (docs/method.md §4): the argmax (uint8), the max probability as uint16
codes (``thresholds.quantize``), both branches' detections with masks as
packed box crops (``maskcodec``), and the per-class histogram of the codes in
two levels (block counts, then one 1024-code chunk per class), which the
OPLL threshold passes read instead of the maps (``load_blocks``,
``load_fine``; docs/method.md §5.1). The arrays' codecs are in ``storecodec``.

An entry is ``header | payload``: the 24-byte header holds a magic, the
format version, the payload length and its CRC-32; the payload a JSON index
(name, size, one record per array: key, dtype, shape, codec, offset, size,
CRC-32) and the array blobs, the detection classes and scores and the
histogram first, so the threshold passes read only the file's start. There
is one format version; entries and stores of any other are refused, naming
the fix. Integrity is checked where it is cheap: ``is_complete`` (the
``predict`` resume check) reads only the header and index (magic, version,
the length against the file's size, the index against the payload); each
reader checks the CRC-32 of what it decodes, so a corrupt byte is reported
with the file and array where it is read. docs/formats.md §3 gives the bytes,
sizes and times.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import struct
from typing import NamedTuple
import zlib

import numpy as np

from unlock_jax import fileio
from unlock_jax.data import keys
from unlock_jax.data import labels
from unlock_jax.data import maskcodec
from unlock_jax.data import seam_instances
from unlock_jax.pseudo import storecodec
from unlock_jax.pseudo import thresholds

_log = logging.getLogger(__name__)

FORMAT_VERSION = 1
MAGIC = b"UNLKPRED"
SUFFIX = ".pred"
META_FILE = "meta.json"
ENTRIES = "entries"
BLOCKS_KEY = "conf_blocks"  # uint32 [4, C, 64]: block counts, chunk ends, formats, CRC-32s
FINE_KEY = "conf_fine"  # uint8 [bytes]: the chunks (codec "chunks")
_HEADER = struct.Struct("<8sIQI")  # magic, version, payload length, crc32(payload)
_BRANCHES = keys.BRANCHES
_SCORE_KEYS = tuple(f"{b}/{k}" for b in _BRANCHES for k in ("classes", "scores"))
_FIRST = _SCORE_KEYS + (BLOCKS_KEY, FINE_KEY)  # stored first, in this order
_PREFIX = 1 << 16  # first read of the partial readers: their members lie in it
_INDEX_READ = 1 << 13  # first read of the resume check: the header and index
_REDO = "delete it and rerun the `predict` stage (it writes the missing entries)"
_REWRITE = "rerun the `predict` stage with --config.predict.overwrite=True to write the store again"


class StoreError(ValueError):
  """A store entry or meta file is truncated, corrupt, of another version or config."""


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
    if a.dtype.kind not in "biuf" or a.dtype.fields is not None:
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
  table, chunks = storecodec.encode_blocks(thresholds.sparse_histogram(semantic, code))
  parts = [storecodec.encode_array("semantic", semantic, "zlib"),
           storecodec.encode_array("confidence_code", code, "d2zz"),
           storecodec.plain(BLOCKS_KEY, table),
           storecodec.encode_array(FINE_KEY, np.frombuffer(chunks, np.uint8), "chunks")]
  for branch, dets in (("modal", modal), ("amodal", amodal)):
    d = _check_branch(branch, dets, h, w)
    for k in ("classes", "scores", "boxes"):
      parts.append(storecodec.plain(f"{branch}/{k}", d[k]))
    for k, a in d["packed"].items():
      parts.append(storecodec.plain(f"{branch}/packed/{k}", a))
  for k, a in _check_extra(extra).items():
    parts.append(storecodec.plain(f"extra/{k}", a))

  offset, arrays = 0, []
  first = {k: i for i, k in enumerate(_FIRST)}
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
  resizing, when known (returned by the loader, None otherwise). The
  two-level confidence histogram is computed and stored here.
  """
  data = encode_entry(name, semantic, confidence_code, modal, amodal, extra, source_path,
                      source_size)
  fileio.atomic_write_bytes(entry_path(store_dir, name), data)
  return len(data)


# ------------------------------------------------------------------- reading


class _Entry(NamedTuple):
  path: str
  crc: int  # the header's CRC-32 of the payload
  index: dict
  recs: dict  # key -> index record
  buf: bytes  # the file from its start to the end of what was read
  base: int  # where the blobs start in ``buf``


@contextlib.contextmanager
def _decoding(path: str):
  """Turns what a damaged entry makes the decoders raise into a StoreError naming it."""
  try:
    yield
  except StoreError:
    raise
  except (ValueError, KeyError, TypeError, IndexError, struct.error, zlib.error) as e:
    detail = f"missing array {e}" if isinstance(e, KeyError) else str(e)
    raise StoreError(f"{path}: cannot decode ({detail}); {_REDO}") from e


def _read(store_dir: str, name: str, keys=None, first: int = _PREFIX) -> _Entry:
  """An entry's header and index, and the blobs of ``keys`` (all for None).

  Checks the header (magic, version, payload length against the file's
  size), that the index is this name's and that its records tile the
  payload; not the CRC-32s (the readers check those of what they decode).
  A partial read takes the file's first ``first`` bytes, then what is missing.
  """
  path = entry_path(store_dir, name)
  if not fileio.isfile(path):
    raise FileNotFoundError(f"no prediction entry {path}: run the `predict` stage "
                            "to write the prediction store")
  with fileio.open_file(path, "rb") as f:
    if keys is None:
      buf = f.read()
      size = len(buf)
    else:
      buf = f.read(first)
      f.seek(0, os.SEEK_END)  # the file's size, without a second stat on a URL
      size = f.tell()
      f.seek(len(buf))
    if len(buf) < _HEADER.size + 4:
      raise StoreError(f"{path}: truncated ({size} bytes, shorter than the header); {_REDO}")
    magic, version, length, crc = _HEADER.unpack_from(buf)
    if magic != MAGIC:
      raise StoreError(f"{path}: not a prediction store entry (bad magic {magic!r}); {_REDO}")
    if version != FORMAT_VERSION:
      raise StoreError(f"{path}: written in store format version {version}; this code reads "
                       f"only version {FORMAT_VERSION}: {_REWRITE}")
    if size - _HEADER.size != length:
      raise StoreError(f"{path}: bad length, payload is {size - _HEADER.size} bytes but the "
                       f"header says {length} (truncated or appended to); {_REDO}")
    with _decoding(path):
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
      end = 0
      for off, sz in sorted((int(r["offset"]), int(r["size"])) for r in index["arrays"]):
        if off != end or sz < 0:
          raise ValueError("the index's array records do not tile the payload")
        end += sz
      if base + end != size:
        raise ValueError(f"the index's arrays end at byte {base + end} of the {size}-byte file")
      if keys is not None:
        end = base + max((int(recs[k]["offset"]) + int(recs[k]["size"]) for k in keys),
                         default=0)
        if end > len(buf):
          buf += f.read(end - len(buf))
  return _Entry(path, crc, index, recs, buf, base)


def _blob(entry: _Entry, key: str, check_crc: bool = True) -> memoryview:
  rec = entry.recs[key]
  start = entry.base + int(rec["offset"])
  blob = memoryview(entry.buf)[start:start + int(rec["size"])]
  if len(blob) != int(rec["size"]):
    raise ValueError(f"array '{key}' runs past the end of the file")
  if check_crc and zlib.crc32(blob) != rec["crc"]:
    raise ValueError(f"checksum mismatch in array '{key}': the entry is corrupted")
  return blob


def _array(entry: _Entry, key: str, check_crc: bool = True) -> np.ndarray:
  return storecodec.decode_array(entry.recs[key], _blob(entry, key, check_crc))


def is_complete(store_dir: str, name: str) -> bool:
  """True iff the entry exists and its header and index check out (``predict``'s resume check).

  Reads the header and index only (the first 8 kB): the magic, the format
  version, the payload length against the file's size (a killed or cut copy)
  and the index against the payload. The content's CRC-32s are checked where
  it is read. A present but bad entry is logged and reported incomplete, so
  ``predict`` rewrites it.
  """
  if not fileio.isfile(entry_path(store_dir, name)):
    return False
  try:
    _read(store_dir, name, keys=(), first=_INDEX_READ)
  except (StoreError, OSError) as e:
    _log.warning("prediction entry will be rewritten: %s", e)
    return False
  return True


def _scores(entry: _Entry) -> dict:
  """Both branches' ``{"classes" int32 [N], "scores" float32 [N]}``."""
  out = {}
  for b in _BRANCHES:
    classes, scores = _array(entry, f"{b}/classes"), _array(entry, f"{b}/scores")
    if classes.ndim != 1 or scores.shape != classes.shape:
      raise ValueError(f"{b} arrays disagree on the number of detections")
    out[b] = {"classes": classes.astype(np.int32), "scores": scores.astype(np.float32)}
  return out


def _branch(entry: _Entry, branch: str, height: int, width: int, packed_masks: bool) -> dict:
  a = {k: _array(entry, f"{branch}/{k}", False) for k in ("classes", "scores", "boxes")}
  packed = {k: _array(entry, f"{branch}/packed/{k}", False)
            for k in ("extent", "bits", "offsets")}
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
  Reads the whole file and checks the payload's CRC-32 (on a mismatch, each
  array's, to name the corrupted one). Raises FileNotFoundError for a
  missing entry, StoreError for a bad one.
  """
  entry = _read(store_dir, name)
  with _decoding(entry.path):
    if zlib.crc32(memoryview(entry.buf)[_HEADER.size:]) != entry.crc:
      for k in entry.recs:
        _blob(entry, k)  # raises for the first corrupted array
      raise ValueError("checksum mismatch in the index: the entry is corrupted")
    h, w = int(entry.index["height"]), int(entry.index["width"])
    semantic = _array(entry, "semantic", False)
    code = _array(entry, "confidence_code", False)
    if semantic.shape != (h, w) or code.shape != (h, w):
      raise ValueError(f"map shapes {semantic.shape}, {code.shape} differ from {h}x{w}")
    out = {"name": name, "semantic": semantic, "confidence": thresholds.dequantize(code),
           "confidence_code": code}
    for b in _BRANCHES:
      out[b] = _branch(entry, b, h, w, packed_masks)
    out["extra"] = {k[len("extra/"):]: _array(entry, k, False)
                    for k in entry.recs if k.startswith("extra/")}
    size = entry.index.get("source_size")
    _check_source(entry.index.get("source_path"), size)
    out["source_path"] = entry.index.get("source_path")
    out["source_size"] = None if size is None else (int(size[0]), int(size[1]))
  return out


def load_merged(store_dir: str, name: str, merge_seam: bool) -> dict:
  """:func:`load_prediction`; with ``merge_seam``, each branch as one instance per
  object across the 360° seam (``seam_instances.merge_seam_instances``; an
  entry ``predict`` stored merged comes back unchanged)."""
  pred = load_prediction(store_dir, name)
  if merge_seam:
    pred.update({b: seam_instances.merge_seam_instances(pred[b]) for b in _BRANCHES})
  return pred


def load_summary(store_dir: str, name: str, histogram: bool = True) -> dict:
  """The detection scores of one entry and, with ``histogram``, its confidence histogram.

  Returns ``{"name", "height", "width", "histogram" int64 [2,K] (the entry's
  ``thresholds.sparse_histogram``, all chunks; only with ``histogram``),
  "modal", "amodal"}``, each branch ``{"classes" int32 [N], "scores" float32
  [N]}``. Reads the file's start only and decodes no map or mask; the OPLL
  threshold pass reads the histogram through ``load_blocks`` and
  ``load_fine`` instead. Raises like ``load_prediction``.
  """
  keys = _SCORE_KEYS + ((BLOCKS_KEY, FINE_KEY) if histogram else ())
  entry = _read(store_dir, name, keys)
  with _decoding(entry.path):
    h, w = int(entry.index["height"]), int(entry.index["width"])
    out = {"name": name, "height": h, "width": w, **_scores(entry)}
    if histogram:
      hist = storecodec.decode_blocks(_block_table(entry, h, w),
                                      bytes(_blob(entry, FINE_KEY, False)))  # chunk CRCs
      out["histogram"] = hist
  return out


def _block_table(entry: _Entry, h: int, w: int) -> np.ndarray:
  """The CRC-checked block table; its shape and pixel total checked (its chunk
  offsets are checked where a chunk is read)."""
  table = _array(entry, BLOCKS_KEY)
  if (table.dtype != np.uint32 or table.ndim != 3 or table.shape[0] != 4
      or table.shape[2] != thresholds.NUM_BLOCKS):
    raise ValueError(f"block table is {table.dtype} {list(table.shape)}, expected uint32 "
                     f"[4, C, {thresholds.NUM_BLOCKS}]")
  if int(table[0].sum(dtype=np.int64)) != h * w:
    raise ValueError(f"the block counts count {int(table[0].sum(dtype=np.int64))} pixels, "
                     f"not {h}x{w}")
  return table


def load_blocks(store_dir: str, name: str) -> dict:
  """Pass 1 of the two-level threshold pass: block counts and detection scores.

  Returns ``{"name", "height", "width", "blocks" int64 [C, 64] (pixels per
  class and 1024-code block, ``thresholds.sparse_blocks``), "modal",
  "amodal"}`` (branches as ``load_summary``). Reads the file's first 64 kB
  and inflates the block table. Raises like ``load_prediction``.
  """
  entry = _read(store_dir, name, _SCORE_KEYS + (BLOCKS_KEY,))
  with _decoding(entry.path):
    h, w = int(entry.index["height"]), int(entry.index["width"])
    return {"name": name, "height": h, "width": w,
            "blocks": _block_table(entry, h, w)[0].astype(np.int64), **_scores(entry)}


def load_fine(store_dir: str, name: str, blocks) -> np.ndarray:
  """Pass 2 of the two-level threshold pass: one code block per class.

  ``blocks`` int [C] (-1: none) → int64 [C, 1024], row ``c`` the pixel
  counts of class ``c``'s codes ``blocks[c] * 1024 + 0..1023``
  (``thresholds.sparse_fine``). Inflates only those <= C chunks, each
  CRC-checked. Raises like ``load_prediction``.
  """
  blocks = np.asarray(blocks, np.int64)
  if blocks.ndim != 1 or (blocks.size and (blocks.min() < -1
                                           or blocks.max() >= thresholds.NUM_BLOCKS)):
    raise ValueError(f"blocks must be [C] in -1..{thresholds.NUM_BLOCKS - 1}, got {blocks}")
  entry = _read(store_dir, name, (BLOCKS_KEY, FINE_KEY))
  out = np.zeros((blocks.size, thresholds.BLOCK), np.int64)
  with _decoding(entry.path):
    table = _block_table(entry, int(entry.index["height"]), int(entry.index["width"]))
    chunks = _blob(entry, FINE_KEY, check_crc=False)  # per-chunk CRCs instead
    ends = table[1].reshape(-1)
    for cls in np.flatnonzero(blocks[:table.shape[1]] >= 0).tolist():
      b = int(blocks[cls])
      fmt = int(table[2, cls, b])
      if fmt:
        flat = cls * thresholds.NUM_BLOCKS + b
        out[cls] = storecodec.inflate_chunk(chunks, int(ends[flat - 1]) if flat else 0,
                                            int(ends[flat]), fmt, int(table[3, cls, b]))
  return out


# ---------------------------------------------------------------------- meta


def write_meta(store_dir: str, meta: dict) -> None:
  """Writes ``meta.json`` (atomically), adding this code's ``format_version``."""
  fileio.atomic_write_json(os.path.join(store_dir, META_FILE),
                           dict(meta, format_version=FORMAT_VERSION))


def read_meta(store_dir: str) -> dict:
  """The store's meta; StoreError for an unreadable one or another format version."""
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
  if meta.get("format_version") != FORMAT_VERSION:
    raise StoreError(f"{path}: a prediction store of format version "
                     f"{meta.get('format_version', '<missing>')}; this code reads only "
                     f"version {FORMAT_VERSION}: {_REWRITE}")
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
  diffs = []
  for k in sorted(expected):
    have = _canonical(meta[k]) if k in meta else "<missing>"
    if have != _canonical(expected[k]):
      diffs.append(f"{k}: store has {have!r}, current config has {_canonical(expected[k])!r}")
  if diffs:
    raise StoreError(
        f"prediction store {store_dir} was written for another configuration ("
        + "; ".join(diffs) + f"). Point the config at a store written for it, or delete "
        f"{store_dir} and rerun the `predict` stage")
  return meta
