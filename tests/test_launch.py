"""launch/: the printed and the executed commands of the TPU-pod and SLURM scripts.

gcloud, srun, sbatch, uv and the venv's python are replaced by small fakes
on PATH that log their arguments; the fake ``gcloud ... ssh`` runs the remote
command with bash in a fake home, so the install-once logic and the code copy
run for real. The expected pins and the marker hash are computed here from
requirements.txt.
"""
import hashlib
import os
import re
import stat
import subprocess
import sys

import pytest
from absl import flags
from absl.testing import flagsaver

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TPU = os.path.join(REPO, "launch", "tpu_pod.sh")
GPU = os.path.join(REPO, "launch", "multinode_gpu.sh")
MAIN_FLAGS = ["--config", "configs/k2b/source_b5.py", "--workdir", "gs://bucket/run",
              "--config.total_steps=5"]


def _jax_version():
  with open(os.path.join(REPO, "requirements.txt")) as f:
    return re.search(r"^jax==(\S+)$", f.read(), re.M).group(1)


def _requirements_hash():
  with open(os.path.join(REPO, "requirements.txt"), "rb") as f:
    return hashlib.sha256(f.read()).hexdigest()[:16]


def _write(path, text):
  with open(path, "w") as f:
    f.write(text)
  os.chmod(path, os.stat(path).st_mode | stat.S_IXUSR)


@pytest.fixture
def fakes(tmp_path):
  """A bin folder of logging fakes, a fake worker home and the environment to use them."""
  bin_dir, home, log = tmp_path / "bin", tmp_path / "home", tmp_path / "log"
  for d in (bin_dir, home, log):
    d.mkdir()
  # Each call appends its arguments, one per line, after a "--- <tool>" header.
  logger = 'printf -- "--- %s\\n" "$(basename "$0")" >> "$FAKE_LOG/calls"; ' \
           'printf "%s\\n" "$@" >> "$FAKE_LOG/calls"\n'
  _write(bin_dir / "gcloud", "#!/usr/bin/env bash\n" + logger + r'''
case "$4" in
  scp) tar tzf "$5" > "$FAKE_LOG/tarball_listing"; cp "$5" "$FAKE_HOME/${6#*:}" ;;
  ssh) for a; do case $a in --command=*) cmd=${a#--command=} ;; esac; done
       HOME=$FAKE_HOME bash -c "$cmd" ;;
esac
''')
  _write(tmp_path / "logged", "#!/usr/bin/env bash\n" + logger)  # logs as its own name
  # uv venv DIR makes DIR/bin/python, a fake that logs how it was called.
  _write(bin_dir / "uv", "#!/usr/bin/env bash\n" + logger + r'''
if [ "$1" = venv ]; then
  dir=${@: -1}; mkdir -p "$dir/bin"; cp "$FAKE_LOG/../logged" "$dir/bin/python"
fi
''')
  # python3 -m venv DIR makes DIR/bin/{pip,python} fakes (the GPU script's install).
  _write(bin_dir / "fakepython3", "#!/usr/bin/env bash\n" + logger + r'''
if [ "$2" = venv ]; then
  mkdir -p "$3/bin"
  for t in pip python; do cp "$FAKE_LOG/../logged" "$3/bin/$t"; done
fi
''')
  for tool in ("srun", "sbatch", "curl"):
    _write(bin_dir / tool, "#!/usr/bin/env bash\n" + logger)
  env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
  env.update(PATH=f"{bin_dir}:{os.environ['PATH']}", FAKE_HOME=str(home), FAKE_LOG=str(log),
             HOME=str(tmp_path / "launcher_home"))
  return dict(env=env, home=home, log=log, tmp=tmp_path)


def _calls(fakes):
  """[(tool, [args])] in call order."""
  path = fakes["log"] / "calls"
  if not path.exists():
    return []
  out = []
  for line in path.read_text().split("\n")[:-1]:
    if line.startswith("--- "):
      out.append((line[4:], []))
    else:
      out[-1][1].append(line)
  return out


def _sh(script, *args, env, check=True):
  proc = subprocess.run(["bash", script, *args], env=env, capture_output=True, text=True,
                        timeout=120)
  if check:
    assert proc.returncode == 0, proc.stderr
  return proc


def test_tpu_dry_run_prints_the_exact_commands_and_runs_nothing(fakes):
  out = _sh(TPU, "--dry-run", "--create", "v4-32", "--project", "proj", "my-tpu", "us-central2-b",
            "--", *MAIN_FLAGS, env=fakes["env"]).stdout
  assert _calls(fakes) == []
  lines = out.split("\n")
  assert lines[0] == ("gcloud compute tpus tpu-vm create my-tpu --zone=us-central2-b "
                      "--project=proj --accelerator-type=v4-32 --version=tpu-ubuntu2204-base")
  assert lines[1].startswith(f"{TPU} --list-files | tar -C {REPO} -czf ")
  assert lines[2].startswith("gcloud compute tpus tpu-vm scp ")
  assert lines[2].endswith("my-tpu:unlock_jax_code.tgz --zone=us-central2-b --project=proj "
                           "--worker=all")
  assert lines[3].startswith("gcloud compute tpus tpu-vm ssh my-tpu --zone=us-central2-b "
                             "--project=proj --worker=all '--command=")
  remote = out[out.index("--command="):]
  assert f'-r requirements.txt \\\n    "jax[tpu]=={_jax_version()}"' in remote
  assert 'MARK="$VENV/.unlock_jax-py3.11-$(sha256sum requirements.txt | cut -c1-16)"' in remote
  assert 'if [ -f "$MARK" ]; then' in remote
  assert "export UNLOCK_JAX_DISTRIBUTED=1" in remote
  assert ('exec "$VENV/bin/python" -m unlock_jax.main --config configs/k2b/source_b5.py '
          "--workdir gs://bucket/run --config.total_steps=5") in remote


def test_tpu_launch_copies_the_checkout_without_venv_and_installs_once(fakes):
  args = ["my-tpu", "europe-west4-a", "--", *MAIN_FLAGS, "--config.data.source.root=/d/a b"]
  first = _sh(TPU, *args, env=fakes["env"])
  assert "installing into" in first.stdout
  calls = _calls(fakes)
  assert [tool for tool, _ in calls] == ["gcloud", "gcloud", "uv", "uv", "python"]
  assert calls[0][1][:4] == ["compute", "tpus", "tpu-vm", "scp"]
  assert calls[1][1][:4] == ["compute", "tpus", "tpu-vm", "ssh"]
  assert "--worker=all" in calls[0][1] and "--worker=all" in calls[1][1]
  venv = str(fakes["home"] / "unlock_jax_venv")
  assert calls[2][1] == ["venv", "--quiet", "--python", "3.11", venv]
  assert calls[3][1] == ["pip", "install", "--quiet", "--python", f"{venv}/bin/python", "-r",
                         "requirements.txt", f"jax[tpu]=={_jax_version()}"]
  assert calls[4][1] == ["-m", "unlock_jax.main", *MAIN_FLAGS, "--config.data.source.root=/d/a b"]
  # What was sent: the checkout's sources, nothing ignored (no .venv), all of it extracted.
  sent = (fakes["log"] / "tarball_listing").read_text().split()
  assert "unlock_jax/main.py" in sent and "requirements.txt" in sent
  assert not [f for f in sent if f.startswith((".venv", ".git/")) or "__pycache__" in f]
  code = fakes["home"] / "unlock_jax"
  assert sorted(str(p.relative_to(code)) for p in code.rglob("*") if p.is_file()) == sorted(sent)
  assert (fakes["home"] / "unlock_jax_venv" / f".unlock_jax-py3.11-{_requirements_hash()}").exists()
  # Second launch: same requirements, so no install; the run starts again.
  second = _sh(TPU, *args, env=fakes["env"])
  assert "is up to date" in second.stdout
  assert [tool for tool, _ in _calls(fakes)[5:]] == ["gcloud", "gcloud", "python"]


def test_tpu_git_mode_clones_on_the_workers(fakes):
  out = _sh(TPU, "--dry-run", "--git", "https://example.com/u/unlock_jax.git@abc123", "t", "z",
            "--", *MAIN_FLAGS, env=fakes["env"]).stdout
  assert "scp" not in out and "--list-files" not in out
  assert "git clone -q https://example.com/u/unlock_jax.git $HOME/unlock_jax" in out
  assert "git -C $HOME/unlock_jax checkout -q --detach abc123" in out
  head = subprocess.run(["git", "-C", REPO, "rev-parse", "HEAD"], capture_output=True,
                        text=True).stdout.strip()
  out = _sh(TPU, "--dry-run", "--git", "https://example.com/u/unlock_jax.git", "t", "z",
            "--", *MAIN_FLAGS, env=fakes["env"]).stdout
  assert f"checkout -q --detach {head}" in out
  out = _sh(TPU, "--dry-run", "--git", "git@github.com:u/unlock_jax.git", "t", "z",
            "--", *MAIN_FLAGS, env=fakes["env"]).stdout
  assert "git clone -q git@github.com:u/unlock_jax.git $HOME/unlock_jax" in out
  assert f"checkout -q --detach {head}" in out


def test_tpu_list_files_excludes_ignored_outputs(fakes):
  files = _sh(TPU, "--list-files", env=fakes["env"]).stdout.split("\n")
  assert "launch/tpu_pod.sh" in files and "unlock_jax/fileio.py" in files
  assert not [f for f in files if f.startswith(".venv/") or f.endswith(".pyc")]


def test_gpu_sbatch_dry_run(fakes):
  venv = str(fakes["tmp"] / "venv")
  out = _sh(GPU, "--dry-run", "--nodes", "4", "--partition", "gpu", "--time", "24:00:00",
            "--venv", venv, "--", *MAIN_FLAGS, env=fakes["env"]).stdout
  assert _calls(fakes) == []
  srun = (f"srun --nodes=4 --ntasks-per-node=1 --gpus-per-node=8 --kill-on-bad-exit=1 "
          f"--chdir={REPO} env UNLOCK_JAX_DISTRIBUTED=1 JAX_LOCAL_DEVICE_IDS=0,1,2,3,4,5,6,7 "
          f"{venv}/bin/python -m unlock_jax.main --config configs/k2b/source_b5.py "
          "--workdir gs://bucket/run --config.total_steps=5")
  assert out.split("\n")[:-1] == [
      f"rm -rf {venv}",
      f"python3 -m venv {venv}",
      f"{venv}/bin/pip install --quiet -r {REPO}/requirements.txt 'jax[cuda12]=={_jax_version()}'",
      f"touch {venv}/.unlock_jax-{_requirements_hash()}",
      f"sbatch --job-name=unlock_jax --nodes=4 --ntasks-per-node=1 --gpus-per-node=8 "
      f"--output={REPO}/slurm-%j.out --partition=gpu --time=24:00:00 '--wrap={srun}'",
  ]


def test_gpu_inside_an_allocation_runs_srun_and_installs_once(fakes):
  env = dict(fakes["env"], SLURM_JOB_ID="77", SLURM_JOB_NUM_NODES="3")
  venv = str(fakes["tmp"] / "venv")
  args = ["--gpus-per-node", "2", "--venv", venv, "--python", "fakepython3", "--", *MAIN_FLAGS]
  _sh(GPU, *args, env=env)
  calls = _calls(fakes)
  assert calls == [
      ("fakepython3", ["-m", "venv", venv]),
      ("pip", ["install", "--quiet", "-r", f"{REPO}/requirements.txt",
               f"jax[cuda12]=={_jax_version()}"]),
      ("srun", ["--nodes=3", "--ntasks-per-node=1", "--gpus-per-node=2", "--kill-on-bad-exit=1",
                f"--chdir={REPO}", "env", "UNLOCK_JAX_DISTRIBUTED=1", "JAX_LOCAL_DEVICE_IDS=0,1",
                f"{venv}/bin/python", "-m", "unlock_jax.main", *MAIN_FLAGS]),
  ]
  second = _sh(GPU, *args, env=env)
  assert "is up to date" in second.stderr
  assert [tool for tool, _ in _calls(fakes)[3:]] == ["srun"]


def test_gpu_without_slurm_passes_explicit_coordinator_flags(fakes):
  venv = fakes["tmp"] / "venv"
  venv.mkdir()
  (venv / f".unlock_jax-{_requirements_hash()}").touch()
  out = _sh(GPU, "--dry-run", "--venv", str(venv), "--coordinator", "node0:1234",
            "--num-processes", "2", "--process-id", "1", "--", *MAIN_FLAGS,
            env=fakes["env"]).stdout
  assert out.split("\n")[:-1] == [
      f"cd {REPO}",
      f"{venv}/bin/python -m unlock_jax.main --config configs/k2b/source_b5.py --workdir "
      "gs://bucket/run --config.total_steps=5 --coordinator_address=node0:1234 "
      "--num_processes=2 --process_id=1"]
  missing = _sh(GPU, "--dry-run", "--venv", str(venv), "--coordinator", "node0:1234", "--",
                *MAIN_FLAGS, env=fakes["env"], check=False)
  assert missing.returncode != 0 and "--num-processes" in missing.stderr


@pytest.mark.parametrize("env_flag, argv, expected", [
    (None, [], None),
    ("1", [], (None, None, None)),
    (None, ["--coordinator_address=node0:1234", "--num_processes=2", "--process_id=1"],
     ("node0:1234", 2, 1)),
])
def test_main_distributed_initialisation(monkeypatch, tmp_path, env_flag, argv, expected):
  import jax  # pylint: disable=g-import-not-at-top
  from unlock_jax import main as main_lib  # pylint: disable=g-import-not-at-top
  # pylint: disable-next=g-import-not-at-top
  from unlock_jax.stages import evaluate, generate, train_source
  calls = []
  monkeypatch.setattr(jax.distributed, "initialize", lambda *a: calls.append(a))
  for module in (generate, train_source, evaluate):
    monkeypatch.setattr(module, "run", lambda config, workdir: None)
  if env_flag:
    monkeypatch.setenv("UNLOCK_JAX_DISTRIBUTED", env_flag)
  else:
    monkeypatch.delenv("UNLOCK_JAX_DISTRIBUTED", raising=False)
  with flagsaver.flagsaver():
    flags.FLAGS(["main", f"--config={REPO}/configs/synth/tiny.py",
                 f"--workdir={tmp_path / 'w'}", *argv])
    main_lib.main(["main"])
  assert calls == ([] if expected is None else [expected])



def test_two_processes_meet_through_the_explicit_coordinator_flags(tmp_path):
  """What multinode_gpu.sh --coordinator starts on each node, here as two local processes."""
  import portpicker  # pylint: disable=g-import-not-at-top
  port = portpicker.pick_unused_port()
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  env.pop("UNLOCK_JAX_DISTRIBUTED", None)
  procs = [subprocess.Popen(
      [sys.executable, "-m", "unlock_jax.main", "--config", "configs/synth/tiny.py",
       "--workdir", str(tmp_path), "--config.stage=generate",
       f"--coordinator_address=localhost:{port}", "--num_processes=2", f"--process_id={i}"],
      cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
      for i in range(2)]
  outs = [p.communicate(timeout=300)[0] for p in procs]
  for i, (p, out) in enumerate(zip(procs, outs)):
    assert p.returncode == 0, out[-3000:]
    assert f"process {i}/2" in out
  assert (tmp_path / "data" / "synthpass.json").exists()  # written once, by process 0
