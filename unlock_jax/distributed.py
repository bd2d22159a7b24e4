"""Host-side work split over processes, and its results put together on all of them.

The offline stages read a list of panoramas on every process: each takes its
share (:func:`share`), and accumulators with a ``merge`` method are combined
so every process holds the same total (:func:`merge_all`); lists of work
still to do are made the same on every process (:func:`union_all`). All are
collectives (``sharding.gather_objects``): every process must call them, in
the same order. On one process they cost nothing.
"""
import jax

from unlock_jax import sharding as shd


def share(items: list) -> list:
  """This process's items (strided, so shares stay balanced)."""
  return items[jax.process_index()::jax.process_count()]


def merge_all(acc):
  """Every process's ``acc`` merged, in process order (the same object on all)."""
  parts = shd.gather_objects(acc)
  out = parts[0]
  for p in parts[1:]:
    out.merge(p)
  return out


def union_all(items) -> list:
  """The sorted union of every process's ``items``: one to-do list for all."""
  return sorted(set().union(*shd.gather_objects(list(items))))


def all_true(flag: bool) -> bool:
  """Whether ``flag`` holds on every process (all skip a step, or none does)."""
  return all(shd.gather_objects(bool(flag)))
