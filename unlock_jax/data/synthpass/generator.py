"""Writes a synthpass data set in the exact on-disk layouts of KITTI-360 APS and BlendPASS.

Source (pinhole, KITTI-360 APS layout) under ``<out>/KITTI360_APS``:
  Image/<split>/<name>.png, Panoptic/<split>/<name>_panoptic.png,
  Panoptic/<split>.json, annotations/<split>.json, Semantic/<split>/<name>.png
Target (equirectangular, BlendPASS K2B layout) under ``<out>/BlendPASS``:
  leftImg8bit/train/<city>/<name>.jpg (unlabelled), leftImg8bit/val/<k>_.png,
  Panoptic/val_trainId_K2B.json, Panoptic/val_trainId_K2B/<k>__panoptic.png,
  annotations/val.json, Instance/val_K2B/<k>__instanceTrainIds.png (16 bit),
  Semantic/val_K2B/<k>_.png
Hidden ground truth of the target *train* images (never read by adaptation;
for measuring pseudo-label quality) under ``<out>/BlendPASS/_synth_gt``:
  Panoptic/train_trainId_K2B.json, Panoptic/train_trainId_K2B/<name>_panoptic.png,
  annotations/train.json (image file_name "<city>/<name>.jpg"),
  Instance/train_K2B/<name>_instanceTrainIds.png, Semantic/train_K2B/<name>.png

Each scene is seeded from (seed, domain, split, index), its files are written
atomically and then a per-scene record ``<out>/.synthpass/records/...json``;
the JSON indexes are written last. A scene whose record and files exist is
skipped, so re-running on a complete output does nothing. ``out_dir`` may be a
URL (``gs://...``): every file operation goes through etils.epath.
"""
import concurrent.futures
import io
import json
import multiprocessing
import os
import re
from typing import Callable

from etils import epath
import numpy as np
from PIL import Image

from unlock_jax import fileio
from unlock_jax.data import labels
from unlock_jax.data.synthpass import annotate as ann
from unlock_jax.data.synthpass import appearance
from unlock_jax.data.synthpass import render
from unlock_jax.data.synthpass import scene as scn

SOURCE_DIR, TARGET_DIR, HIDDEN_DIR = "KITTI360_APS", "BlendPASS", "_synth_gt"
SOURCE_SIZE, TARGET_SIZE = (376, 1408), (400, 2048)  # (height, width) at scale 1
N_CITIES = 4
JPEG_QUALITY = 92
_DOMAIN_CODE = {"source": 0, "target": 1}
_SPLIT_CODE = {"train": 0, "val": 1}


def image_sizes(scale: float) -> dict:
  """(height, width) of source and target images at a scale."""
  def sz(hw):
    return (max(8, int(round(hw[0] * scale))), max(8, int(round(hw[1] * scale))))
  return {"source": sz(SOURCE_SIZE), "target": sz(TARGET_SIZE)}


def categories() -> list:
  """COCO ``categories`` of the 18-class K2B label space."""
  return [dict(id=i, name=n, isthing=int(labels.is_thing(i)), supercategory="")
          for i, n in enumerate(labels.CLASS_NAMES)]


def _write_png(path: str, array: np.ndarray):
  buf = io.BytesIO()
  Image.fromarray(array).save(buf, format="PNG", compress_level=1)
  fileio.atomic_write_bytes(path, buf.getvalue())


def _write_jpg(path: str, array: np.ndarray):
  buf = io.BytesIO()
  Image.fromarray(array).save(buf, format="JPEG", quality=JPEG_QUALITY)
  fileio.atomic_write_bytes(path, buf.getvalue())


def write_json(path: str, obj):
  """Atomic, deterministic JSON write; an identical existing file is left untouched."""
  data = json.dumps(obj, separators=(",", ":")).encode()
  if _read_bytes(path) == data:
    return
  fileio.atomic_write_bytes(path, data)


def _read_bytes(path: str) -> bytes | None:
  """The file's bytes, or None if there is none."""
  try:
    return epath.Path(path).read_bytes()
  except FileNotFoundError:
    return None


def _read_json(path: str):
  """A JSON file's object, or None if there is no file."""
  data = _read_bytes(path)
  return None if data is None else json.loads(data)


def _paths(domain: str, split: str, index: int) -> dict:
  """File names (relative to the output root) and naming of one scene."""
  if domain == "source":
    name = f"synth{split}_{index:06d}"
    return dict(name=name, image=f"{SOURCE_DIR}/Image/{split}/{name}.png",
                image_key=f"{name}.png", panoptic_name=f"{name}_panoptic.png",
                panoptic=f"{SOURCE_DIR}/Panoptic/{split}/{name}_panoptic.png",
                semantic=f"{SOURCE_DIR}/Semantic/{split}/{name}.png", instance=None)
  if split == "val":
    k = f"{index + 1}_"
    return dict(name=k, image=f"{TARGET_DIR}/leftImg8bit/val/{k}.png", image_key=f"{k}.png",
                panoptic_name=f"{k}_panoptic.png",
                panoptic=f"{TARGET_DIR}/Panoptic/val_trainId_K2B/{k}_panoptic.png",
                semantic=f"{TARGET_DIR}/Semantic/val_K2B/{k}.png",
                instance=f"{TARGET_DIR}/Instance/val_K2B/{k}_instanceTrainIds.png")
  city = f"synthcity{index % N_CITIES}"
  name = f"{city}pano{index:05d}"  # no underscores: ADCL parses names by "_"
  hid = f"{TARGET_DIR}/{HIDDEN_DIR}"
  return dict(name=name, image=f"{TARGET_DIR}/leftImg8bit/train/{city}/{name}.jpg",
              image_key=f"{city}/{name}.jpg", panoptic_name=f"{name}_panoptic.png",
              panoptic=f"{hid}/Panoptic/train_trainId_K2B/{name}_panoptic.png",
              semantic=f"{hid}/Semantic/train_K2B/{name}.png",
              instance=f"{hid}/Instance/train_K2B/{name}_instanceTrainIds.png")


def _record_path(out_dir, domain, split, index):
  return os.path.join(out_dir, ".synthpass", "records", domain, split, f"{index:06d}.json")


def render_scene(seed: int, domain: str, split: str, index: int, scale: float,
                 domain_shift: float) -> dict:
  """Samples and renders one scene; returns the image, the raw rendering and the annotation."""
  rng = np.random.default_rng([seed, _DOMAIN_CODE[domain], _SPLIT_CODE[split], index])
  camera = "pinhole" if domain == "source" else "equirect"
  h, w = image_sizes(scale)[domain]
  scene = scn.sample_scene(rng, camera, domain, domain_shift)
  rendering = render.render(scene, camera, w, h)
  image = appearance.finish(rendering["image"], scene.light, rng)
  gt = ann.annotate(rendering, scene.thing_cls, index + 1, ann.crowd_area(scale))
  return dict(image=image, rendering=rendering, gt=gt, scene=scene)


def _scene_files(p: dict) -> list:
  return [p[k] for k in ("image", "panoptic", "semantic", "instance") if p[k]]


def _make_scene(task: tuple) -> dict:
  """Renders and writes one scene (skipped when already complete); returns its record."""
  out_dir, seed, domain, split, index, scale, shift = task
  p = _paths(domain, split, index)
  rec_path = _record_path(out_dir, domain, split, index)
  rec = _read_json(rec_path)
  if rec is not None and all(epath.Path(out_dir, f).exists() for f in _scene_files(p)):
    rec["skipped"] = True
    return rec
  r = render_scene(seed, domain, split, index, scale, shift)
  gt = r["gt"]
  if domain == "target" and split == "train":
    _write_jpg(os.path.join(out_dir, p["image"]), r["image"])
  else:
    _write_png(os.path.join(out_dir, p["image"]), r["image"])
  _write_png(os.path.join(out_dir, p["panoptic"]), labels.id2rgb(gt["panoptic"]))
  _write_png(os.path.join(out_dir, p["semantic"]), gt["semantic"])
  if p["instance"]:
    _write_png(os.path.join(out_dir, p["instance"]), gt["instance"])
  h, w = r["image"].shape[:2]
  rec = dict(index=index, name=p["name"], image_key=p["image_key"],
             panoptic_name=p["panoptic_name"], height=h, width=w, segments_info=gt["segments"],
             amodal=gt["amodal"], stats=gt["stats"])
  write_json(rec_path, rec)
  rec["skipped"] = False
  return rec


def _write_indexes(out_dir: str, domain: str, split: str, recs: list):
  """Panoptic and amodal JSON indexes of one split (atomic; after all scenes exist)."""
  cats = categories()
  pan_images, pan_anns, am_images, am_anns = [], [], [], []
  for rec in recs:
    img_id = rec["index"] + 1
    pan_images.append(dict(id=rec["name"], file_name=rec["image_key"], width=rec["width"],
                           height=rec["height"]))
    pan_anns.append(dict(image_id=rec["name"], file_name=rec["panoptic_name"],
                         segments_info=rec["segments_info"]))
    am_images.append(dict(id=img_id, file_name=rec["image_key"], width=rec["width"],
                          height=rec["height"]))
    for a in rec["amodal"]:
      am_anns.append(dict(a, image_id=img_id))
  pan = dict(images=pan_images, annotations=pan_anns, categories=cats)
  am = dict(images=am_images, annotations=am_anns, categories=cats)
  if domain == "source":
    base = os.path.join(out_dir, SOURCE_DIR)
    write_json(os.path.join(base, "annotations", f"{split}.json"), am)
    write_json(os.path.join(base, "Panoptic", f"{split}.json"), pan)
  elif split == "val":
    base = os.path.join(out_dir, TARGET_DIR)
    write_json(os.path.join(base, "annotations", "val.json"), am)
    write_json(os.path.join(base, "Panoptic", "val_trainId_K2B.json"), pan)
  else:
    base = os.path.join(out_dir, TARGET_DIR, HIDDEN_DIR)
    write_json(os.path.join(base, "annotations", "train.json"), am)
    write_json(os.path.join(base, "Panoptic", "train_trainId_K2B.json"), pan)


def _drop_stale_target_train(out_dir: str, count: int):
  """Removes target-train scenes with index >= count left by an earlier, larger run.

  That split is listed by globbing its images (as the reference does), so
  leftover files would silently join it. Only files of this generator's own
  naming in a folder holding its config are touched.
  """
  img_dir = epath.Path(out_dir, TARGET_DIR, "leftImg8bit", "train")
  stale = set()
  for path in img_dir.glob("*/*.jpg") if img_dir.is_dir() else ():
    m = re.fullmatch(r"synthcity\d+pano(\d+)\.jpg", path.name)
    if m and int(m.group(1)) >= count:
      stale.add(int(m.group(1)))
  for index in sorted(stale):
    p = _paths("target", "train", index)
    for path in ([epath.Path(out_dir, f) for f in _scene_files(p)]
                 + [epath.Path(_record_path(out_dir, "target", "train", index))]):
      if path.exists():
        path.unlink()


# Bump whenever a change alters the rendered scenes: models trained on an older
# version are refused (check_trained_on).
DATA_VERSION = 1


def _config_path(out_dir: str) -> str:
  """The generation settings of the set in ``out_dir`` (written by _check_config)."""
  return os.path.join(out_dir, ".synthpass", "config.json")


def identity(out_dir: str) -> dict | None:
  """What a source model trained on ``out_dir`` depends on, or None if it is not synthpass.

  The source scenes do not depend on ``domain_shift`` (only the target palette
  and lighting do), so it is not part of the identity.
  """
  cfg = _read_json(_config_path(out_dir))
  summary = _read_json(os.path.join(out_dir, "synthpass.json"))
  if cfg is None or summary is None:
    return None
  return {"version": cfg["version"], "scale": cfg["scale"], "seed": cfg["seed"],
          "source_train": int(summary["counts"]["source"].get("train", 0))}


def check_trained_on(model_dir: str, out_dir: str) -> None:
  """Refuses a source model exported with ``synthpass.json`` for other synthpass data.

  ``model_dir`` is a folder written by the ``export_source`` stage; models
  without that file (train runs, converted checkpoints) and data that is not
  synthpass are not checked.
  """
  trained = _read_json(os.path.join(model_dir, "synthpass.json"))
  data = identity(out_dir)
  if trained is None or data is None:
    return
  if trained["identity"] != data:
    raise ValueError(
        f"the source model {model_dir} was trained on synthpass {trained['identity']}, "
        f"but {out_dir} holds synthpass {data} (generator version {DATA_VERSION}). "
        f"Regenerate the model: {trained.get('command', 'rerun train_source')}")


def _check_config(out_dir: str, config: dict):
  """Refuses to mix scenes generated with different settings in one folder."""
  path = _config_path(out_dir)
  old = _read_json(path)
  if old is not None:
    if old != config:
      raise ValueError(f"{out_dir} holds a synthpass data set generated with {old}; "
                       f"expected {config}. Use another out_dir or delete it.")
  else:
    write_json(path, config)


# The dict defaults are part of the agreed signature; they are copied, never mutated.
# pylint: disable-next=dangerous-default-value
def generate(out_dir: str, *, scale: float = 0.25, seed: int = 0,
             num_source: dict[str, int] = {"train": 300, "val": 50},
             num_target: dict[str, int] = {"train": 100, "val": 50},
             domain_shift: float = 1.0, num_workers: int = 0,
             progress: Callable[[int, int], None] | None = None) -> dict:
  """Generates (or completes) a synthetic KITTI-360-APS → BlendPASS data set.

  Args:
    out_dir: output root; gets ``KITTI360_APS/`` and ``BlendPASS/``.
    scale: image scale w.r.t. the real sizes (1408×376 and 2048×400).
    seed: base seed; every scene is seeded from (seed, domain, split, index).
    num_source: scenes per source split, default {"train": 300, "val": 50}.
    num_target: scenes per target split, default {"train": 100, "val": 50}.
    domain_shift: strength of the target appearance shift (0 = same palette).
    num_workers: processes for rendering (0 = in this process).
    progress: called with (done, total) after each scene.

  Returns:
    A summary dict: scale, seed, domain_shift, sizes ((height, width) per
    domain), counts, per-split instance/occlusion statistics (also written to
    ``<out_dir>/synthpass.json``), plus root and how many scenes this call
    generated and skipped.
  """
  num_source, num_target = dict(num_source), dict(num_target)  # never mutate the defaults
  if not 0 < scale <= 2:
    raise ValueError(f"scale must be in (0, 2], got {scale}")
  for what, counts in (("num_source", num_source), ("num_target", num_target)):
    for split, n in counts.items():
      if split not in _SPLIT_CODE or int(n) < 0:
        raise ValueError(f"{what} must map 'train'/'val' to counts >= 0, got {counts}")
  fileio.makedirs(out_dir)
  _check_config(out_dir, dict(scale=scale, seed=seed, domain_shift=domain_shift,
                               version=DATA_VERSION))
  _drop_stale_target_train(out_dir, int(num_target.get("train", 0)))
  tasks = []
  for domain, counts in (("source", num_source), ("target", num_target)):
    for split in ("train", "val"):
      for i in range(int(counts.get(split, 0))):
        tasks.append((out_dir, seed, domain, split, i, scale, domain_shift))
  recs = {}
  done = 0
  if num_workers > 0:
    ctx = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(num_workers, mp_context=ctx) as pool:
      for task, rec in zip(tasks, pool.map(_make_scene, tasks, chunksize=4)):
        recs[task[2:5]] = rec
        done += 1
        if progress:
          progress(done, len(tasks))
  else:
    for task in tasks:
      recs[task[2:5]] = _make_scene(task)
      done += 1
      if progress:
        progress(done, len(tasks))
  summary = dict(scale=scale, seed=seed, domain_shift=domain_shift,
                 sizes={k: list(v) for k, v in image_sizes(scale).items()},
                 counts={"source": num_source, "target": num_target}, splits={})
  for domain, counts in (("source", num_source), ("target", num_target)):
    for split in ("train", "val"):
      rs = [recs[(domain, split, i)] for i in range(int(counts.get(split, 0)))]
      if rs:
        _write_indexes(out_dir, domain, split, rs)
      summary["splits"][f"{domain}/{split}"] = _split_stats(rs)
  # The file holds only what the data set is (so a re-run leaves it unchanged); the
  # returned dict adds what this call did.
  write_json(os.path.join(out_dir, "synthpass.json"), summary)
  return dict(summary, root=fileio.absolute(out_dir),
              generated=sum(not r["skipped"] for r in recs.values()),
              skipped=sum(r["skipped"] for r in recs.values()))


def _split_stats(recs: list) -> dict:
  """Instance and occlusion statistics over the scenes of one split."""
  per_class = {labels.CLASS_NAMES[c]: 0 for c in labels.THING_IDS}
  out = dict(images=len(recs), instances=0, crowd=0, occluded=0, occluded_by_thing=0,
             occluded_by_stuff=0)
  vis = []
  for r in recs:
    s = r["stats"]
    for k in ("instances", "crowd", "occluded", "occluded_by_thing", "occluded_by_stuff"):
      out[k] += s[k]
    for k, v in s["per_class"].items():
      per_class[k] += v
    vis.extend(s["visible_fraction"])
  out["per_class"] = per_class
  out["mean_visible_fraction"] = float(np.mean(vis)) if vis else 1.0
  return out
