"""The ADCL pool's on-disk arrays, their checks, and the memory-mapped index
the online paste reads (docs/formats.md; the pool itself: ``pseudo/pool.py``).

Every grain worker opens the index. The index is an uncompressed ``.npz``
whose members :meth:`PoolIndex.load` maps read-only (``np.memmap``) instead of
reading: the workers of a host share the file's pages through the OS cache,
and a worker touches only the crops it pastes. At 2,000 entries the index is
about 70 MB, which each worker would otherwise hold as its own copy. An
index with deflated members (written by an earlier version) is read into
memory instead. Per-panorama shards stay compressed and are read whole.
"""
from __future__ import annotations

import atexit
import os
import shutil
import struct
import tempfile
import zipfile
import zlib

import numpy as np

from unlock_jax import fileio
from unlock_jax.data import labels

# Per-entry arrays common to shards and the index (``[P]``-leading, or ragged
# data + ``[P+1]`` offsets).
ENTRY_KEYS = ("classes", "det_index", "scores", "k", "extents",
              "mask_data", "mask_offsets", "rgb_data", "rgb_offsets")
INDEX_KEYS = ("names", "image_size") + ENTRY_KEYS


def corrupt(path: str, why: str) -> ValueError:
  return ValueError(f"ADCL pool file {path} is corrupt or truncated ({why}); "
                    "delete it and rerun the adcl_pool stage")


def read_arrays(path: str, keys: tuple[str, ...]) -> dict:
  """``keys`` of the ``.npz`` at ``path``, read into memory; a damaged file or
  a missing key → ValueError naming the file."""
  try:
    z = fileio.load_npz(path)
    missing = [k for k in keys if k not in z]
    arrays = {k: z[k] for k in keys if k in z}
  except FileNotFoundError:
    raise
  except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error) as e:
    raise corrupt(path, f"{type(e).__name__}: {e}") from e
  if missing:
    raise corrupt(path, f"missing {missing}")
  return arrays


def check(arrays: dict, path: str) -> None:
  """Shapes, dtypes and offsets agree; every box lies inside the panorama (columns
  modulo its width: ``seam_instances``' wrapped convention).

  Reads the per-entry fields and offsets only, never the crops' bytes.
  """
  def need(ok, why):
    if not ok:
      raise corrupt(path, why)
  size = arrays["image_size"]
  need(size.shape == (2,) and (size >= 0).all(), f"image_size {size}")
  h, w = (int(v) for v in size)
  cls, ext = arrays["classes"], arrays["extents"]
  p = cls.shape[0] if cls.ndim == 1 else -1
  need(p >= 0 and ext.shape == (p, 4), f"classes {cls.shape} / extents {ext.shape}")
  for key in ("det_index", "scores", "k"):
    need(arrays[key].shape == (p,), f"{key} shape {arrays[key].shape}, expected ({p},)")
  need(bool(labels.is_thing(cls).all()), "class outside 11..17")
  y0, y1, x0, x1 = (ext[:, i].astype(np.int64) for i in range(4))
  # Columns may wrap: an object across a 360° panorama's seam has x1 > w.
  need(bool(((0 <= y0) & (y0 < y1) & (y1 <= h) & (0 <= x0) & (x0 < w) & (x0 < x1)
             & (x1 <= x0 + w)).all()),
       f"an extent lies outside {h}x{w} or is empty")
  area = (y1 - y0) * (x1 - x0)
  for key, per_px in (("mask", 1), ("rgb", 3)):
    data, off = arrays[f"{key}_data"], arrays[f"{key}_offsets"]
    need(data.dtype == np.uint8 and data.ndim == 1, f"{key}_data {data.dtype} {data.shape}")
    need(off.shape == (p + 1,) and off[0] == 0 and off[-1] == data.size
         and (np.diff(off) == per_px * area).all(), f"{key}_offsets disagree with extents")


_LOCAL_HEADER = struct.Struct("<4s5H3L2H")  # a zip member's local file header (30 bytes)
_HEADER_READERS = {(1, 0): np.lib.format.read_array_header_1_0,
                   (2, 0): np.lib.format.read_array_header_2_0}


def map_npz(path: str) -> dict:
  """Every member of a local ``.npz``: stored members as read-only
  ``np.memmap`` views of the file, deflated ones read into memory."""
  out = {}
  try:
    file_size = os.path.getsize(path)
    with open(path, "rb") as f, zipfile.ZipFile(f) as zf:
      for info in zf.infolist():
        key = info.filename[:-4] if info.filename.endswith(".npy") else info.filename
        if info.compress_type != zipfile.ZIP_STORED:
          with zf.open(info) as member:
            out[key] = np.lib.format.read_array(member, allow_pickle=False)
          continue
        f.seek(info.header_offset)
        head = _LOCAL_HEADER.unpack(f.read(_LOCAL_HEADER.size))
        if head[0] != b"PK\x03\x04":
          raise ValueError(f"member {info.filename}: no local header")
        start = info.header_offset + _LOCAL_HEADER.size + head[-2] + head[-1]
        f.seek(start)
        version = np.lib.format.read_magic(f)
        if version not in _HEADER_READERS:
          raise ValueError(f"member {info.filename}: .npy format {version}")
        shape, fortran, dtype = _HEADER_READERS[version](f)
        if dtype.hasobject:
          raise ValueError(f"member {info.filename} holds Python objects")
        offset = f.tell()
        nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        if offset + nbytes > min(start + info.file_size, file_size):
          raise ValueError(f"member {info.filename}: {nbytes} bytes of data do not fit")
        order = "F" if fortran else "C"
        out[key] = (np.memmap(path, dtype, "r", offset, shape, order) if nbytes
                    else np.zeros(shape, dtype, order=order))
  except FileNotFoundError:
    raise
  except (OSError, ValueError, EOFError, struct.error, zipfile.BadZipFile, zlib.error) as e:
    raise corrupt(path, f"{type(e).__name__}: {e}") from e
  return out


_LOCAL_COPIES: dict[str, str] = {}


def local_copy(path: str) -> str:
  """``path`` itself for a local file; for a URL (``gs://``) a copy in a
  temporary folder, made once per process and removed at its exit, so that
  the workers forked or spawned from this process map one local file."""
  if not fileio.is_url(path):
    return path
  if path not in _LOCAL_COPIES:
    folder = tempfile.mkdtemp(prefix="unlock_jax_pool_")
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    local = os.path.join(folder, os.path.basename(path))
    fileio.atomic_write_bytes(local, fileio.read_bytes(path))
    _LOCAL_COPIES[path] = local
  return _LOCAL_COPIES[path]


class PoolIndex:
  """The whole pool: per-entry class, source, box and crops.

  ``classes`` [P] and ``extents`` [P,4] ``(y0, y1, x0, x1)`` (half-open,
  panorama coordinates; ``x1`` past the width for an object across the 360°
  seam, whose crops hold columns ``x0..x1-1`` modulo the width) let the
  paste find the entries that intersect a crop window without touching pixels. Arrays are read-only; crops are views
  (of the mapped file, for an index from :meth:`load`).
  """

  def __init__(self, arrays: dict, path: str = "<memory>"):
    check(arrays, path)
    if arrays["names"].shape != arrays["classes"].shape:
      raise corrupt(path, f"names {arrays['names'].shape} vs classes {arrays['classes'].shape}")
    # Memory maps stay maps (np.asarray would keep the data but drop the type).
    self._a = {k: v if isinstance(v, np.ndarray) else np.asarray(v) for k, v in arrays.items()}
    for v in self._a.values():
      v.setflags(write=False)
    self.path = path
    self.classes = self._a["classes"]
    self.extents = self._a["extents"]
    self.names = self._a["names"]
    self.image_size = tuple(int(v) for v in self._a["image_size"])

  @classmethod
  def load(cls, path: str) -> "PoolIndex":
    """Maps a local index (a URL is read into memory: see :func:`local_copy`)."""
    if not fileio.isfile(path):
      raise FileNotFoundError(f"missing ADCL pool index {path}; run the adcl_pool stage")
    if fileio.is_url(path):
      return cls(read_arrays(path, INDEX_KEYS), path)
    arrays = map_npz(path)
    missing = [k for k in INDEX_KEYS if k not in arrays]
    if missing:
      raise corrupt(path, f"missing {missing}")
    return cls({k: arrays[k] for k in INDEX_KEYS}, path)

  def __len__(self) -> int:
    return int(self.classes.shape[0])

  @property
  def nbytes(self) -> int:
    """Size of all arrays (for a mapped index: of the mapping, not resident memory)."""
    return int(sum(v.nbytes for v in self._a.values()))

  def extent(self, j: int) -> tuple[int, int, int, int]:
    return tuple(int(v) for v in self.extents[j])

  def class_id(self, j: int) -> int:
    return int(self.classes[j])

  def name(self, j: int) -> str:
    return str(self.names[j])

  def score(self, j: int) -> float:
    return float(self._a["scores"][j])

  def mask(self, j: int) -> np.ndarray:
    """uint8 [h,w] in {0,1,255}: the entry's mask inside its extent."""
    y0, y1, x0, x1 = self.extent(j)
    off = self._a["mask_offsets"]
    return self._a["mask_data"][off[j]:off[j + 1]].reshape(y1 - y0, x1 - x0)

  def rgb(self, j: int) -> np.ndarray:
    """uint8 [h,w,3]: the source panorama's pixels inside the extent."""
    y0, y1, x0, x1 = self.extent(j)
    off = self._a["rgb_offsets"]
    return self._a["rgb_data"][off[j]:off[j + 1]].reshape(y1 - y0, x1 - x0, 3)

  def full_mask(self, j: int, height: int | None = None, width: int | None = None) -> np.ndarray:
    """Entry ``j`` as a full-size uint8 mask (tests, viewer); default panorama size."""
    out = np.zeros((height or self.image_size[0], width or self.image_size[1]), np.uint8)
    y0, y1, x0, x1 = self.extent(j)
    out[y0:y1, np.arange(x0, x1) % out.shape[1]] = self.mask(j)
    return out

  def full_rgb(self, j: int, height: int | None = None, width: int | None = None) -> np.ndarray:
    """The entry's RGB crop placed in a black full-size image (tests, viewer)."""
    out = np.zeros((height or self.image_size[0], width or self.image_size[1], 3), np.uint8)
    y0, y1, x0, x1 = self.extent(j)
    out[y0:y1, np.arange(x0, x1) % out.shape[1]] = self.rgb(j)
    return out
