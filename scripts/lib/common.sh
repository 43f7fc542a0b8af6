# Shared by the entry points in scripts/: repository paths, the virtualenv, failure messages.
# shellcheck shell=bash

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
VENV=${VENV:-$ROOT/.venv}
PY=$VENV/bin/python
export PATH="$ROOT/.tools/bin:$PATH"

die() { echo "$(basename "$0"): $*" >&2; exit 1; }
say() { echo "$(basename "$0"): $*" >&2; }

# ensure_venv LOCKFILE...: a virtualenv with exactly these hash-pinned locks installed.
# A stamp per lock set keeps the second run instant.
ensure_venv() {
  local python=${PYTHON:-python3}
  command -v "$python" >/dev/null || die "python3 not found: install Python 3.11+ (apt-get install python3 python3-venv)"
  "$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))' || die "Python 3.11+ is required ($("$python" --version 2>&1) found)"
  local locks=() lock
  for lock in "$@"; do locks+=("$ROOT/$lock"); done
  local want stamp
  want=$(cat "${locks[@]}" | sha256sum | cut -c1-16)
  stamp="$VENV/.installed-$want"
  [[ -f $stamp && -x $PY ]] && return 0
  if [[ ! -x $PY ]]; then
    say "creating virtualenv $VENV"
    "$python" -m venv "$VENV" || die "could not create a virtualenv (apt-get install python3-venv)"
  fi
  say "installing pinned Python dependencies (${*})"
  local args=() 
  for lock in "${locks[@]}"; do args+=(-r "$lock"); done
  # The locks are complete, hash-pinned closures: --no-deps installs exactly them.
  "$PY" -m pip install --quiet --disable-pip-version-check --require-hashes --no-deps "${args[@]}" || die "pip install failed"
  touch "$stamp"
}

# Runs the project's Python package (scripts/msops) with the venv's interpreter.
msops() { PYTHONPATH="$ROOT/scripts${PYTHONPATH:+:$PYTHONPATH}" "$PY" -m msops "$@"; }
