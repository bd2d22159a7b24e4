"""Test set-up: 4 fake CPU devices, CPU only, parsed absl flags for grain workers."""
import os
import tempfile

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=4")
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
