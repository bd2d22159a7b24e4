"""One home per rule: the readers raise the first problem a rule finds, check_data lists them all."""
import pytest

from unlock_jax.data.layouts import common
from unlock_jax.tools import check_data

SEGMENTS = [
    {"id": 1, "category_id": 40, "iscrowd": 0},          # outside the label table
    {"id": 1, "category_id": 2, "iscrowd": 0},           # the id again
    {"id": 13005, "category_id": 13, "iscrowd": 0},      # a car numbered class*1000+k
    {"id": 7, "category_id": 13, "iscrowd": 0},          # a car that is not
]


def test_segments_rule_collected_and_raised():
  report = check_data.Report()
  assert not common.check_segments(SEGMENTS, "pan.json", "x", report)
  assert [(p.severity, p.path, p.message) for p in report.problems] == [
      ("error", "pan.json", "segment 1 of x has category_id 40, outside the label table 0..17"),
      ("error", "pan.json", "segment id 1 appears twice in x"),
      ("warning", "pan.json", "thing segment 7 of x (category 13) does not have the id "
                              "13*1000+k")]
  assert all(p.fix for p in report.problems)
  # A reader stops at the first error check_data lists, with the same text and file.
  with pytest.raises(common.DataError) as e:
    common.check_segments(SEGMENTS, "pan.json", "x")
  assert (e.value.path, e.value.text) == ("pan.json", report.problems[0].message)
  # Warnings are what the readers tolerate; with strict ids the same finding is an error.
  assert common.check_segments(SEGMENTS[2:], "pan.json", "x")
  with pytest.raises(common.DataError, match=r"thing segment 7 of x .*13\*1000\+k \(pan\.json\)"):
    common.check_segments(SEGMENTS[2:], "pan.json", "x", strict_ids=True)


def test_amodal_index_rule_collected_and_raised():
  amodal = {"images": [{"id": 1, "file_name": "a.png"}, {"file_name": "b.png"}],
            "annotations": [
                {"id": 10, "image_id": 1, "segmentation": [[0, 0, 4, 0, 4, 4]]},
                {"id": 11, "image_id": 1, "segmentation": [[0, 0, 4]]},
                {"id": 12, "image_id": 9, "segmentation": []},
                {"id": 13, "image_id": 1, "segmentation": [{"size": [4, 4], "counts": [16]}]}]}
  found = []
  index = common.amodal_index(amodal, "am.json", found.append)
  assert sorted(index["a.png"]) == [10, 11, 13]  # what can be indexed still is
  assert [f.text for f in found] == [
      "image entry {'file_name': 'b.png'} needs 'id' and 'file_name'",
      "annotation 11 (a.png): polygon [0, 0, 4] is not an even list of >= 6 finite numbers",
      "annotation 12 refers to image_id 9, which is not in 'images'"]
  with pytest.raises(common.DataError, match=r"^image entry .* needs 'id' and 'file_name' "
                                             r"\(am\.json\)$"):
    common.amodal_index(amodal, "am.json")
  assert common.amodal_index({"images": []}, "am.json", found.append) is None
  assert found[-1].text == "amodal JSON needs 'images' and 'annotations' lists"


def test_file_rules_name_the_file(tmp_path):
  with pytest.raises(common.DataError) as e:
    common.read_json(str(tmp_path / "no.json"), "panoptic JSON", "add it")
  assert (e.value.text, e.value.fix, str(e.value)) == (
      "missing panoptic JSON", "add it", f"missing panoptic JSON {tmp_path / 'no.json'}")
  (tmp_path / "bad.json").write_text("{")
  with pytest.raises(common.DataError, match="cannot parse panoptic JSON .*bad.json: "):
    common.read_json(str(tmp_path / "bad.json"), "panoptic JSON")
  (tmp_path / "bad.png").write_bytes(b"not a png")
  with pytest.raises(common.DataError) as e:
    common.open_image(str(tmp_path / "bad.png"), "instance PNG")
  assert e.value.text.startswith("cannot read instance PNG: ") and "intact" in e.value.fix
