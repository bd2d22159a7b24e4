"""Keeps each stage's log in the workdir: ``<workdir>/logs/<stage>.log``.

absl logs to stderr only, so a run's history would be lost with the terminal.
While a stage runs, a file handler on the root logger (absl's records pass
through it, in absl's format) and a copy of stdout (the evaluation tables)
append to the stage's file; a resumed run appends to the same file. Process
``p > 0`` of a multi-host run writes ``<stage>.process<p>.log``.
"""
import contextlib
import logging as py_logging
import os
import sys

from absl import logging


class _Tee:
  """Writes to the original stream and to the handler's file (under its lock)."""

  def __init__(self, stream, handler: py_logging.StreamHandler):
    self.stream, self.handler = stream, handler

  def write(self, text):
    with self.handler.lock:
      self.handler.stream.write(text)
    return self.stream.write(text)

  def flush(self):
    self.handler.flush()
    self.stream.flush()

  def __getattr__(self, name):  # isatty, fileno, encoding, ...
    return getattr(self.stream, name)


def path(workdir: str, stage: str, process_index: int = 0) -> str:
  name = stage if process_index == 0 else f"{stage}.process{process_index}"
  return os.path.join(workdir, "logs", f"{name}.log")


@contextlib.contextmanager
def stage_log(workdir: str, stage: str, process_index: int = 0):
  """Appends log records and stdout to the stage's log file while open."""
  if "://" in workdir:  # a bucket: no appendable local file
    logging.warning("workdir %s is not local: no log file is written", workdir)
    yield None
    return
  filename = path(workdir, stage, process_index)
  os.makedirs(os.path.dirname(filename), exist_ok=True)
  handler = py_logging.FileHandler(filename, mode="a", encoding="utf-8")
  handler.setFormatter(logging.PythonFormatter())
  root = py_logging.getLogger()
  root.addHandler(handler)
  stdout = sys.stdout
  sys.stdout = _Tee(stdout, handler)
  try:
    logging.info("Stage %s logs to %s", stage, filename)
    yield filename
  finally:
    sys.stdout = stdout
    root.removeHandler(handler)
    handler.close()
