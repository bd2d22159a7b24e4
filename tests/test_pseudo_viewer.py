"""Pseudo-label and prediction pictures: exact pixels on tiny hand-made cases (hatch
stripes, unlabelled marker, occluded vs visible amodal parts, pool 1 vs 255), shapes."""
import numpy as np

from unlock_jax.data import labels
from unlock_jax.evaluation import pictures
from unlock_jax.pseudo import viewer

H, W = 12, 18
L = 14  # label strip height
WHITE = (255, 255, 255)
CAR, PED = 13, 11


def _stripe(y, x):
  """The hatch pattern, written out: diagonal bands three pixels wide."""
  return ((y + x) // 3) % 2 == 0


def _panel(picture, i, h=H):
  return picture[i * (L + h) + L:(i + 1) * (L + h)]


def _image(value):
  return np.full((H, W, 3), value, np.uint8)


def _mask(y0, y1, x0, x1):
  m = np.zeros((H, W), bool)
  m[y0:y1, x0:x1] = True
  return m


def _inst(items):
  return {"masks": np.array([m for _, _, m in items], bool).reshape(-1, H, W),
          "classes": np.array([c for c, _, _ in items], np.int32),
          "scores": np.array([s for _, s, _ in items], np.float32)}


def _variant(**kw):
  v = {"semantic": np.zeros((H, W), np.uint8), "modal": _inst([]), "amodal": _inst([]),
       "uncertain_modal": np.zeros((H, W), bool), "uncertain_amodal": np.zeros((H, W), bool),
       "pool": []}
  v.update(kw)
  return v


def _on_and_off_stripe(region):
  """One interior pixel of ``region`` on a hatch stripe and one off it."""
  on = off = None
  for y, x in zip(*np.nonzero(region)):
    if _stripe(y, x) and on is None:
      on = (y, x)
    if not _stripe(y, x) and off is None:
      off = (y, x)
  return on, off


def test_shapes_and_empty_variant():
  for scale, (h, w) in ((1.0, (H, W)), (0.5, (6, 9))):
    out = viewer.render_pseudo_labels(_image(30), _variant(), title="x", scale=scale)
    # Panels, then the legend: its strip and one row (road, the only class).
    assert out.dtype == np.uint8 and out.shape == (5 * (L + h) + 2 * L, w, 3)
    pred = {"semantic": np.zeros((H, W), np.uint8), "confidence": np.ones((H, W), np.float32),
            "modal": _inst([]), "amodal": _inst([])}
    out = viewer.render_prediction(_image(30), pred, scale=scale)
    assert out.dtype == np.uint8 and out.shape == (4 * (L + h) + 2 * L, w, 3)
  # No instances and an empty pool: those panels are the image at 35 % (30 -> 10).
  out = viewer.render_pseudo_labels(_image(30), {"semantic": np.zeros((H, W), np.uint8)})
  for i in (1, 2, 3, 4):
    assert (_panel(out, i) == 10).all()


def test_semantic_labels_and_unlabelled_marker():
  sem = np.zeros((H, W), np.uint8)  # road (128, 64, 128)
  sem[2:8, 3:12] = 255
  out = _panel(viewer.render_pseudo_labels(_image(30), _variant(semantic=sem)), 0)
  on, off = _on_and_off_stripe(sem == 255)
  assert tuple(out[on]) == WHITE
  assert tuple(out[off]) == (10, 10, 10)
  # Labelled: (30 + colour) // 2.
  assert tuple(out[0, 0]) == (79, 47, 79)
  sem[0, 0] = CAR  # (0, 0, 142)
  out = _panel(viewer.render_pseudo_labels(_image(30), _variant(semantic=sem)), 0)
  assert tuple(out[0, 0]) == (15, 15, 86)


def test_modal_panel_shades_outline_and_score_order():
  low, high = _mask(1, 8, 1, 9), _mask(4, 11, 6, 16)
  v = _variant(modal=_inst([(CAR, 0.3, low), (CAR, 0.9, high)]))
  out = _panel(viewer.render_pseudo_labels(_image(0), v), 1)
  assert tuple(out[0, 0]) == (0, 0, 0)  # background: dimmed black
  assert tuple(out[1, 1]) == WHITE and tuple(out[10, 15]) == WHITE  # outlines
  c_low, c_high = tuple(out[3, 3]), tuple(out[8, 12])
  assert c_low != c_high and c_low != (0, 0, 0) and c_high != WHITE
  assert tuple(out[6, 7]) == c_high  # overlap: the higher score is on top
  interior = np.zeros((H, W), bool)
  interior[2:7, 2:8] = True
  interior &= ~_mask(3, 12, 5, 17)  # away from the other instance and its outline
  assert (out[interior] == c_low).all()


def test_amodal_occluded_part_hatched_visible_part_solid():
  amodal = _mask(1, 11, 1, 17)
  modal = _mask(1, 11, 1, 8)  # the visible left part
  v = _variant(modal=_inst([(CAR, 0.9, modal)]), amodal=_inst([(CAR, 0.8, amodal)]))
  out = _panel(viewer.render_pseudo_labels(_image(0), v), 2)
  colour = tuple(out[5, 4])
  assert colour != (0, 0, 0)
  assert (out[2:10, 2:7] == colour).all()  # visible interior: solid on and off stripes
  occluded = _mask(2, 10, 9, 16)
  on, off = _on_and_off_stripe(occluded)
  assert tuple(out[on]) == colour and tuple(out[off]) == (0, 0, 0)
  for y, x in zip(*np.nonzero(occluded)):
    assert (tuple(out[y, x]) == colour) == bool(_stripe(y, x))
  # A modal mask of another class is no twin: the whole amodal mask is hatched.
  v = _variant(modal=_inst([(PED, 0.9, modal)]), amodal=_inst([(CAR, 0.8, amodal)]))
  out = _panel(viewer.render_pseudo_labels(_image(0), v), 2)
  inner = _mask(2, 10, 2, 16)
  stripes = np.array([[_stripe(y, x) for x in range(W)] for y in range(H)])
  assert (out[inner & ~stripes] == 0).all()
  assert len(np.unique(out[inner & stripes], axis=0)) == 1


def test_uncertain_two_colours_and_both_striped():
  um, ua = _mask(0, 12, 0, 9), _mask(0, 12, 6, 18)
  out = _panel(viewer.render_pseudo_labels(_image(0), _variant(uncertain_modal=um,
                                                               uncertain_amodal=ua)), 3)
  assert tuple(out[5, 2]) == tuple(viewer.UNCERTAIN_MODAL)
  assert tuple(out[5, 14]) == tuple(viewer.UNCERTAIN_AMODAL)
  assert tuple(viewer.UNCERTAIN_MODAL) != tuple(viewer.UNCERTAIN_AMODAL)
  on, off = _on_and_off_stripe(um & ua)
  assert tuple(out[on]) == tuple(viewer.UNCERTAIN_AMODAL)
  assert tuple(out[off]) == tuple(viewer.UNCERTAIN_MODAL)


def test_pool_one_and_255_pixels_differ():
  m = np.zeros((H, W), np.uint8)
  m[2:10, 2:16] = 1
  m[2:10, 10:16] = 255
  out = _panel(viewer.render_pseudo_labels(_image(0), _variant(pool=[dict(class_id=CAR,
                                                                           mask=m)])), 4)
  one = tuple(out[5, 5])
  assert one != (0, 0, 0) and one != WHITE
  assert (out[m == 1] == one).all()
  on, off = _on_and_off_stripe(m == 255)
  assert tuple(out[on]) == WHITE and tuple(out[off]) == (0, 0, 0)
  assert (out[m == 255] != one).any(-1).all()


def test_prediction_thresholds_and_own_visible_part():
  sem = np.zeros((H, W), np.uint8)  # road everywhere: overlay (0 + 128, 64, 128) // 2
  a_modal = _mask(1, 11, 1, 9)  # car, score 0.9
  b_modal = _mask(1, 11, 6, 11)  # pedestrian on top of the car's right part, score 0.95
  c_modal = _mask(1, 4, 13, 17)  # below tau_m
  amodal = _mask(1, 11, 1, 16)  # the car's full extent
  pred = {"semantic": sem,
          "modal": _inst([(CAR, 0.9, a_modal), (PED, 0.95, b_modal), (CAR, 0.4, c_modal)]),
          "amodal": _inst([(CAR, 0.8, amodal), (CAR, 0.2, _mask(0, 12, 0, 18))])}
  out = viewer.render_prediction(_image(0), pred, tau_m=0.5, tau_a=0.5)
  np.testing.assert_array_equal(_panel(out, 0), _image(0))
  road = (64, 32, 64)
  assert (_panel(out, 1) == road).all()
  pan = _panel(out, 2)
  assert (pan[_mask(2, 4, 14, 16)] == road).all()  # score 0.4 < tau_m: semantic only
  car, ped = tuple(pan[5, 3]), tuple(pan[5, 8])
  assert car != road and ped != road and car != ped
  assert tuple(pan[1, 1]) == WHITE  # instance outline
  amo = _panel(out, 3)
  # Own visible part = car pixels not under the pedestrian (cols 1..5): solid, in the car's
  # shade (the panoptic panel shows it half-blended on black).
  colour = tuple(amo[5, 3])
  assert tuple(c // 2 for c in colour) == car
  assert (amo[2:10, 2:6] == colour).all()
  # Behind the pedestrian (cols 6..10) and beyond (11..15): hatched.
  for y, x in zip(*np.nonzero(_mask(2, 10, 6, 15))):
    assert (tuple(amo[y, x]) == colour) == bool(_stripe(y, x))
  # The low-score amodal mask (whole image, 0.2 < tau_a) is not drawn.
  assert (amo[0, :] == 0).all() and (amo[:, 17] == 0).all()


def test_legend_lists_the_classes_of_labels_instances_and_pool():
  sem = np.zeros((H, W), np.uint8)
  sem[:, 9:] = 8  # vegetation
  v = _variant(semantic=sem, modal=_inst([(CAR, 0.9, _mask(2, 6, 2, 6))]),
               pool=[dict(class_id=PED, mask=_mask(6, 10, 10, 14).astype(np.uint8))])
  out = viewer.render_pseudo_labels(_image(0), v)
  key = out[5 * (L + H) + L:]  # below the legend's own label strip
  inner = pictures.SWATCH - 2
  shown = [c for c in range(labels.NUM_CLASSES) if any(
      (key[y:y + inner, x:x + inner] == labels.PALETTE[c]).all()
      for y in range(key.shape[0] - inner + 1) for x in range(W - inner + 1))]
  assert shown == [0, 8, PED, CAR]
  pred = {"semantic": sem, "modal": _inst([(CAR, 0.9, _mask(2, 6, 2, 6)),
                                           (PED, 0.1, _mask(6, 9, 2, 6))])}
  out = viewer.render_prediction(_image(0), pred, tau_m=0.5)
  key = out[4 * (L + H) + L:]
  shown = [c for c in range(labels.NUM_CLASSES) if any(
      (key[y:y + inner, x:x + inner] == labels.PALETTE[c]).all()
      for y in range(key.shape[0] - inner + 1) for x in range(W - inner + 1))]
  assert shown == [0, 8, CAR]  # the pedestrian scores below tau_m: not drawn, not listed
