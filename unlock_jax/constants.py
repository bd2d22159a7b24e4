"""The reference's numbers that configs and code share, as plain data (no JAX).

Configs import this module (and ``models/defaults.py``) instead of the
modules that use the numbers, so parsing a config loads neither JAX nor the
model code.
"""

# Score thresholds for fusing detections into (amodal) panoptic maps, (tau_m, tau_a).
TAU_ADAPTED = (0.55, 0.5)       # UNLOCK configs (Training_Mix / Testing_targetonly)
TAU_SOURCE_ONLY = (0.95, 0.95)  # Testing_sourceonly.py and the pseudo-label generator

# Panoptic fusion and instance AP at the reference's 2048x400 panoramas (in
# pixels; configs scale them with the image area).
STUFF_AREA = 2048  # blendpass stuff_area (reference custom.py L798)
MIN_REGION_SIZE = 100  # smaller ground-truth instances are ignored by instance AP

# Optimiser groups, (key, name, lr_mult, decay_mult), matched by mmcv's rule
# (train/optim.py).
# The source recipe (experiments.py with ``pmult=True``, MiT backbone):
# custom_keys ``neck`` and ``head`` lr x10 (the FPN, the decode head and the
# RPN/RoI heads of both branches), ``norm`` decay 0. ``pos_block`` is left
# out: no parameter of this backbone has it.
SOURCE_GROUPS = (("head", "head", 10.0, 1.0),
                 ("neck", "neck", 10.0, 1.0),
                 ("norm", "norm", 1.0, 0.0))
# The adaptation recipe (docs/method.md §7.6; Training_Mix_targetonly_unmaskformer.py):
# with base lr 1e-7, decode head x1e4 (1e-3), FPN x10, R-CNN heads x0.1,
# backbone norms decay 0; ``pos_block`` (decay 0) matches nothing here.
ADAPT_GROUPS = (("decode_head", "decode_head", 1e4, 1.0),
                ("neck", "neck", 10.0, 1.0),
                ("head", "head", 0.1, 1.0),
                ("norm", "norm", 1.0, 0.0))
