#!/usr/bin/env bash
# GKE TPU launch through xpk (pip install xpk==1.16.0): a cluster of TPU slices, and training or
# evaluation submitted as a JobSet workload that runs on every host of every slice.
#
# Usage: launch/xpk.sh [--dry-run] COMMAND [-- EXTRA_ARGS...]   (--dry-run may stand anywhere)
#   cluster-create   xpk cluster create (TPU_TYPE x NUM_SLICES; SPOT=1 for Spot capacity)
#   train            xpk workload create ... --command "python -m genrm_jax.train ..."
#   eval             xpk workload create ... --command "python -m genrm_jax.eval EXTRA_ARGS"
#   workload-delete  xpk workload delete WORKLOAD
#   cluster-delete   xpk cluster delete
# EXTRA_ARGS are appended to the train/eval command line.
#
# Settings (environment variables):
#   CLUSTER, ZONE, PROJECT   required
#   TPU_TYPE                 default v5litepod-16
#   NUM_SLICES               default 1
#   WORKLOAD                 workload name (default genrm-USER-train / -eval)
#   DOCKER_IMAGE             an image with genrm-jax and jax[tpu] installed; when empty, xpk builds
#                            one from BASE_IMAGE plus this checkout and pip installs it at start
#   BASE_IMAGE               default python:3.11-slim
#   GIN_FILES, WORKDIR       train: space-separated gin files and the gs:// workdir
#   DRY_RUN=1                same as --dry-run: print the commands, run nothing (any value
#                            but empty or 0 counts as a dry run)
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=launch/common.sh
source "${HERE}/common.sh"
REPO="$(cd "${HERE}/.." && pwd)"

TPU_TYPE="${TPU_TYPE:-v5litepod-16}"
NUM_SLICES="${NUM_SLICES:-1}"
SPOT="${SPOT:-0}"
DOCKER_IMAGE="${DOCKER_IMAGE:-}"
BASE_IMAGE="${BASE_IMAGE:-python:3.11-slim}"
GIN_FILES="${GIN_FILES:-}"
WORKDIR="${WORKDIR:-}"

parse_command_line "$@"

require CLUSTER ZONE PROJECT
SCOPE=(--cluster="${CLUSTER}" --zone="${ZONE}" --project="${PROJECT}")

# Submits one command string as a workload on every host of NUM_SLICES slices.
submit() {
  local name="$1" cmd="$2" image_args
  if [[ -n "${DOCKER_IMAGE}" ]]; then
    image_args=(--docker-image="${DOCKER_IMAGE}")
  else
    image_args=(--base-docker-image="${BASE_IMAGE}" --script-dir="${REPO}")
    cmd="$(quote_cmd python3 -m pip install "${JAX_TPU_SPEC}" .) && ${cmd}"
  fi
  run xpk workload create "${SCOPE[@]}" --workload="${name}" --tpu-type="${TPU_TYPE}" \
    --num-slices="${NUM_SLICES}" "${image_args[@]}" --command "${cmd}"
}

case "${COMMAND}" in
  cluster-create)
    args=(--tpu-type="${TPU_TYPE}" --num-slices="${NUM_SLICES}")
    if [[ "${SPOT}" == "1" ]]; then
      args+=(--spot)
    fi
    run xpk cluster create "${SCOPE[@]}" "${args[@]}"
    ;;
  train)
    require GIN_FILES WORKDIR
    read -r -a gins <<< "${GIN_FILES}"
    args=()
    for g in "${gins[@]}"; do
      args+=(--gin_file="${g}")
    done
    args+=(--workdir="${WORKDIR}" --distributed=on)
    submit "${WORKLOAD:-genrm-${USER:-me}-train}" \
      "$(quote_cmd python3 -m genrm_jax.train "${args[@]}" "${EXTRA_ARGS[@]}")"
    ;;
  eval)
    submit "${WORKLOAD:-genrm-${USER:-me}-eval}" \
      "$(quote_cmd python3 -m genrm_jax.eval --distributed=on "${EXTRA_ARGS[@]}")"
    ;;
  workload-delete)
    require WORKLOAD
    run xpk workload delete "${SCOPE[@]}" --workload="${WORKLOAD}"
    ;;
  cluster-delete)
    run xpk cluster delete "${SCOPE[@]}"
    ;;
  *)
    die "unknown command '${COMMAND}'; expected cluster-create, train, eval, workload-delete" \
      "or cluster-delete"
    ;;
esac
