"""A prepared TFDS split read as a file reader: same interface, same examples.

``Reader(layout, data_dir, split, image_size)`` has what the pipelines use of
``layouts.<layout>.Reader`` (``len``, ``names``, ``keys``, ``image_size``,
``categories``, ``load(i)``, ``load_image(i)``) and returns the same dicts,
value for value and dtype for dtype (tests/test_tfds.py). Records come from
``tfds.data_source`` (ArrayRecord, random access), so the grain pipelines
shard, shuffle and checkpoint it exactly as a file reader: by index.

Differences from the file readers: an ``image_size`` other than the stored
one fails when opening (the stored images all have one size, checked when
built; AmodalSynthDrive is stored at the build's ``--image_size``), and
returned arrays are copies (the records' buffers are read-only).
"""
import numpy as np
import tensorflow_datasets as tfds

from unlock_jax.data.layouts import common
from unlock_jax.data.tfds import builders
from unlock_jax.data.tfds import records


class Reader:
  """One split of a TFDS build of ``layout`` under ``data_dir``.

  Args:
    layout: "kitti360aps", "blendpass" or "amodalsynthdrive".
    data_dir: the ``--data_dir`` of ``python -m unlock_jax.data.tfds.build``.
    split: "train" or "val" (AmodalSynthDrive: also "test").
    image_size: expected (height, width); ``None`` takes the stored size.
    hidden_gt: BlendPASS ``train`` of a synthpass set: also return the hidden
      ground truth (as ``blendpass.Reader(..., hidden_gt=True)``).
  """

  def __init__(self, layout: str, data_dir: str, split: str, image_size=None,
               hidden_gt: bool = False):
    cls = builders.builder_class(layout)
    b = cls(data_dir=data_dir)
    if not b.is_prepared():
      raise common.DataError(
          f"no TFDS build of {layout} {builders.DATA_VERSION} in {data_dir}; build it with "
          f"`python -m unlock_jax.data.tfds.build --layout {layout} --manual_dir <root> "
          f"--data_dir {data_dir}`")
    splits = b.info.metadata.get("splits", {})
    if split not in splits:
      raise common.DataError(f"the {layout} build in {data_dir} has splits {sorted(splits)}, "
                             f"not {split!r}")
    meta = splits[split]
    if hidden_gt and not meta["hidden_gt"]:
      raise common.DataError(f"{split!r} of the {layout} build in {data_dir} has no hidden "
                             "ground truth (only synthpass BlendPASS train has)")
    self.layout, self.data_dir, self.split, self.hidden_gt = layout, data_dir, split, hidden_gt
    self._name = cls.name
    # Hidden ground truth is skipped unless asked for, as the file reader does.
    self._with_gt = meta["labelled"] and (hidden_gt or not meta["hidden_gt"])
    self.categories = meta["categories"] if self._with_gt else None
    self.names = list(meta["names"])
    self.keys = list(meta["keys"])
    stored = None if meta["image_size"] is None else tuple(meta["image_size"])
    if image_size is not None and stored is not None and tuple(image_size) != stored:
      rebuild = (f" (rebuild with --image_size {image_size[0]},{image_size[1]})"
                 if meta.get("resized") else "")
      raise common.DataError(f"{split!r} of the {layout} build in {data_dir} holds "
                             f"{stored[1]}x{stored[0]} images, expected "
                             f"{image_size[1]}x{image_size[0]}{rebuild}")
    self.image_size = stored if image_size is None else tuple(image_size)
    self._resize = bool(meta.get("resized", False))
    self._sources = {}

  def __getstate__(self):
    # grain workers reopen the ArrayRecord files themselves.
    return {k: v for k, v in self.__dict__.items() if k != "_sources"} | {"_sources": {}}

  def _source(self, with_gt: bool):
    """The split's data source; without ground truth its zlib arrays stay undecoded."""
    if with_gt not in self._sources:
      decoders = None if with_gt else {k: tfds.decode.SkipDecoding() for k in records.GT_KEYS}
      src = tfds.data_source(self._name, split=self.split, data_dir=self.data_dir,
                             download=False, decoders=decoders)
      if len(src) != len(self.names):
        raise common.DataError(f"{self.split!r} of the {self.layout} build in {self.data_dir} "
                               f"has {len(src)} records, its metadata {len(self.names)} names")
      self._sources[with_gt] = src
    return self._sources[with_gt]

  def __len__(self) -> int:
    return len(self.names)

  def _what(self, i: int) -> str:
    return f"record {i} ({self.names[i]}) of {self.split!r} in {self.data_dir}"

  def load_image(self, i: int) -> np.ndarray:
    """uint8 [H,W,3] RGB image of example ``i``."""
    return records.decode_rgb(self._source(False)[i]["image"], self._what(i), self.image_size,
                              self._resize)

  def load(self, i: int) -> dict:
    """Example ``i``: the file reader's ``load(i)`` dict."""
    return records.decode(self._source(self._with_gt)[i], size=self.image_size,
                          categories=self.categories, with_gt=self._with_gt,
                          what=self._what(i), resize=self._resize)
