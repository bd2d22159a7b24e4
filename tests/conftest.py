"""Test set-up: 4 fake CPU devices, CPU only, parsed absl flags for grain workers."""
import os
import tempfile

from tests.support import fast_compile

# XLA's cheaper CPU code generation (tests/support/fast_compile): compiling is
# most of the suite's time, and every run a test compares with another (in
# this process or a subprocess, which inherits the environment) gets the same
# flags. test_benchmark_config + test_adapt_step, cold cache: user CPU 362 s -> 211 s.
# Added to a caller's XLA_FLAGS (its own value of a flag wins), so an exported
# XLA_FLAGS does not silently drop the 4 devices the sharding tests need.
os.environ["XLA_FLAGS"] = fast_compile.merge(
    os.environ.get("XLA_FLAGS", ""),
    ("--xla_force_host_platform_device_count=4",) + fast_compile.FLAGS)
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
# One persistent XLA cache for the session and its subprocesses: identical
# programs (the resume test's runs, repeated tiny models) compile once.
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR",
                      os.path.join(tempfile.gettempdir(), "unlock_jax_test_xla_cache"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")

from absl import flags  # noqa: E402

flags.FLAGS.mark_as_parsed()  # grain worker processes (google/grain#1355)
