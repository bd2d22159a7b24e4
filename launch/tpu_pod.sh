#!/usr/bin/env bash
# Runs one unlock_jax command on every worker of a Cloud TPU VM slice.
#
#   launch/tpu_pod.sh [options] NAME ZONE -- --config configs/<file>.py --workdir gs://BUCKET/run
#
# 1. (--create TYPE) creates the TPU VM NAME (e.g. TYPE v4-32, v5p-64, v5litepod-16).
# 2. Sends this checkout to every worker (the files git tracks plus untracked,
#    non-ignored ones: never .venv or other ignored outputs), or with --git URL
#    clones/fetches that repository there and checks out this checkout's commit.
# 3. Installs requirements.txt with the TPU jaxlib (jax[tpu] pinned to the jax
#    version of requirements.txt) into a venv on each worker, once: a marker
#    file named after the requirements' hash skips it on later launches.
# 4. Starts `python -m unlock_jax.main <flags>` on all workers with
#    UNLOCK_JAX_DISTRIBUTED=1; jax.distributed.initialize() finds the
#    coordinator from the TPU metadata. The workdir must be shared (gs://).
#
# Options:
#   --project P     gcloud project (default: gcloud's configured one)
#   --create TYPE   create the TPU VM first, with accelerator type TYPE
#   --version V     TPU VM runtime for --create (default tpu-ubuntu2204-base)
#   --spot          create a Spot VM
#   --git URL[@REF] clone URL on the workers instead of copying (REF: a commit, tag or
#                   branch without "/"; default this checkout's HEAD, so push first)
#   --venv DIR      venv on the workers, no spaces (default $HOME/unlock_jax_venv;
#                   $HOME is expanded there)
#   --detach        start in the background (nohup), log in $HOME/unlock_jax_logs/ on each worker
#   --dry-run       print the commands instead of running them
#   --list-files    print the files a copy would send, and exit
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PYTHON_VERSION=3.11
PROJECT="" CREATE="" VERSION=tpu-ubuntu2204-base SPOT=false GIT="" VENV='$HOME/unlock_jax_venv'
DETACH=false DRY_RUN=false LIST_FILES=false
POSITIONAL=()
while [ $# -gt 0 ]; do
  case "$1" in
    --project) PROJECT=$2; shift 2 ;;
    --create) CREATE=$2; shift 2 ;;
    --version) VERSION=$2; shift 2 ;;
    --spot) SPOT=true; shift ;;
    --git) GIT=$2; shift 2 ;;
    --venv) VENV=$2; shift 2 ;;
    --detach) DETACH=true; shift ;;
    --dry-run) DRY_RUN=true; shift ;;
    --list-files) LIST_FILES=true; shift ;;
    --) shift; break ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    -*) echo "tpu_pod.sh: unknown option $1 (--help lists them)" >&2; exit 2 ;;
    *) POSITIONAL+=("$1"); shift ;;
  esac
done

# The files a copy sends: tracked and untracked-but-not-ignored, that exist.
list_files() {
  git -C "$REPO" ls-files -z --cached --others --exclude-standard \
    | while IFS= read -r -d '' f; do [ -f "$REPO/$f" ] && printf '%s\n' "$f"; done | sort -u
}
if $LIST_FILES; then list_files; exit 0; fi

if [ ${#POSITIONAL[@]} -ne 2 ] || [ $# -eq 0 ]; then
  echo "usage: tpu_pod.sh [options] NAME ZONE -- <unlock_jax.main flags> (--help)" >&2
  exit 2
fi
NAME=${POSITIONAL[0]} ZONE=${POSITIONAL[1]}

. "$REPO/launch/common.sh"  # quote, run

JAX_VERSION=$(sed -n 's/^jax==\([^ ;#]*\).*/\1/p' "$REPO/requirements.txt")
[ -n "$JAX_VERSION" ] || { echo "tpu_pod.sh: no jax== pin in requirements.txt" >&2; exit 1; }
GCLOUD_OPTS=(--zone="$ZONE")
[ -n "$PROJECT" ] && GCLOUD_OPTS+=(--project="$PROJECT")

if [ -n "$CREATE" ]; then
  CREATE_CMD=(gcloud compute tpus tpu-vm create "$NAME" "${GCLOUD_OPTS[@]}"
              --accelerator-type="$CREATE" --version="$VERSION")
  $SPOT && CREATE_CMD+=(--spot)
  run "${CREATE_CMD[@]}"
fi

CODE='$HOME/unlock_jax'
if [ -z "$GIT" ]; then
  TARBALL=${TMPDIR:-/tmp}/unlock_jax_code.$$.tgz
  if $DRY_RUN; then
    echo "$(quote "$0") --list-files | tar -C $(quote "$REPO") -czf $(quote "$TARBALL") -T -"
  else
    trap 'rm -f "$TARBALL"' EXIT
    list_files | tar -C "$REPO" -czf "$TARBALL" -T -
  fi
  run gcloud compute tpus tpu-vm scp "$TARBALL" "$NAME:unlock_jax_code.tgz" "${GCLOUD_OPTS[@]}" \
    --worker=all
  FETCH="rm -rf $CODE.new && mkdir -p $CODE.new
tar xzf \$HOME/unlock_jax_code.tgz -C $CODE.new
rm -rf $CODE && mv $CODE.new $CODE"
else
  # URL@REF; an @ inside the URL (git@host:repo) is not a REF separator.
  URL=$GIT REF=""
  if [[ $GIT == *@* && ${GIT##*@} != */* && ${GIT##*@} != *:* ]]; then
    URL=${GIT%@*} REF=${GIT##*@}
  fi
  [ -n "$REF" ] || REF=$(git -C "$REPO" rev-parse HEAD)
  FETCH="if [ -d $CODE/.git ]; then git -C $CODE fetch -q origin
else rm -rf $CODE && git clone -q $(quote "$URL") $CODE; fi
git -C $CODE checkout -q --detach $(quote "$REF")"
fi

ARGS=$(quote "$@")
if $DETACH; then
  START="mkdir -p \$HOME/unlock_jax_logs
LOG=\$HOME/unlock_jax_logs/\$(date +%Y%m%d-%H%M%S).log
nohup \"\$VENV/bin/python\" -m unlock_jax.main $ARGS > \"\$LOG\" 2>&1 < /dev/null &
echo \"unlock_jax: started on \$(hostname), log \$LOG\""
else
  START="exec \"\$VENV/bin/python\" -m unlock_jax.main $ARGS"
fi
REMOTE="set -euo pipefail
$FETCH
cd $CODE
VENV=$VENV
MARK=\"\$VENV/.unlock_jax-py$PYTHON_VERSION-\$(sha256sum requirements.txt | cut -c1-16)\"
if [ -f \"\$MARK\" ]; then
  echo \"unlock_jax: \$VENV is up to date\"
else
  echo \"unlock_jax: installing into \$VENV\"
  rm -rf \"\$VENV\"
  # uv brings its own Python $PYTHON_VERSION where the image has an older one.
  export PATH=\"\$HOME/.local/bin:\$PATH\"
  command -v uv > /dev/null || curl -LsSf https://astral.sh/uv/install.sh | sh
  uv venv --quiet --python $PYTHON_VERSION \"\$VENV\"
  uv pip install --quiet --python \"\$VENV/bin/python\" -r requirements.txt \\
    \"jax[tpu]==$JAX_VERSION\"
  touch \"\$MARK\"
fi
export UNLOCK_JAX_DISTRIBUTED=1
$START"
run gcloud compute tpus tpu-vm ssh "$NAME" "${GCLOUD_OPTS[@]}" --worker=all --command="$REMOTE"
