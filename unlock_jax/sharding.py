"""Device mesh, shardings, and host→device transfer of batches.

One mesh axis, ``data``: parameters are replicated, batches are split along
their leading dimension. Axis types are ``Auto`` (jax.make_mesh now defaults to
Explicit, under which un-annotated replicated weights fail to contract with
sharded activations).
"""
import pickle
from typing import Any

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import AxisType, NamedSharding, PartitionSpec as P

DATA_AXIS = "data"


def make_mesh(num_devices: int | None = None) -> jax.sharding.Mesh:
  """A 1-D ``data`` mesh over all (or the first ``num_devices``) devices."""
  connect_processes()
  n = num_devices or jax.device_count()
  return jax.make_mesh((n,), (DATA_AXIS,), axis_types=(AxisType.Auto,),
                       devices=jax.devices()[:n])


_CONNECTED: list[bool] = []


def connect_processes() -> None:
  """Sets up the cross-process collectives while the processes are in step.

  On CPU (gloo) the first collective over a set of devices must be reached by
  every process within 30 s, or its set-up times out and the run dies; once
  set up, a collective waits as long as it takes. Stages call this at their
  start (``make_mesh`` does), before one process writes data for minutes or
  loads a program from the compilation cache that another compiles. Opens the
  two device sets in use: one device per process (``gather_objects``,
  barriers, Orbax) and all devices (the ``data`` axis). Once per process;
  no-op on one process.
  """
  if jax.process_count() == 1 or _CONNECTED:
    return
  _CONNECTED.append(True)
  multihost_utils.sync_global_devices("unlock_jax: processes connected")
  mesh = jax.make_mesh((jax.device_count(),), (DATA_AXIS,), axis_types=(AxisType.Auto,))
  ones = put_array(np.ones(jax.local_device_count(), np.float32), mesh)
  jax.block_until_ready(jax.jit(jax.numpy.sum, out_shardings=replicated(mesh))(ones))


def data_sharding(mesh) -> NamedSharding:
  return NamedSharding(mesh, P(DATA_AXIS))


def replicated(mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def replicate(tree, mesh):
  """Host values, equal on every process (numpy, PRNG keys) → arrays replicated
  over the mesh.

  ``jax.device_put`` to a sharding that spans other processes' devices is an
  error in multi-process runs; a jitted identity with replicated outputs is
  not (every process passes its own, identical, copy).
  """
  return jax.jit(lambda t: t, out_shardings=replicated(mesh))(tree)


def local_batch_size(global_batch_size: int, mesh) -> int:
  """Per-process batch size; the global batch must split evenly over devices."""
  n_dev = mesh.devices.size
  if global_batch_size % n_dev:
    raise ValueError(
        f"batch_size={global_batch_size} is not divisible by the {n_dev} "
        f"devices of the '{DATA_AXIS}' mesh axis")
  return global_batch_size // jax.process_count()


def put_batch(batch: dict[str, Any], mesh) -> dict[str, jax.Array]:
  """Process-local numpy batch → global arrays sharded over ``data``.

  Keys starting with ``_host`` (ragged ground truth, kept as Python lists)
  are left out of the result: the caller reads them from its own batch.
  """
  return {k: put_array(v, mesh) for k, v in batch.items()
          if not k.startswith("_host")}


def put_array(x, mesh) -> jax.Array:
  """One process-local numpy array → a global array sharded over ``data``.

  The copy is deliberate, so it is allowed under the loops' transfer guard:
  with several processes JAX assembles the global array through a path the
  guard would otherwise count as implicit.
  """
  with jax.transfer_guard_host_to_device("allow"):
    return jax.make_array_from_process_local_data(data_sharding(mesh), np.asarray(x))


def gather_objects(obj: Any) -> list[Any]:
  """All processes' Python objects, in process order (pickled over jax)."""
  if jax.process_count() == 1:
    return [obj]
  payload = np.frombuffer(pickle.dumps(obj), np.uint8)
  sizes = multihost_utils.process_allgather(np.array([payload.size]))
  padded = np.zeros(int(np.max(sizes)), np.uint8)
  padded[:payload.size] = payload
  everything = multihost_utils.process_allgather(padded)
  return [pickle.loads(everything[i, :int(s)].tobytes())
          for i, s in enumerate(np.ravel(sizes))]


def barrier(name: str) -> None:
  """Returns once every process gets here (no-op on one process): what each
  wrote to the shared workdir before it is then there for all to read."""
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices(name)


def local_rows(array: jax.Array) -> np.ndarray:
  """This process's rows of a batch-sharded global array, in batch order."""
  shards = sorted(array.addressable_shards, key=lambda s: s.index[0].start or 0)
  rows, seen = [], set()
  for s in shards:
    start = s.index[0].start or 0
    if start not in seen:  # replicas along other axes carry the same rows
      seen.add(start)
      rows.append(np.asarray(s.data))
  return np.concatenate(rows)
