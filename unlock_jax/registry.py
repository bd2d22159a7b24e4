"""Name → object tables whose entries are imported on first use (scenic's dataset registry).

A config names a layout, a backbone or a method by a string; its table maps
the string to ``"package.module:attribute"`` (imported when first asked for,
so listing the table imports nothing) or to the object itself. An unknown
name is refused naming the known ones::

  READERS = registry.Registry("data layout", {
      "kitti360aps": "unlock_jax.data.layouts.kitti360aps:Reader", ...})
  READERS.get(config.data.source.layout)(root, split)
"""
import importlib
from typing import Any, Iterator


class Registry:
  """Named entries of one ``kind`` ("data layout", "backbone", ...)."""

  def __init__(self, kind: str, entries: dict[str, Any] | None = None):
    self.kind = kind
    self._entries = dict(entries or {})

  def register(self, name: str, entry: Any) -> None:
    """Adds ``name``: an object, or ``"module:attribute"`` imported on first use."""
    if name in self._entries:
      raise ValueError(f"{self.kind} {name!r} is registered already")
    self._entries[name] = entry

  def names(self) -> tuple[str, ...]:
    return tuple(sorted(self._entries))

  def __contains__(self, name) -> bool:
    return name in self._entries

  def __iter__(self) -> Iterator[str]:
    return iter(self.names())

  def unknown(self, name) -> str:
    """The message refusing ``name``."""
    return f"unknown {self.kind} {name!r}; known: {', '.join(self.names())}"

  def get(self, name: str) -> Any:
    """The entry of ``name``, imported if it is a ``"module:attribute"`` string."""
    if name not in self._entries:
      raise ValueError(self.unknown(name))
    entry = self._entries[name]
    if isinstance(entry, str):
      module, _, attr = entry.partition(":")
      entry = importlib.import_module(module)
      for part in filter(None, attr.split(".")):
        entry = getattr(entry, part)
      self._entries[name] = entry
    return entry
