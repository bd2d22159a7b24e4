"""Name → object registries: lazy imports, and unknown names refused naming the known ones."""
import sys

import pytest

from unlock_jax import registry
from unlock_jax.data import layouts
from unlock_jax.data import pipeline
from unlock_jax.models import amodalpass
from unlock_jax.models import defaults
from unlock_jax.tools import check_data


def test_entries_are_imported_on_first_use(tmp_path, monkeypatch):
  (tmp_path / "lazy_entry_mod.py").write_text("VALUE = {'x': 1}\n")
  monkeypatch.syspath_prepend(str(tmp_path))
  reg = registry.Registry("thing", {"a": "lazy_entry_mod:VALUE", "b": 2})
  reg.register("m", "lazy_entry_mod")
  assert reg.names() == ("a", "b", "m") and "a" in reg and list(reg) == ["a", "b", "m"]
  assert "lazy_entry_mod" not in sys.modules
  assert reg.get("a") == {"x": 1} and reg.get("b") == 2
  assert reg.get("m") is sys.modules["lazy_entry_mod"]
  with pytest.raises(ValueError, match="thing 'a' is registered already"):
    reg.register("a", 3)
  with pytest.raises(ValueError, match=r"unknown thing 'c'; known: a, b, m$"):
    reg.get("c")


def test_unknown_layout_is_refused_naming_the_known_ones(tmp_path):
  with pytest.raises(ValueError, match=r"unknown data layout 'coco'; known: amodalsynthdrive, "
                                       r"blendpass, kitti360aps$"):
    pipeline.open_reader("coco", str(tmp_path), "train")
  # check_data checks every layout a reader reads, and the folder of panoramas.
  assert set(check_data.CHECKERS) == set(layouts.LAYOUTS) | {"folder"}
  assert layouts.LAYOUTS.get("blendpass").Reader.__module__ == "unlock_jax.data.layouts.blendpass"


def test_unknown_backbone_is_refused_naming_the_known_ones():
  cfg = defaults.tiny_model_config()
  cfg.backbone = "mit_b9"
  with pytest.raises(ValueError, match=r"unknown backbone 'mit_b9'; known: custom, mit_b0, "
                                       r"mit_b1, mit_b2, mit_b3, mit_b4, mit_b5$"):
    amodalpass.build(cfg)
  cfg.backbone = "mit_b2"
  mit = amodalpass.build_backbone(cfg)
  assert (mit.dims, mit.depths) == ((64, 128, 320, 512), (3, 4, 6, 3))  # SegFormer's B2
  cfg.backbone = "custom"
  assert amodalpass.build_backbone(cfg).dims == tuple(cfg.mit.dims)
