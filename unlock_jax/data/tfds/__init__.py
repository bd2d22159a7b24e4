"""TFDS (ArrayRecord) copies of the on-disk data sets, read like the file readers.

``builders``: one TFDS builder per layout (KITTI-360 APS, BlendPASS,
AmodalSynthDrive; a synthpass set is a ``manual_dir`` in the first two); ``build``: the offline
command that writes them; ``source.Reader``: a prepared split with the file
readers' interface and examples, read through ``tfds.data_source``. Selected by
``config.data.<domain>.format = "tfds"`` (``pipeline.open_reader``).
"""
