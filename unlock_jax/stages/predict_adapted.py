"""Stage 5: the adapted model's predictions, in a store of their own.

``predict``'s run (the same panoramas: ``config.predict.images`` or the target
split, the same batch size, pictures and bad-image rule;
``pseudo/predictions.py``) with the keys of ``config.predict_adapted``
replacing those of ``config.predict``: by default the last checkpoint of
``adapt`` (``<adapt.out_dir>/checkpoints``) into
``{workdir}/predict_adapted``, so the source model's store, which the
pseudo-labels came from, and the adapted model's never mix.
"""
from unlock_jax import fingerprint
from unlock_jax import provenance
from unlock_jax.pseudo import predictions


def adapted_config(config):
  """``config`` with ``config.predict`` updated by ``config.predict_adapted``."""
  out = config.copy_and_resolve_references()
  for key, value in out.predict_adapted.items():
    out.predict[key] = value
  return out


def run(config, workdir: str) -> dict:
  provenance.record(workdir, "predict_adapted", config,
                    fingerprint.begin(config, workdir, "predict_adapted"))
  return predictions.predict_into_store(adapted_config(config), workdir)
