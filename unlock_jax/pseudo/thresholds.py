"""OPLL's class-wise threshold rule (docs/method.md §5.1), exact and streaming.

For class ``c`` with confidences ``x_0 <= ... <= x_{n-1}`` over the whole
target set, keep fraction ``p`` and cap ``t``::

    i     = round_half_to_even(n * (1 - p))     # (1 - p) in float64, as numpy
    i     = min(i, n - 1)                       # the reference raises IndexError
    tau_c = min(t, x_i);  tau_c = 0 for an empty class

A prediction of class ``c`` is kept iff ``conf >= tau_c``. The reference
gathers every value with repeated ``np.append``; here semantic confidences are
counted in a histogram over their stored uint16 codes (``store.QUANT``
levels), which is exact because every stored value is a bin, and instance
scores are kept as per-class lists (at most 100 detections per panorama).
The OPLL stage gets the same semantic result in two passes that read far
less (``BlockCounts``, ``FineCounts``, ``SemanticQuantiles``: per-class
counts of 1024-code blocks, then the codes of the one block per class that
holds the quantile).
Accumulators merge, so shards held by different processes give the same
thresholds as one. Comparisons are in float64 of the stored float32 values
(``tau_code`` gives the same test on the integer codes).
"""
from __future__ import annotations

import numpy as np

from unlock_jax.data import labels

QUANT = 65535  # stored confidence = code / QUANT, code uint16


def quantize(confidence: np.ndarray) -> np.ndarray:
  """float probabilities → uint16 codes ``rint(p * 65535)`` (half-even, float64).

  The rounding error is at most 1/131070 (7.6e-6); thresholds are computed
  on, and applied to, the stored values, so the OPLL rule is exact on them.
  """
  c = np.rint(np.asarray(confidence, np.float64) * QUANT)
  return np.clip(c, 0, QUANT).astype(np.uint16)


def dequantize(codes: np.ndarray) -> np.ndarray:
  """uint16 codes → the stored float32 confidences ``code / 65535``."""
  return np.asarray(codes).astype(np.float32) / np.float32(QUANT)


# (p, t) per output, from the reference scripts (docs/method.md §5.1).
DEFAULTS = {"semantic": (0.8, 0.5), "modal": (0.3, 0.5), "amodal": (0.5, 0.3),
            "adcl": (0.1, 0.95)}


def quantile_index(n: int, p: float) -> int:
  """``round_half_even(n * (1 - p))`` clamped to ``n - 1`` (``n >= 1``)."""
  i = int(np.round(n * (1.0 - float(p))))  # float64, numpy's banker's rounding
  return min(max(i, 0), n - 1)


def rule(values: np.ndarray, p: float, t: float) -> dict:
  """Threshold of one class from all its values (any order).

  Returns ``{"tau", "count", "quantile"}``; an empty class gives
  ``tau = 0`` and ``quantile = None``.
  """
  v = np.sort(np.asarray(values, np.float64).ravel())
  n = int(v.size)
  if n == 0:
    return {"tau": 0.0, "count": 0, "quantile": None}
  q = float(v[quantile_index(n, p)])
  return {"tau": min(float(t), q), "count": n, "quantile": q}


def _code_values() -> np.ndarray:
  """float64 of every stored float32 confidence, indexed by code (increasing)."""
  return dequantize(np.arange(QUANT + 1)).astype(np.float64)


def code_threshold(tau: float) -> int:
  """Smallest code whose stored value is ``>= tau`` (``QUANT + 1`` if none).

  ``codes >= code_threshold(tau)`` equals ``dequantize(codes) >= tau`` with the
  float32 stored value compared in float64; a plain ``float32 >= tau`` would
  round ``tau`` (numpy 2 casts a Python float to the array's dtype).
  """
  return int(np.searchsorted(_code_values(), float(tau), side="left"))


def sparse_histogram(semantic: np.ndarray, codes: np.ndarray) -> np.ndarray:
  """The nonzero bins of one image's per-class code histogram, ``int64 [2, K]``.

  Row 0: the sorted unique keys ``class * 65536 + code``; row 1: their pixel
  counts (>= 1). ``SemanticHistogram.add_sparse(*h)`` counts exactly what
  ``add(semantic, codes)`` counts. ``predict`` stores it with every entry
  (``store``), so the OPLL threshold pass reads ~200k pairs per 400x2048
  panorama instead of decoding the maps. ~10-20 ms per panorama (a bincount
  over the key range; ``np.unique`` when that range is much larger than the
  image, e.g. for ignore labels 255).
  """
  semantic, codes = np.asarray(semantic), np.asarray(codes)
  if semantic.shape != codes.shape:
    raise ValueError(f"semantic {semantic.shape} and codes {codes.shape} differ")
  if codes.dtype != np.uint16 or semantic.dtype.kind not in "iu":
    raise ValueError(f"need integer semantic and uint16 codes, got {semantic.dtype}, "
                     f"{codes.dtype}")
  s = semantic.ravel().astype(np.int64)
  if s.size and (s.min() < 0 or s.max() > 32767):
    raise ValueError(f"semantic classes must be in 0..32767, got {s.min()}..{s.max()}")
  keys = s * (QUANT + 1) + codes.ravel()
  if not keys.size:
    return np.zeros((2, 0), np.int64)
  if keys.max() < max(8 * keys.size, 1 << 21):
    b = np.bincount(keys)
    nz = np.flatnonzero(b)
    return np.stack([nz, b[nz]]).astype(np.int64)
  u, c = np.unique(keys, return_counts=True)
  return np.stack([u, c]).astype(np.int64)


class SemanticHistogram:
  """Per-class counts of the uint16 confidence codes, ``int64 [18, 65536]``.

  Every stored value is one bin, so the thresholds equal those of the sorted
  list of all pixels; 9.4 MB whatever the data set size.
  """

  def __init__(self, num_classes: int = 18):
    self.counts = np.zeros((num_classes, QUANT + 1), np.int64)

  @property
  def num_classes(self) -> int:
    return self.counts.shape[0]

  def add(self, semantic: np.ndarray, codes: np.ndarray,
          valid: np.ndarray | None = None) -> None:
    """Counts the pixels of one image (``valid`` False pixels are skipped)."""
    semantic, codes = np.asarray(semantic), np.asarray(codes)
    if semantic.shape != codes.shape:
      raise ValueError(f"semantic {semantic.shape} and codes {codes.shape} differ")
    if codes.dtype != np.uint16:
      raise ValueError(f"codes must be uint16, got {codes.dtype}")
    s = semantic.ravel().astype(np.int64)
    c = codes.ravel().astype(np.int64)
    if valid is not None:
      v = np.asarray(valid, bool).ravel()
      if v.size != s.size:
        raise ValueError(f"valid has {v.size} pixels, expected {s.size}")
      s, c = s[v], c[v]
    if s.size and (s.min() < 0 or s.max() >= self.num_classes):
      raise ValueError(f"semantic classes must be in 0..{self.num_classes - 1}, "
                       f"got {s.min()}..{s.max()}")
    b = np.bincount(s * (QUANT + 1) + c)  # only up to the largest index: cheap
    flat = self.counts.reshape(-1)
    flat[:b.size] += b

  def add_sparse(self, keys: np.ndarray, counts: np.ndarray) -> None:
    """Adds ``counts`` at the flat bins ``keys = class * 65536 + code``.

    With ``(keys, counts) = sparse_histogram(semantic, codes)`` this is
    exactly ``add(semantic, codes)``; repeated keys add up. ~0.5 ms for the
    ~200k pairs of a 400x2048 panorama (``np.add.at``, int64 fast path).
    """
    keys, counts = np.asarray(keys), np.asarray(counts)
    if keys.ndim != 1 or keys.shape != counts.shape:
      raise ValueError(f"keys {keys.shape} and counts {counts.shape} must be equal [K]")
    if not keys.size:
      return
    if keys.dtype.kind not in "iu" or counts.dtype.kind not in "iu":
      raise ValueError(f"keys and counts must be integers, got {keys.dtype}, {counts.dtype}")
    flat = self.counts.reshape(-1)
    if keys.min() < 0 or keys.max() >= flat.size:
      raise ValueError(f"semantic classes must be in 0..{self.num_classes - 1}, got "
                       f"{keys.min() // (QUANT + 1)}..{keys.max() // (QUANT + 1)}")
    if counts.min() < 0:
      raise ValueError("counts must be non-negative")
    np.add.at(flat, keys.astype(np.int64, copy=False), counts.astype(np.int64, copy=False))

  def merge(self, other: "SemanticHistogram") -> None:
    if other.counts.shape != self.counts.shape:
      raise ValueError(f"cannot merge histograms {other.counts.shape} into {self.counts.shape}")
    self.counts += other.counts

  def thresholds(self, p: float, t: float) -> dict[int, dict]:
    """:func:`rule` per class, plus ``tau_code`` (:func:`code_threshold` of tau)."""
    out = {}
    for cls in range(self.num_classes):
      cum = np.cumsum(self.counts[cls])
      n = int(cum[-1])
      if n == 0:
        out[cls] = {"tau": 0.0, "count": 0, "quantile": None, "tau_code": 0}
        continue
      i = quantile_index(n, p)
      code = int(np.searchsorted(cum, i, side="right"))  # i-th smallest (0-based)
      q = float(dequantize(np.uint16(code)))
      tau = min(float(t), q)
      out[cls] = {"tau": tau, "count": n, "quantile": q, "tau_code": code_threshold(tau)}
    return out

  def state(self) -> dict[str, np.ndarray]:
    return {"counts": self.counts.copy()}

  @classmethod
  def from_state(cls, state: dict) -> "SemanticHistogram":
    counts = np.asarray(state["counts"])
    if counts.ndim != 2 or counts.shape[1] != QUANT + 1:
      raise ValueError(f"histogram state has shape {counts.shape}, expected [C, {QUANT + 1}]")
    h = cls(counts.shape[0])
    h.counts[...] = counts
    return h


# ------------------------------------------------- two-level exact quantiles
#
# Pass 1 counts pixels per (class, block of BLOCK codes); that locates, per
# class, the block holding the quantile and its rank inside the block. Pass 2
# counts only the codes of those blocks (one per class), which gives the exact
# code: the same result as ``SemanticHistogram.thresholds`` (every code is a
# bin in both). The store keeps both levels per entry (``store.load_blocks``,
# ``store.load_fine``), so pass 2 reads at most one 1024-code slice per class.

BLOCK = 1024
NUM_BLOCKS = (QUANT + 1) // BLOCK  # 64


def _check_keys(keys: np.ndarray, counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  keys, counts = np.asarray(keys), np.asarray(counts)
  if keys.ndim != 1 or keys.shape != counts.shape:
    raise ValueError(f"keys {keys.shape} and counts {counts.shape} must be equal [K]")
  if keys.size and (keys.dtype.kind not in "iu" or counts.dtype.kind not in "iu"):
    raise ValueError(f"keys and counts must be integers, got {keys.dtype}, {counts.dtype}")
  keys, counts = keys.astype(np.int64, copy=False), counts.astype(np.int64, copy=False)
  if keys.size and (keys.min() < 0 or counts.min() < 0):
    raise ValueError("keys and counts must be non-negative")
  return keys, counts


def sparse_blocks(keys: np.ndarray, counts: np.ndarray,
                  num_classes: int | None = None) -> np.ndarray:
  """Pixel counts per (class, code block), ``int64 [C, NUM_BLOCKS]``, of a sparse histogram.

  ``(keys, counts)`` as :func:`sparse_histogram` returns them; ``C`` is
  ``num_classes`` or the largest class + 1.
  """
  keys, counts = _check_keys(keys, counts)
  c = num_classes if num_classes is not None else (
      int(keys.max()) // (QUANT + 1) + 1 if keys.size else 0)
  chunk = keys // BLOCK  # class * NUM_BLOCKS + block
  if chunk.size and chunk.max() >= c * NUM_BLOCKS:
    raise ValueError(f"classes must be in 0..{c - 1}, got {int(keys.max()) // (QUANT + 1)}")
  return np.bincount(chunk, counts, minlength=c * NUM_BLOCKS).astype(np.int64).reshape(
      c, NUM_BLOCKS)


def sparse_fine(keys: np.ndarray, counts: np.ndarray, blocks) -> np.ndarray:
  """Counts of the codes of one block per class, ``int64 [len(blocks), BLOCK]``.

  Row ``c`` counts class ``c``'s codes ``blocks[c] * BLOCK + 0..BLOCK-1``
  (zeros where ``blocks[c] < 0``); what ``store.load_fine`` returns.
  """
  keys, counts = _check_keys(keys, counts)
  blocks = np.asarray(blocks, np.int64)
  out = np.zeros((blocks.size, BLOCK), np.int64)
  if not keys.size:
    return out
  cls, code = keys // (QUANT + 1), keys % (QUANT + 1)
  inside = cls < blocks.size
  cls, code, cnt = cls[inside], code[inside], counts[inside]
  sel = code // BLOCK == blocks[cls]  # blocks[cls] = -1 matches nothing
  np.add.at(out, (cls[sel], code[sel] % BLOCK), cnt[sel])
  return out


def _fit_rows(a: np.ndarray, rows: int, width: int, what: str) -> np.ndarray:
  """``a`` [c, width] as [rows, width]: zero-padded, or its extra rows must be empty."""
  a = np.asarray(a)
  if a.ndim != 2 or a.shape[1] != width or (a.size and a.dtype.kind not in "iu"):
    raise ValueError(f"{what} must be an integer [C, {width}] array, got {a.dtype} {a.shape}")
  a = a.astype(np.int64, copy=False)
  if a.size and a.min() < 0:
    raise ValueError(f"{what} must be non-negative")
  if a.shape[0] > rows:
    bad = np.flatnonzero(a[rows:].any(1))
    if bad.size:
      raise ValueError(f"semantic classes must be in 0..{rows - 1}, got {rows + int(bad[-1])}")
    a = a[:rows]
  if a.shape[0] < rows:
    a = np.concatenate([a, np.zeros((rows - a.shape[0], width), np.int64)])
  return a


class BlockCounts:
  """Pass 1: pixel counts per (class, 1024-code block), ``int64 [C, 64]``; merges."""

  def __init__(self, num_classes: int = 18):
    self.counts = np.zeros((num_classes, NUM_BLOCKS), np.int64)

  @property
  def num_classes(self) -> int:
    return self.counts.shape[0]

  def add(self, blocks: np.ndarray) -> None:
    """Adds one entry's block counts (``[c, 64]``; rows past ``num_classes`` must be 0)."""
    self.counts += _fit_rows(blocks, self.num_classes, NUM_BLOCKS, "block counts")

  def merge(self, other: "BlockCounts") -> None:
    if other.counts.shape != self.counts.shape:
      raise ValueError(f"cannot merge block counts {other.counts.shape} into "
                       f"{self.counts.shape}")
    self.counts += other.counts

  def totals(self) -> np.ndarray:
    return self.counts.sum(1)

  def locate(self, p: float) -> tuple[np.ndarray, np.ndarray]:
    """Per class, the block holding the :func:`quantile_index` value and that
    value's 0-based rank inside the block: ``(blocks, ranks)``, -1 for empty classes."""
    blocks = np.full(self.num_classes, -1, np.int64)
    ranks = np.full(self.num_classes, -1, np.int64)
    for cls in range(self.num_classes):
      cum = np.cumsum(self.counts[cls])
      n = int(cum[-1])
      if n:
        i = quantile_index(n, p)
        b = int(np.searchsorted(cum, i, side="right"))
        blocks[cls], ranks[cls] = b, i - (int(cum[b - 1]) if b else 0)
    return blocks, ranks


class FineCounts:
  """Pass 2: per class, the counts of the codes of its block ``blocks[c]``; merges."""

  def __init__(self, blocks):
    self.blocks = np.asarray(blocks, np.int64).copy()
    if self.blocks.ndim != 1 or (self.blocks.size and (
        self.blocks.min() < -1 or self.blocks.max() >= NUM_BLOCKS)):
      raise ValueError(f"blocks must be [C] in -1..{NUM_BLOCKS - 1}, got {self.blocks}")
    self.counts = np.zeros((self.blocks.size, BLOCK), np.int64)

  def add(self, fine: np.ndarray) -> None:
    """Adds one entry's ``[C, 1024]`` counts of the blocks ``self.blocks``."""
    self.counts += _fit_rows(fine, self.blocks.size, BLOCK, "fine counts")

  def merge(self, other: "FineCounts") -> None:
    if not np.array_equal(other.blocks, self.blocks):
      raise ValueError("cannot merge fine counts of different blocks")
    self.counts += other.counts


class SemanticQuantiles:
  """The two-level result: ``.thresholds(p, t)`` as ``SemanticHistogram.thresholds``.

  Exact for the ``p`` the blocks were chosen for (any cap ``t``); another
  ``p`` raises.
  """

  def __init__(self, coarse: BlockCounts, fine: FineCounts, p: float):
    self.p = float(p)
    blocks, ranks = coarse.locate(self.p)
    if not np.array_equal(blocks, fine.blocks):
      raise ValueError(f"the fine counts are of blocks {fine.blocks.tolist()}, the block "
                       f"counts put the p = {p} quantiles in {blocks.tolist()}")
    self.count = coarse.totals()
    self.code = np.full(coarse.num_classes, -1, np.int64)
    for cls in np.flatnonzero(blocks >= 0):
      b = int(blocks[cls])
      cum = np.cumsum(fine.counts[cls])
      if int(cum[-1]) != int(coarse.counts[cls, b]):
        raise ValueError(f"class {cls}: its codes {b * BLOCK}..{(b + 1) * BLOCK - 1} count "
                         f"{int(cum[-1])} pixels in pass 2 but {int(coarse.counts[cls, b])} "
                         "in pass 1 (did the store change between the passes?)")
      self.code[cls] = b * BLOCK + int(np.searchsorted(cum, ranks[cls], side="right"))

  def thresholds(self, p: float, t: float) -> dict[int, dict]:
    if float(p) != self.p:
      raise ValueError(f"these quantiles are for p = {self.p}, not {p}")
    out = {}
    for cls in range(self.code.size):
      if self.code[cls] < 0:
        out[cls] = {"tau": 0.0, "count": 0, "quantile": None, "tau_code": 0}
        continue
      q = float(dequantize(np.uint16(self.code[cls])))
      tau = min(float(t), q)
      out[cls] = {"tau": tau, "count": int(self.count[cls]), "quantile": q,
                  "tau_code": code_threshold(tau)}
    return out


class ScoreLists:
  """All detection scores per thing class (11..17), kept exactly (float64).

  At most ~100 detections per panorama, so plain lists are small.
  """

  CLASSES = tuple(range(11, 18))

  def __init__(self):
    self._scores = {c: [] for c in self.CLASSES}

  def add(self, classes: np.ndarray, scores: np.ndarray) -> None:
    classes = np.asarray(classes).ravel()
    scores = np.asarray(scores, np.float64).ravel()
    if classes.shape != scores.shape:
      raise ValueError(f"{classes.size} classes but {scores.size} scores")
    bad = ~np.isin(classes, self.CLASSES)
    if bad.any():
      raise ValueError(f"detection classes must be in 11..17, got {classes[bad][:5]}")
    for c in self.CLASSES:
      sel = scores[classes == c]
      if sel.size:
        self._scores[c].append(sel)

  def merge(self, other: "ScoreLists") -> None:
    for c in self.CLASSES:
      self._scores[c].extend(other._scores[c])

  def values(self, cls: int) -> np.ndarray:
    v = self._scores[cls]
    return np.concatenate(v) if v else np.zeros((0,), np.float64)

  def thresholds(self, p: float, t: float) -> dict[int, dict]:
    return {c: rule(self.values(c), p, t) for c in self.CLASSES}

  def state(self) -> dict[str, np.ndarray]:
    vals = [self.values(c) for c in self.CLASSES]
    return {"classes": np.concatenate([np.full(v.size, c, np.int32)
                                       for c, v in zip(self.CLASSES, vals)]),
            "scores": np.concatenate(vals)}

  @classmethod
  def from_state(cls, state: dict) -> "ScoreLists":
    s = cls()
    s.add(state["classes"], state["scores"])
    return s


def to_json(th: dict[int, dict]) -> dict:
  """``{str(class): {..., "name": class name}}`` for ``thresholds.json``."""
  return {str(c): {**v, "name": labels.CLASS_NAMES[c]} for c, v in sorted(th.items())}


def from_json(obj: dict) -> dict[int, dict]:
  """Inverse of :func:`to_json` (drops ``name``)."""
  return {int(k): {f: x for f, x in v.items() if f != "name"} for k, v in obj.items()}
