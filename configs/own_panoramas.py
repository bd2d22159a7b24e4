r"""UNLOCK on a folder of your own panoramas: no labels, no data set layout.

  python -m unlock_jax.main --config configs/own_panoramas.py:images=/path/to/panoramas \
      --workdir /tmp/my_adaptation

Stages: ``predict`` (the source model over every ``.jpg``/``.jpeg``/``.png``
under the folder, at any depth; names, colour modes, sizes and unreadable
files as in ``unlock_jax/data/layouts/folder.py``) → ``opll`` (pseudo-labels)
→ ``adcl_pool`` → ``adapt`` → ``predict_adapted`` (the adapted model over the
same panoramas, into ``{workdir}/predict_adapted``; the source model's
predictions stay in ``{workdir}/predict``). The result, the adapted model's
predictions at each image's own size, is ``{workdir}/predict_adapted/export``:
``semantic/<name>.png``, ``panoptic/<name>.png`` + ``panoptic.json``,
``instances_modal.json``, ``instances_amodal.json`` (``<name>``: the image's
path under the folder, ``pseudo/export.py``). No ground truth is read
anywhere. Every stage resumes where a killed run stopped.

Arguments (``:key=value,key=value``):

* ``images``: the folder (required; a local path or a ``gs://`` URL).
* ``checkpoint``: the source model. Default: the committed demo model
  ``assets/demo_source`` (trained on synthpass, a toy: it only segments
  synthpass-like scenes). For real panoramas pass a checkpoint of
  ``configs/k2b/source_b5.py``'s ``train_source`` or a converted reference
  checkpoint (``python -m unlock_jax.tools.convert_torch``) with ``model=b5``.
* ``model``: the checkpoint's architecture: ``demo`` (``configs/demo.py``'s
  2.0M-parameter model) or ``b5`` (AmodalPASS-B5, the reference's, with the
  reference's K2B adaptation recipe).
* ``size``: ``HxW`` every panorama is resized to (default: the model's
  training panoramas, ``100x512`` for demo, ``400x2048`` for b5). Panoramas
  of another aspect ratio are resized anyway, with a warning per image size.
* ``adapt_steps``: adaptation iterations (default 300 for demo, the
  reference's 10,000 for b5).
* ``runlocal``: 4 adaptation steps, for a smoke test.

An example folder (24 synthpass panoramas in nested folders, mixed names,
formats and sizes): ``python -m unlock_jax.tools.example_panoramas --out DIR``.
"""
from configs import common
from configs import cpu
from configs import default
from configs import demo
from unlock_jax import fileio
from unlock_jax.models import defaults as model_defaults

MODELS = ("demo", "b5")


def _size(text: str) -> tuple[int, int]:
  try:
    h, w = (int(v) for v in text.lower().split("x"))
  except ValueError:
    raise ValueError(f"size must be HxW (e.g. 400x2048), got {text!r}") from None
  return h, w


def get_config(arg=None):
  arg = common.parse_arg(arg, images="", checkpoint=cpu.DEMO_SOURCE, model="demo",
                         size="", adapt_steps=0, runlocal=False)
  if not arg.images:
    raise ValueError("configs/own_panoramas.py needs the folder of panoramas: "
                     "--config configs/own_panoramas.py:images=/path/to/panoramas")
  if arg.model not in MODELS:
    raise ValueError(f"model must be one of {MODELS}, got {arg.model!r}")
  c = default.get_config()
  c.stage = "predict,opll,adcl_pool,adapt,predict_adapted"
  if arg.model == "demo":
    scale = 0.25  # the demo model's synthpass scale: 100x512 panoramas
    c.input.max_instances = 24
    demo.demo_model(c, scale)
    size = _size(arg.size) if arg.size else (100, 512)
    cpu.adapt(c, size, scale, arg.adapt_steps or 300)
  else:
    c.model.instance_heads = True  # default_model_config(): B5 + the reference's R-CNN
    c.input.max_instances = 64
    size = _size(arg.size) if arg.size else (400, 2048)
    c.adapt.total_steps = arg.adapt_steps or 10_000
    c.adapt.crop_size = (size[0], size[0])  # the reference's 400x400 of 400x2048
    c.predict.batch_size = c.opll.batch_size = 8
  c.data.target.image_size = size
  c.predict.image_size = size
  c.seam.wrap_cols = model_defaults.wrap_cols_for(size[1])
  c.predict.images = fileio.absolute(arg.images)
  c.predict.checkpoint = fileio.absolute(arg.checkpoint)
  c.predict.num_pictures = 4
  c.opll.num_pictures = 4
  c.opll.quality = False  # no ground truth
  c.predict_adapted.export_dir = "{workdir}/predict_adapted/export"
  if arg.runlocal:
    c.adapt.total_steps = 4
  return c
