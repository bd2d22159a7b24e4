"""XLA's cheaper CPU code generation for the tests' subprocesses.

Compiling is most of what a tiny run through ``unlock_jax.main`` costs on a
CPU; these flags cut XLA's compile time by about a third to a half. Runs a
test compares bit for bit all get them (the generated code, so its
rounding, follows the flags), and no test checks a timing.
"""
import os

FLAGS = ("--xla_backend_optimization_level=0", "--xla_llvm_disable_expensive_passes=true")


def merge(xla_flags: str, flags=FLAGS) -> str:
  """``xla_flags`` plus each of ``flags`` whose name it does not set already
  (a caller's own value of a flag wins)."""
  have = {f.split("=")[0] for f in xla_flags.split()}
  return " ".join([xla_flags, *(f for f in flags if f.split("=")[0] not in have)]).strip()


def env(base=None, **extra) -> dict:
  """``base`` (default ``os.environ``) and ``extra``, with :data:`FLAGS` in ``XLA_FLAGS``."""
  out = dict(os.environ if base is None else base, **extra)
  out["XLA_FLAGS"] = merge(out.get("XLA_FLAGS", ""))
  return out
