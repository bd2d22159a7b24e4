"""benchmarks/device.sh, the accelerator check, runs end to end on CPU at tiny sizes.

Same code path as on a device (the B5 steps of benchmarks/realsize.py, timing,
FLOP and memory reports, projections), with the tiny model and without the
R-CNN branches so that it stays quick; the figures themselves are not checked.
"""
import os
import re
import subprocess
import sys

from tests.support import fast_compile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_device_script_runs_on_cpu_at_tiny_sizes():
  # One CPU device, as a one-accelerator machine has (the suite fakes four).
  # XLA's cheaper CPU code generation: compiling is most of this test, and the
  # figures it changes are not checked.
  flags = " ".join(f for f in os.environ.get("XLA_FLAGS", "").split()
                   if "host_platform_device_count" not in f)
  env = fast_compile.env(XLA_FLAGS=flags, PATH=os.path.dirname(sys.executable) + os.pathsep +
                         os.environ.get("PATH", ""))
  proc = subprocess.run(
      ["bash", os.path.join(ROOT, "benchmarks", "device.sh"), "--tiny", "--semantic-only",
       "--runs", "1", "--source-batch", "1", "--adapt-batch", "1", "--predict-batch", "1",
       "--dtype", "float32"],
      capture_output=True, text=True, timeout=900, cwd=ROOT, env=env, check=False)
  assert proc.returncode == 0, proc.stderr[-3000:]
  out = proc.stdout
  assert re.search(r"^device: .*model tiny semantic-only, float32, scan True", out, re.M), out
  for part in ("source", "adapt", "predict"):
    line = re.search(rf"^{part} .*compile +[\d.]+ s +step +[\d.]+ ms +[\d.]+ TFLOP +"
                     r"[\d.]+ TFLOP/s .*XLA peak [\d.]+ GB .*device peak so far", out, re.M)
    assert line, (part, out)
  assert re.search(r"projected 10000 adaptation iterations: [\d.]+ h", out), out
  assert re.search(r"[\d.]+ panoramas/s; projected 2000 BlendPASS panoramas: [\d.]+ min",
                   out), out
