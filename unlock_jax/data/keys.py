"""Batch keys, one constant each, with shape and dtype.

B = batch, H×W = image (crop) size, N = the configured maximum number of
instances per image (padding rows have ``*_valid == False``).
"""
IMAGE = "image"                  # [B,H,W,3] float32, ImageNet-normalised RGB
SEMANTIC = "semantic"            # [B,H,W] int32, 0..17, 255 = ignore
MODAL_MASKS = "modal_masks"      # [B,N,H,W] uint8, 0 bg / 1 object / 255 ignore
MODAL_CLASSES = "modal_classes"  # [B,N] int32, instance class 0..6 (= id - 11)
MODAL_BOXES = "modal_boxes"      # [B,N,4] float32, x1,y1,x2,y2 in pixels
MODAL_VALID = "modal_valid"      # [B,N] bool
AMODAL_MASKS = "amodal_masks"    # [B,N,H,W] uint8, as MODAL_MASKS
AMODAL_CLASSES = "amodal_classes"  # [B,N] int32
AMODAL_BOXES = "amodal_boxes"    # [B,N,4] float32
AMODAL_VALID = "amodal_valid"    # [B,N] bool
MASK = "_mask"                   # [B] bool, False for padding examples (eval)
INDEX = "_index"                 # [B] int32, example index in its split

BRANCHES = ("modal", "amodal")  # instance branches; their keys are f"{branch}_{field}"
INSTANCE_KEYS = (MODAL_MASKS, MODAL_CLASSES, MODAL_BOXES, MODAL_VALID,
                 AMODAL_MASKS, AMODAL_CLASSES, AMODAL_BOXES, AMODAL_VALID)
UNLABELED_IMAGE = "unlabeled_image"  # [B,H,W,3] float32, the adaptation pair's second crop
