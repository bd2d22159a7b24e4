"""Where ``AmodalPASS`` keeps the reference's modules, for name mapping.

The reference's two R-CNN branches (``rpn_head``/``roi_head`` modal,
``*_amodal`` amodal) live under our ``modal/`` and ``amodal/`` submodules.
The checkpoint converter and the optimiser's mmcv-style group matching both
translate names through this one table. No heavy imports: the converter
loads it before jax.
"""
REFERENCE_BRANCHES = {
    "rpn_head": "modal/rpn_head",
    "roi_head": "modal/roi_head",
    "rpn_head_amodal": "amodal/rpn_head",
    "roi_head_amodal": "amodal/roi_head",
}
