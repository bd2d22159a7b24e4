"""Hand-drawn fixtures in the amodal panoptic release format (ASD, KITTI-360-APS).

``rect``/``rle`` draw masks and encode them as ASD/KITTI-360-APS releases
store them (COCO RLE, compressed string counts). Both releases follow the
amodal panoptic format of robot-learning-freiburg/amodal-panoptic (README
"Dataset Format", eval.py): ``<split>/amodal_panoptic_seg/<folder>/
<f>_ampano.png`` (uint16: class id, or id*1000 + instance) and
``<f>_ampano.json`` ({str(instance id): {occluded, amodal_mask (RLE), ...}}),
mirrored by ``<split>/images/<folder>/`` (APSNet docs/DATASET.md);
``write_frame`` writes one frame of either. ``asd_scene`` and
``write_asd_example`` build an AmodalSynthDrive example in its published
format (also APSNet data_struct.py; PAPS amodalsynthdrive.py): the folder is
``<camera>/<seq>``, the image ``<f>_rgb.jpg``.
"""
import json
import os

import numpy as np
import pycocotools.mask as mask_utils
from PIL import Image

ASD_H, ASD_W = 20, 32
# ASD ids by name (amodal_panoptic_eval/labels/asd_labels.py).
ASD_ID = dict(unlabeled=0, road=7, sidewalk=8, parking=9, building=11, wall=12, fence=13,
              polegroup=17, pole=18, vegetation=21, terrain=22, sky=23, person=24,
              rider=25, car=26, truck=27, bus=28, caravan=29, trailer=30, train=31,
              motor=32, bike=33)


def rect(shape, r0, r1, c0, c1):
  """bool mask of ``shape`` with rows r0..r1 and columns c0..c1 (inclusive) set."""
  m = np.zeros(shape, bool)
  m[r0:r1 + 1, c0:c1 + 1] = True
  return m


def rle(mask):
  """COCO RLE with string counts, as the releases' JSON holds it."""
  r = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
  return {"size": list(r["size"]), "counts": r["counts"].decode("ascii")}


def asd_scene():
  """ASD id raster [ASD_H, ASD_W], its JSON, and the masks it was drawn from."""
  box = lambda *a: rect((ASD_H, ASD_W), *a)  # noqa: E731
  ids = np.full((ASD_H, ASD_W), ASD_ID["sky"], np.uint16)
  ids[6:14, :16] = ASD_ID["building"]
  ids[6:14, 16:] = ASD_ID["vegetation"]
  ids[14:, :] = ASD_ID["road"]
  ids[14:, 28:] = 34  # road line: road by ASD's trainId table
  ids[14:, :4] = ASD_ID["parking"]  # ignored
  ids[2:5, 20:26] = ASD_ID["caravan"] * 1000 + 1  # ignored class with instances
  ids[16:18, 20:24] = ASD_ID["rider"]  # rider without instance id: a crowd region
  masks = dict(person=box(8, 15, 4, 7), car=box(10, 17, 6, 13), truck_vis=box(6, 7, 20, 27),
               truck_amodal=box(4, 7, 20, 27), bike=box(15, 19, 24, 25),
               motor=box(14, 18, 17, 17))
  ids[masks["person"]] = 24001
  ids[masks["car"]] = 26001  # occludes the person
  ids[masks["truck_vis"]] = 27001
  ids[masks["bike"]] = 33001
  ids[masks["motor"]] = 32001  # 1 px wide: no instance, still semantic
  info = {
      "24001": {"occluded": True, "amodal_mask": rle(masks["person"]),
                "occlusion_mask": rle(masks["person"] & masks["car"])},
      # Not occluded: the visible mask is its amodal mask, whatever amodal_mask holds.
      "26001": {"occluded": False, "amodal_mask": rle(box(0, 19, 0, 31)),
                "occlusion_mask": []},
      "27001": {"amodal_mask": rle(masks["truck_amodal"])},  # no "occluded" field
      "32001": {"occluded": False},
      "33001": {"occluded": False},
  }
  return ids, info, masks


def write_frame(root, split, folder, frame, ids, info, rgb, image_name):
  """One frame of a release under ``root``: its image ``<split>/images/<folder>/
  <image_name>`` (a JPEG at quality 95 or a PNG, by the name) and its label PNG and
  JSON in ``<split>/amodal_panoptic_seg/<folder>/``. Returns the image's path."""
  img_dir = os.path.join(root, split, "images", folder)
  gt_dir = os.path.join(root, split, "amodal_panoptic_seg", folder)
  os.makedirs(img_dir, exist_ok=True)
  os.makedirs(gt_dir, exist_ok=True)
  path = os.path.join(img_dir, image_name)
  Image.fromarray(rgb).save(path, quality=95)  # (PNG ignores the quality)
  Image.fromarray(ids.astype(np.uint16)).save(os.path.join(gt_dir, frame + "_ampano.png"))
  with open(os.path.join(gt_dir, frame + "_ampano.json"), "w") as f:
    json.dump(info, f)
  return path


def write_asd_example(root, camera, seq, frame, ids, info, rgb, split="train"):
  """Writes one ASD frame's image (JPEG), label PNG and JSON under ``root``."""
  return write_frame(root, split, os.path.join(camera, seq), frame, ids, info, rgb,
                     frame + "_rgb.jpg")


def make_asd_root(root: str) -> str:
  """Two train frames: the drawn scene (front/seq_b/000007) and all road (back/seq_a/000001)."""
  ids, info, _ = asd_scene()
  rgb = np.random.default_rng(0).integers(0, 256, (ASD_H, ASD_W, 3), dtype=np.uint8)
  write_asd_example(root, "front", "seq_b", "000007", ids, info, rgb)
  flat = np.full((ASD_H, ASD_W), ASD_ID["road"], np.uint16)
  write_asd_example(root, "back", "seq_a", "000001", flat, {}, rgb)
  return root
