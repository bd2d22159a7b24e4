"""Orbax checkpoints of the train state together with the grain iterator state.

One ``CheckpointManager`` per run directory; each step is a composite of
``state`` (the train-state pytree), ``data_iter`` (grain's iterator state, one
file per process) and ``meta`` (JSON). Saves are asynchronous and committed
atomically by Orbax, so a killed process leaves the previous checkpoint intact.

Checkpoint folders reach Orbax as given: local paths made absolute, URLs
(``gs://bucket/run/...``) untouched, which Orbax writes through TensorStore's
own GCS driver (arrays) and etils.epath (metadata).

A checkpoint that cannot be restored raises a :class:`CheckpointError` whose
one message names the folder and the fix, instead of Orbax's TensorStore spec
dump: :class:`DamagedCheckpointError` for truncated, garbled or missing files
(a full disk, a copy cut short), :class:`ArchitectureMismatchError` when the
stored arrays are another model's. A resumed run whose latest step is damaged
goes on from the previous complete one (:meth:`Checkpointer.restore_latest`).
"""
import contextlib
import gc
import json
import os
import re
import sys

from etils import epath
import grain
import jax
import orbax.checkpoint as ocp
from absl import logging

from unlock_jax import fileio
from unlock_jax import model_info
from unlock_jax import sharding as shd
from unlock_jax.models import variables as variables_lib


class CheckpointError(Exception):
  """A checkpoint that cannot be restored; the message names it and the fix."""


class DamagedCheckpointError(CheckpointError):
  """Files of the checkpoint are truncated, garbled or missing."""

  def __init__(self, message: str, reason: str = ""):
    super().__init__(message)
    self.reason = reason


class ArchitectureMismatchError(CheckpointError):
  """The checkpoint's arrays or parameter tree are not those of the model."""


# TensorStore status codes of a failed access (network, credentials) rather
# than of bad bytes: such errors pass through unchanged.
_ACCESS_CODES = ("PERMISSION_DENIED", "UNAUTHENTICATED", "UNAVAILABLE",
                 "DEADLINE_EXCEEDED", "CANCELLED", "RESOURCE_EXHAUSTED")
_STATUS = re.compile(r"([A-Z]+(?:_[A-Z]+)*): ")


def _chain(e):
  while e is not None:
    yield e
    e = e.__cause__ or e.__context__


def _damage(e: BaseException) -> str | None:
  """Why a restore failed if the files are damaged (one line), else None."""
  for x in _chain(e):
    msg = str(x).strip()
    if isinstance(x, json.JSONDecodeError):
      return f"a metadata file is cut short or garbled: {x}"
    status = _STATUS.match(msg)
    if status:  # TensorStore's own status, under Orbax's spec dump
      return None if status.group(1) in _ACCESS_CODES else msg.splitlines()[0]
    if isinstance(x, FileNotFoundError) or (  # the folder exists: a file of it is gone
        isinstance(x, ValueError) and msg.endswith("does not exist.")):  # grain's state
      return msg.splitlines()[0]
    if isinstance(x, KeyError) and "was not found in the checkpoint" in msg:
      return msg.strip("'\"")
  return None


def _quiet_orbax_unraisable(hook):
  """``sys.unraisablehook`` minus the failed reads that a failed restore leaves
  behind (one per damaged array, each with TensorStore's spec dump)."""
  def drop(unraisable):
    code = getattr(unraisable.object, "cr_code", None)
    if code is not None and f"{os.sep}orbax{os.sep}" in code.co_filename:
      return
    hook(unraisable)
  return drop


@contextlib.contextmanager
def _restoring(where: str, damaged_fix: str, mismatch: tuple[str, str]):
  """Turns Orbax's errors for a damaged or foreign checkpoint into CheckpointErrors.

  ``mismatch``: (what the checkpoint should match, the fix) for a foreign one,
  whose arrays :func:`_check_tree` compares before the restore; Orbax's own
  shape error is the fallback.
  """
  hook = sys.unraisablehook
  sys.unraisablehook = _quiet_orbax_unraisable(hook)
  try:
    yield
  except CheckpointError:
    raise
  except Exception as e:  # pylint: disable=broad-except
    gc.collect()  # the other failed reads of this restore, dropped while quiet
    reason = _damage(e)
    if reason is not None:
      raise DamagedCheckpointError(
          f"checkpoint {where} is damaged ({reason}). {damaged_fix}", reason) from None
    if isinstance(e, ValueError) and "is not compatible with the stored shape" in str(e):
      detail = str(e).split(". ")[0]  # not Orbax's advice to pad or truncate
      raise ArchitectureMismatchError(
          f"checkpoint {where} does not match {mismatch[0]} ({detail}). {mismatch[1]}") from None
    raise
  finally:
    sys.unraisablehook = hook


def _key(k) -> str:
  """A path entry as Orbax names it on disk (dict key, attribute, or index)."""
  for attr in ("key", "name", "idx"):
    if hasattr(k, attr):
      return str(getattr(k, attr))
  return str(k)


def _names(tree) -> dict:
  return {"/".join(_key(k) for k in path): leaf
          for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


def _check_tree(item_dir: str, target, where: str, mismatch: tuple[str, str],
                folder: str = "") -> None:
  """Raises ArchitectureMismatchError unless the arrays stored in ``item_dir``
  under ``target``'s top-level keys have ``target``'s names and shapes.

  Orbax's partial restore would leave a missing array as a ShapeDtypeStruct
  and ignore an extra one; another model must not pass silently.
  """
  stored = ocp.PyTreeCheckpointHandler().metadata(epath.Path(item_dir)).tree
  stored = _names({k: v for k, v in stored.items() if k in target})
  wanted = _names(target)
  missing = [k for k in wanted if k not in stored]
  extra = [k for k in stored if k not in wanted]
  shapes = [k for k in wanted if k in stored and getattr(stored[k], "shape", None) is not None
            and tuple(stored[k].shape) != tuple(wanted[k].shape)]
  parts = []
  if missing:
    parts.append(f"{len(missing)} arrays missing from the checkpoint, first {missing[0]}")
  if extra:
    parts.append(f"{len(extra)} arrays only in the checkpoint, first {extra[0]}")
  if shapes:
    k = shapes[0]
    parts.append(f"{len(shapes)} shapes differ, first {k}: stored "
                 f"{tuple(stored[k].shape)}, expected {tuple(wanted[k].shape)}")
  if parts:
    fix = mismatch[1]
    scanned = [k for k in missing + extra if re.match(r"params/backbone/block\d+/", k)]
    unrolled = [k for k in missing + extra if re.match(r"params/backbone/block\d+_\d+/", k)]
    if folder and scanned and unrolled:  # the same blocks, the other layout
      to_scan = any(k in missing for k in scanned)
      fix = (f"It holds the {'unrolled' if to_scan else 'scanned'} backbone layout and "
             f"config.model.scan_blocks={to_scan}: rewrite it with "
             f"`{model_info.convert_layout_command(folder, to_scan)}` or set "
             f"config.model.scan_blocks={not to_scan}.")
    raise ArchitectureMismatchError(
        f"checkpoint {where} does not match {mismatch[0]} ({'; '.join(parts)}). {fix}")


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
    where = f"step {step} in {self.directory}"
    mismatch = ("this run's train state",
                "The config's model or optimiser changed since it was written: rerun "
                "with the config that wrote it, or start over in a new workdir.")
    with _restoring(where,
                    f"Delete {self.step_dir(step)} to resume from the step before it.",
                    mismatch):
      _check_tree(os.path.join(self.step_dir(step), "state"), abstract_state, where,
                  mismatch)
      restored = self.manager.restore(step, args=ocp.args.Composite(**items))
    return restored["state"], restored["meta"]

  def restore_latest(self, abstract_state, data_iter=None):
    """``(state, step)`` of the newest complete checkpoint, or None if there is none.

    A damaged newer step is moved aside to ``<step>.damaged`` with a warning
    naming it and the step the run goes on from, so that step can be saved
    again; if every step is damaged the error says how to start over.
    """
    damaged = []
    for step in sorted(self.manager.all_steps(), reverse=True):
      try:
        state, _ = self.restore(step, abstract_state, data_iter)
      except DamagedCheckpointError as e:
        damaged.append((step, e.reason))
        continue
      for bad, reason in damaged:
        logging.warning(
            "checkpoint step %d in %s is damaged (%s); resuming from step %d, the "
            "previous complete checkpoint. The damaged step is kept as %s.damaged.",
            bad, self.directory, reason, step, self.step_dir(bad))
      self._set_aside([bad for bad, _ in damaged])
      return state, step
    if damaged:
      steps_text = "; ".join(f"step {s}: {r}" for s, r in damaged)
      raise DamagedCheckpointError(
          f"no complete checkpoint to resume from in {self.directory}, every step is "
          f"damaged ({steps_text}). Delete {self.directory} to train this stage "
          "from the start.", steps_text)
    return None

  def step_dir(self, step: int) -> str:
    return os.path.join(self.directory, str(step))

  def _set_aside(self, bad_steps) -> None:
    """Renames damaged step folders (process 0), so Orbax no longer lists them."""
    if not bad_steps:
      return
    if jax.process_index() == 0:
      for step in bad_steps:
        dst = self.step_dir(step) + ".damaged"
        if fileio.exists(dst):
          fileio.rmtree(dst)
        fileio.replace(self.step_dir(step), dst)
    shd.barrier("damaged checkpoints set aside")
    self.manager.reload()

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
  shapes = jax.eval_shape(lambda r: variables_lib.init_variables(model, r, image_shape),
                          jax.random.key(0))
  repl = shd.replicated(mesh)
  return {k: jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=repl),
                          shapes.get(k, {}))
          for k in ("params", "batch_stats")}


_MODEL = ("the model in config.model",
          "Point the stage at a checkpoint trained with this config's model section, "
          "or set config.model to the architecture the checkpoint was trained with.")


def _rewrite_hint(path: str) -> str:
  """How to get an exported or converted model folder back."""
  meta = os.path.join(path, "synthpass.json")
  command = ""
  if fileio.exists(meta):
    try:
      command = fileio.read_json(meta).get("command", "")
    except (ValueError, OSError):
      pass
  how = (f"rewrite it: {command}" if command else
         "rewrite it with what wrote it (the export_source stage, tools/convert_torch)")
  return f"Restore the folder from where it came (a model committed to git: " \
         f"git checkout -- {path}) or {how}."


def _no_checkpoint_reason(path: str) -> tuple[str, bool]:
  """Why a folder without step folders is no exported model: (reason, damaged)."""
  # A run writes its model_config.json before its first step is saved.
  names = [n for n in fileio.listdir(path) if n != model_info.FILE]
  if not names:
    return "the folder is empty", False
  if all(".orbax-checkpoint-tmp" in n for n in names):
    return "it holds only an unfinished save (the process was killed while saving)", False
  if "_METADATA" not in names:
    return "its _METADATA file is missing", True
  return "", False


def load_variables(path: str, abstract_variables, step: int | None = None):
  """Restores ``{"params", "batch_stats"}`` from a run dir or a converted checkpoint.

  ``step`` restores that step of a run's checkpoint folder instead of its
  latest (``unlock_jax.load`` of a step folder).

  ``path`` is either a train run's checkpoint folder (latest step, its
  ``state`` item) or a folder written by ``tools/convert_torch`` or the
  ``export_source`` stage (a plain StandardCheckpointer pytree of ``{"params",
  "batch_stats"}``). Raises ``FileNotFoundError`` for a folder that holds no
  checkpoint and a :class:`CheckpointError` for a damaged or foreign one.
  """
  path = fileio.absolute(path)
  if not fileio.isdir(path):
    raise FileNotFoundError(f"checkpoint folder {path} does not exist")
  _check_gcs_client(path)
  target = {k: abstract_variables[k] for k in ("params", "batch_stats")}
  mngr = ocp.CheckpointManager(path, options=ocp.CheckpointManagerOptions(create=False))
  if step is not None and step not in mngr.all_steps():
    steps = sorted(mngr.all_steps())
    mngr.close()
    raise FileNotFoundError(f"no checkpoint step {step} in {path} (its steps: {steps})")
  step = mngr.latest_step() if step is None else step
  if step is not None:
    earlier = sorted(s for s in mngr.all_steps() if s < step)
    step_dir = os.path.join(path, str(step))
    fix = (f"Delete {step_dir} to load step {earlier[-1]}, the one before it, or "
           "rerun the stage that wrote it." if earlier else
           "Rerun the stage that wrote it (delete the folder first).")
    where = f"step {step} in {path}"
    try:
      with _restoring(where, fix, _MODEL):
        _check_tree(os.path.join(step_dir, "state"), target, where, _MODEL, path)
        restored = mngr.restore(step, args=ocp.args.Composite(
            state=ocp.args.PyTreeRestore(
                item=target,
                restore_args=ocp.checkpoint_utils.construct_restore_args(target),
                partial_restore=True)))["state"]
    finally:
      mngr.close()
    return restored, step
  mngr.close()
  reason, damaged = _no_checkpoint_reason(path)
  if damaged:
    raise DamagedCheckpointError(
        f"checkpoint {path} is damaged ({reason}). {_rewrite_hint(path)}", reason)
  if reason:
    raise FileNotFoundError(
        f"checkpoint folder {path} holds no checkpoint: {reason}. Point the stage at "
        "a train run's checkpoints folder (<workdir>/train_source/checkpoints) or a "
        "folder written by export_source or tools/convert_torch, or rerun the stage "
        "that writes it.")
  with _restoring(path, _rewrite_hint(path), _MODEL):
    _check_tree(path, target, path, _MODEL, path)
    restored = ocp.StandardCheckpointer().restore(path, target=target)
  return restored, None

