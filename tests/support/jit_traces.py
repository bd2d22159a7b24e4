"""Trace counting for the jitted train steps, with ``chex.assert_max_traces``.

The steps are jitted inside their factories (``make_source_step``,
a method's ``make_step``), while chex's wrapper has to sit under ``jax.jit``. So
:func:`max_traces` hands every function jitted inside its block to
``chex.assert_max_traces`` first: a later retrace raises AssertionError.
chex counts traces per function's code, across the process, so each block
starts from zero: a helper such as ``train/adapt.init_state``'s ``init``,
jitted inside the blocks of several test files, is counted per block.
"""
import contextlib

import chex
import jax


@contextlib.contextmanager
def max_traces(n: int):
  real_jit = jax.jit
  chex.clear_trace_counter()

  def jit(fun, *args, **kwargs):
    return real_jit(chex.assert_max_traces(fun, n=n), *args, **kwargs)

  jax.jit = jit
  try:
    yield
  finally:
    jax.jit = real_jit
