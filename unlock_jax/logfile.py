"""Keeps each stage's log in the workdir: ``<workdir>/logs/<stage>.log``.

absl logs to stderr only, so a run's history would be lost with the terminal.
While a stage runs, a file handler on the root logger (absl's records pass
through it, in absl's format) and a copy of stdout (the evaluation tables)
append to the stage's file; a resumed run appends to the same file. Process
``p > 0`` of a multi-host run writes ``<stage>.process<p>.log``.

Orbax logs a dozen INFO lines per checkpoint save (over nine in ten lines of
an adaptation log): while a stage runs, its records below WARNING are kept
out of the file and the terminal; its warnings and errors stay.

A URL workdir (``gs://``) has no appendable file: the handler writes a local
temporary file, seeded with the log already at the URL (so a resumed run
still appends), which is copied to the URL when the stage ends, also when it
fails. A killed process (SIGKILL, preemption) leaves that temporary file,
whose path the log's first line names, but no update at the URL.
"""
import contextlib
import logging as py_logging
import os
import sys
import tempfile

from absl import logging

from unlock_jax import fileio


_ORBAX = f"{os.sep}orbax{os.sep}"


class _QuietOrbax(py_logging.Filter):
  """Drops Orbax's records below WARNING (absl logs them all as logger "absl",
  so they are told apart by the file that logged them)."""

  def filter(self, record: py_logging.LogRecord) -> bool:
    return record.levelno >= py_logging.WARNING or _ORBAX not in record.pathname


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
  filename = path(workdir, stage, process_index)
  local = filename
  if fileio.is_url(filename):
    fd, local = tempfile.mkstemp(prefix=f"unlock_jax-{stage}-", suffix=".log")
    with os.fdopen(fd, "wb") as f:
      if fileio.exists(filename):
        f.write(fileio.read_bytes(filename))
  else:
    os.makedirs(os.path.dirname(filename), exist_ok=True)
  handler = py_logging.FileHandler(local, mode="a", encoding="utf-8")
  handler.setFormatter(logging.PythonFormatter())
  quiet = _QuietOrbax()
  handler.addFilter(quiet)
  terminal = logging.get_absl_handler()
  terminal.addFilter(quiet)
  root = py_logging.getLogger()
  root.addHandler(handler)
  stdout = sys.stdout
  sys.stdout = _Tee(stdout, handler)
  try:
    if local == filename:
      logging.info("Stage %s logs to %s", stage, filename)
    else:
      logging.info("Stage %s logs to %s (through %s until the stage ends)", stage,
                   filename, local)
    yield filename
  finally:
    sys.stdout = stdout
    root.removeHandler(handler)
    terminal.removeFilter(quiet)
    handler.close()
    if local != filename:
      try:
        with open(local, "rb") as f:
          fileio.atomic_write_bytes(filename, f.read())
      except Exception as e:  # pylint: disable=broad-except
        # A failed copy must not hide the stage's own outcome; the file stays.
        logging.warning("could not copy the log %s to %s: %s", local, filename, e)
      else:
        os.remove(local)
