# shellcheck shell=bash
# Shared by launch/*.sh: dry-run aware command runner. Source it; do not run it.

# DRY_RUN=1 (or --dry-run anywhere on the command line, taken by parse_command_line) prints every
# command instead of running it. Any value but empty or 0 counts: a typo must not launch a slice.
DRY_RUN="${DRY_RUN:-0}"
if [[ "${DRY_RUN}" != "0" ]]; then
  DRY_RUN=1
fi

# Quotes one word for a POSIX shell: bare when safe, else in single quotes, or in double quotes
# when it holds single quotes but nothing double quotes would expand.
quote_word() {
  local safe='^[A-Za-z0-9_./:=,@%+-]+$' dq_safe='^[^"$`\\!]*$'
  if [[ "$1" =~ ${safe} ]]; then
    printf '%s' "$1"
  elif [[ "$1" != *"'"* ]]; then
    printf "'%s'" "$1"
  elif [[ "$1" =~ ${dq_safe} ]]; then
    printf '"%s"' "$1"
  else
    printf "'%s'" "${1//\'/\'\\\'\'}"
  fi
}

# Joins a command into one shell-quoted line (no newline), e.g. for ssh --command.
quote_cmd() {
  local sep="" arg
  for arg in "$@"; do
    printf '%s' "${sep}"
    quote_word "${arg}"
    sep=" "
  done
}

# Prints a command as one line that can be pasted back into a shell.
print_cmd() {
  quote_cmd "$@"
  printf '\n'
}

# Runs a command, or only prints it when DRY_RUN=1.
run() {
  if [[ "${DRY_RUN}" == "1" ]]; then
    print_cmd "$@"
  else
    print_cmd "$@" >&2
    "$@"
  fi
}

die() {
  printf 'error: %s\n' "$*" >&2
  exit 2
}

# Fails with the variable's name when a required setting is empty.
require() {
  local name
  for name in "$@"; do
    [[ -n "${!name:-}" ]] || die "${name} is not set (see the usage at the top of the script)"
  done
}

# The JAX build every TPU worker installs: the version the test suite ran with.
# shellcheck disable=SC2034  # used by the scripts that source this file
JAX_TPU_SPEC="jax[tpu]==0.10.2"

# Sets DRY_RUN, COMMAND and EXTRA_ARGS from "COMMAND [--] ARGS...". --dry-run is taken from any
# position (before or after the command, before or after "--") and never forwarded: a flag the user
# meant for the launcher must not reach a cloud tool or the remote trainer as a real run.
parse_command_line() {
  local arg rest=()
  for arg in "$@"; do
    if [[ "${arg}" == "--dry-run" ]]; then
      DRY_RUN=1
    else
      rest+=("${arg}")
    fi
  done
  set -- "${rest[@]+"${rest[@]}"}"
  COMMAND="${1:-}"
  [[ -n "${COMMAND}" ]] || die "no command; see the usage at the top of ${0}"
  [[ "${COMMAND}" != -* ]] || die "unknown option '${COMMAND}' before the command; see the usage at the top of ${0}"
  shift
  if [[ "${1:-}" == "--" ]]; then
    shift
  fi
  # shellcheck disable=SC2034
  EXTRA_ARGS=("$@")
}
