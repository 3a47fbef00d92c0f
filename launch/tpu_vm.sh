#!/usr/bin/env bash
# Cloud TPU VM slice: create it, install genrm-jax on every worker, run training/eval on all
# workers at once, delete it. A thin wrapper over gcloud: every decision lives in Python and gin.
#
# Usage: launch/tpu_vm.sh [--dry-run] COMMAND [-- EXTRA_ARGS...]   (--dry-run may stand anywhere)
#   create    gcloud compute tpus tpu-vm create (ACCELERATOR_TYPE, RUNTIME_VERSION, SPOT)
#   install   copy this checkout (git archive of HEAD) or clone SOURCE to every worker, make a
#             Python 3.11 venv there (uv) and pip install jax[tpu] and the package
#   train     python -m genrm_jax.train --gin_file=... --workdir=WORKDIR on every worker
#   eval      python -m genrm_jax.eval EXTRA_ARGS on every worker
#   ssh       run EXTRA_ARGS as a command on every worker (e.g. tail a log)
#   delete    delete the slice
# EXTRA_ARGS are appended to the train/eval command line (e.g. --gin_bindings=...).
#
# Settings (environment variables):
#   TPU_NAME, ZONE           required
#   PROJECT                  optional (gcloud's default project otherwise)
#   ACCELERATOR_TYPE         default v5litepod-16 (v5e, 16 chips, 4 hosts)
#   RUNTIME_VERSION          default v2-alpha-tpuv5-lite
#   SPOT=1                   create a Spot slice (training resumes from its checkpoints)
#   SOURCE                   "local" (default: git archive of this checkout's HEAD) or a git URL
#   GIT_REF                  branch/tag/commit when SOURCE is a git URL (default main)
#   GIN_FILES                train: space-separated gin files, relative to the checkout root
#   WORKDIR                  train: checkpoints, logs, operative config (gs://bucket/run)
#   DRY_RUN=1                same as --dry-run: print the commands, run nothing (any value
#                            but empty or 0 counts as a dry run)
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=launch/common.sh
source "${HERE}/common.sh"
REPO="$(cd "${HERE}/.." && pwd)"

ACCELERATOR_TYPE="${ACCELERATOR_TYPE:-v5litepod-16}"
RUNTIME_VERSION="${RUNTIME_VERSION:-v2-alpha-tpuv5-lite}"
SPOT="${SPOT:-0}"
SOURCE="${SOURCE:-local}"
GIT_REF="${GIT_REF:-main}"
GIN_FILES="${GIN_FILES:-}"
WORKDIR="${WORKDIR:-}"
PROJECT="${PROJECT:-}"
# Pinned so every worker gets the same interpreter and JAX as the tests ran with.
PYTHON_VERSION="3.11"
UV_SPEC="uv==0.13.9"
REMOTE_DIR="genrm-jax"
REMOTE_VENV="genrm-venv"
TARBALL="${TMPDIR:-/tmp}/genrm-jax.tar.gz"

parse_command_line "$@"

require TPU_NAME ZONE
SCOPE=(--zone="${ZONE}")
if [[ -n "${PROJECT}" ]]; then
  SCOPE+=(--project="${PROJECT}")
fi

# Runs one shell command string on every worker of the slice at once.
on_all_workers() {
  run gcloud compute tpus tpu-vm ssh "${TPU_NAME}" "${SCOPE[@]}" --worker=all --command "$1"
}

# Run from the home directory, where ssh commands start: uv lands in ~/.local/bin.
setup_venv_cmd() {
  quote_cmd python3 -m pip install --user "${UV_SPEC}"
  printf ' && '
  quote_cmd .local/bin/uv venv --clear --python "${PYTHON_VERSION}" "${REMOTE_VENV}"
  printf ' && '
  quote_cmd .local/bin/uv pip install --python "${REMOTE_VENV}/bin/python" \
    "${JAX_TPU_SPEC}" "./${REMOTE_DIR}"
}

# The remote command that starts one genrm_jax module from the checkout root.
module_cmd() {
  local module="$1"
  shift
  printf 'cd %q && ' "${REMOTE_DIR}"
  quote_cmd "../${REMOTE_VENV}/bin/python" -m "${module}" "$@"
}

case "${COMMAND}" in
  create)
    args=(--accelerator-type="${ACCELERATOR_TYPE}" --version="${RUNTIME_VERSION}")
    if [[ "${SPOT}" == "1" ]]; then
      args+=(--spot)
    fi
    run gcloud compute tpus tpu-vm create "${TPU_NAME}" "${SCOPE[@]}" "${args[@]}"
    ;;
  install)
    if [[ "${SOURCE}" == "local" ]]; then
      run git -C "${REPO}" archive --format=tar.gz --prefix="${REMOTE_DIR}/" -o "${TARBALL}" HEAD
      run gcloud compute tpus tpu-vm scp "${TARBALL}" "${TPU_NAME}:${REMOTE_DIR}.tar.gz" \
        "${SCOPE[@]}" --worker=all
      fetch="$(quote_cmd rm -rf "${REMOTE_DIR}") && $(quote_cmd tar xzf "${REMOTE_DIR}.tar.gz")"
    else
      fetch="$(quote_cmd rm -rf "${REMOTE_DIR}")"
      fetch+=" && $(quote_cmd git clone "${SOURCE}" "${REMOTE_DIR}")"
      fetch+=" && $(quote_cmd git -C "${REMOTE_DIR}" checkout "${GIT_REF}")"
    fi
    on_all_workers "${fetch} && $(setup_venv_cmd)"
    ;;
  train)
    require GIN_FILES WORKDIR
    read -r -a gins <<< "${GIN_FILES}"
    args=()
    for g in "${gins[@]}"; do
      args+=(--gin_file="${g}")
    done
    args+=(--workdir="${WORKDIR}" --distributed=on)
    on_all_workers "$(module_cmd genrm_jax.train "${args[@]}" "${EXTRA_ARGS[@]}")"
    ;;
  eval)
    on_all_workers "$(module_cmd genrm_jax.eval --distributed=on "${EXTRA_ARGS[@]}")"
    ;;
  ssh)
    [[ ${#EXTRA_ARGS[@]} -gt 0 ]] || die "ssh needs a command after --"
    on_all_workers "$(quote_cmd "${EXTRA_ARGS[@]}")"
    ;;
  delete)
    run gcloud compute tpus tpu-vm delete "${TPU_NAME}" "${SCOPE[@]}" --quiet
    ;;
  *)
    die "unknown command '${COMMAND}'; expected create, install, train, eval, ssh or delete"
    ;;
esac
