# Shared by tpu_pod.sh and multinode_gpu.sh (sourced; expects DRY_RUN=true|false).

# Shell words, quoted only where needed, so printed commands can be pasted.
quote() {
  local out=() a
  for a in "$@"; do
    if [[ $a =~ ^[A-Za-z0-9_./:=@%+,-]+$ ]]; then out+=("$a"); else out+=("'${a//\'/\'\\\'\'}'"); fi
  done
  echo "${out[*]}"
}
run() { if $DRY_RUN; then quote "$@"; else "$@"; fi; }
