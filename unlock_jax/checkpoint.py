"""Orbax checkpoints of the train state together with the grain iterator state.

One ``CheckpointManager`` per run directory; each step is a composite of
``state`` (the train-state pytree), ``data_iter`` (grain's iterator state, one
file per process) and ``meta`` (JSON). Saves are asynchronous and committed
atomically by Orbax, so a killed process leaves the previous checkpoint intact.

Checkpoint folders reach Orbax as given: local paths made absolute, URLs
(``gs://bucket/run/...``) untouched, which Orbax writes through TensorStore's
own GCS driver (arrays) and etils.epath (metadata).
"""
import grain
import jax
import orbax.checkpoint as ocp

from unlock_jax import fileio
from unlock_jax import sharding as shd
from unlock_jax.train import steps


def _check_gcs_client(path: str) -> None:
  """Orbax lists the steps of a ``gs://`` folder through google-cloud-storage
  (its hierarchical-namespace check): say so before it fails mid-run."""
  if not path.startswith("gs://"):
    return
  try:
    from google.cloud import storage  # pylint: disable=g-import-not-at-top,unused-import
  except ImportError as e:
    raise ImportError(
        f"the checkpoint folder {path} is on GCS: Orbax needs the google-cloud-storage "
        "package to list it (pip install google-cloud-storage)") from e


class Checkpointer:
  """Thin wrapper: save/restore a state pytree, an iterator and metadata."""

  def __init__(self, directory: str, *, max_to_keep: int = 2,
               asynchronous: bool = True):
    self.directory = fileio.absolute(directory)  # gs:// workdirs stay URLs
    _check_gcs_client(self.directory)
    self.manager = ocp.CheckpointManager(
        self.directory,
        options=ocp.CheckpointManagerOptions(
            max_to_keep=max_to_keep, create=True,
            enable_async_checkpointing=asynchronous))

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def reached_preemption(self, step: int) -> bool:
    return self.manager.reached_preemption(step)

  def save(self, step: int, state, data_iter=None, meta: dict | None = None,
           force: bool = False) -> bool:
    items = {"state": ocp.args.StandardSave(state),
             "meta": ocp.args.JsonSave(meta or {})}
    if data_iter is not None:
      items["data_iter"] = grain.checkpoint.CheckpointSave(data_iter)
    return self.manager.save(step, args=ocp.args.Composite(**items), force=force)

  def restore(self, step: int, abstract_state, data_iter=None):
    """Restores ``(state, meta)`` with the shardings of ``abstract_state``.

    ``data_iter`` (if given) is restored in place to the saved position.
    """
    items = {"state": ocp.args.StandardRestore(abstract_state),
             "meta": ocp.args.JsonRestore()}
    if data_iter is not None:
      items["data_iter"] = grain.checkpoint.CheckpointRestore(data_iter)
    restored = self.manager.restore(step, args=ocp.args.Composite(**items))
    return restored["state"], restored["meta"]

  def wait(self) -> None:
    self.manager.wait_until_finished()

  def close(self) -> None:
    self.manager.wait_until_finished()
    self.manager.close()


def abstract_like(state):
  """ShapeDtypeStructs carrying each leaf's sharding (the restore target)."""
  return jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), state)


def abstract_variables(model, image_shape, mesh):
  """Shapes (with replicated sharding) of the model's params and batch_stats:
  the restore target of :func:`load_variables`."""
  shapes = jax.eval_shape(lambda r: steps.init_variables(model, r, image_shape),
                          jax.random.key(0))
  repl = shd.replicated(mesh)
  return {k: jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=repl),
                          shapes.get(k, {}))
          for k in ("params", "batch_stats")}


def load_variables(path: str, abstract_variables, step: int | None = None):
  """Restores ``{"params", "batch_stats"}`` from a run dir or a converted checkpoint.

  ``step`` restores that step of a run's checkpoint folder instead of its
  latest (``unlock_jax.load`` of a step folder).

  ``path`` is either a train run's checkpoint folder (latest step, its
  ``state`` item) or a folder written by ``tools/convert_torch`` (a plain
  StandardCheckpointer pytree of ``{"params", "batch_stats"}``).
  """
  path = fileio.absolute(path)
  if not fileio.isdir(path):
    raise FileNotFoundError(f"checkpoint folder {path} does not exist")
  _check_gcs_client(path)
  mngr = ocp.CheckpointManager(path, options=ocp.CheckpointManagerOptions(create=False))
  if step is not None and step not in mngr.all_steps():
    steps = sorted(mngr.all_steps())
    mngr.close()
    raise FileNotFoundError(f"no checkpoint step {step} in {path} (its steps: {steps})")
  step = mngr.latest_step() if step is None else step
  if step is not None:
    target = {k: abstract_variables[k] for k in ("params", "batch_stats")}
    restored = mngr.restore(step, args=ocp.args.Composite(
        state=ocp.args.PyTreeRestore(
            item=target,
            restore_args=ocp.checkpoint_utils.construct_restore_args(target),
            partial_restore=True)))
    mngr.close()
    return restored["state"], step
  mngr.close()
  ckptr = ocp.StandardCheckpointer()
  restored = ckptr.restore(path, target={k: abstract_variables[k]
                                          for k in ("params", "batch_stats")})
  return restored, None
