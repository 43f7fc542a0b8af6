# Shared by the entry points in scripts/: repository paths, the virtualenv, failure messages.
# shellcheck shell=bash

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
VENV=${VENV:-$ROOT/.venv}
PY=$VENV/bin/python
export PATH="$ROOT/.tools/bin:$PATH"

# usage: print the calling script's opening comment block (its help), without the leading "# ".
# The whole block, however long it grows: no line numbers to keep in step with it.
usage() { awk 'NR == 1 { next } /^#/ { sub(/^# ?/, ""); print; next } { exit }' "$0"; }
die() { echo "$(basename "$0"): $*" >&2; exit 1; }
say() { echo "$(basename "$0"): $*" >&2; }

# ensure_venv LOCKFILE...: a virtualenv with exactly these hash-pinned locks installed, and on top the
# project's own packages, editable, so the console scripts below run the checkout's code: with the
# image lock the model server (image/pyproject.toml), with the dev lock the tools, msops and bench
# (pyproject.toml). A stamp per lock and package set keeps the second run instant.
ensure_venv() {
  local python=${PYTHON:-python3}
  command -v "$python" >/dev/null || die "python3 not found: install Python 3.11+ (apt-get install python3 python3-venv)"
  "$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))' || die "Python 3.11+ is required ($("$python" --version 2>&1) found)"
  local locks=() projects=() lock
  for lock in "$@"; do
    locks+=("$ROOT/$lock")
    case $lock in
      image/requirements.txt) projects+=("$ROOT/image") ;;
      requirements/dev.txt) projects+=("$ROOT") ;;
    esac
  done
  # The setuptools that builds them (Python 3.11's bundled one is too old to build a wheel alone).
  ((${#projects[@]})) && locks+=("$ROOT/image/build-requirements.txt")
  local want stamp project
  want=$(cat "${locks[@]}" "${projects[@]/%//pyproject.toml}" | sha256sum | cut -c1-16)
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
  # The project's own packages: nothing fetched (their dependencies are the locks), built by the
  # venv's setuptools. Its chatter (an editable-install notice) shows only if the install fails.
  args=()
  for project in "${projects[@]}"; do args+=(-e "$project"); done
  if ((${#args[@]})); then
    local out
    out=$("$PY" -m pip install --quiet --disable-pip-version-check --no-deps --no-index --no-build-isolation "${args[@]}" 2>&1) \
      || { echo "$out" >&2; die "installing the project's own packages (${projects[*]}) failed"; }
  fi
  touch "$stamp"
}

# ensure_system_packages: the Debian packages the slow tests run: the load generator (wrk), the image
# build (podman, buildah, debootstrap), the e2e suite's git server and socket checks (git, iproute2) and
# the real node (containerd, runc, CNI plugins, iptables, conntrack, ipset). Installed with apt-get when
# this runs as root; otherwise named, and the tests that need them skip (fail under CI=true).
ensure_system_packages() {
  local need=() pkg
  for pkg in wrk podman buildah debootstrap git containerd runc iptables conntrack ipset; do
    command -v "$pkg" >/dev/null || need+=("$pkg")
  done
  command -v ss >/dev/null || need+=(iproute2)
  [[ -x /usr/lib/cni/bridge ]] || need+=(containernetworking-plugins)
  ((${#need[@]})) || return 0
  if [[ $(id -u) == 0 ]] && command -v apt-get >/dev/null; then
    say "apt-get install ${need[*]}"
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null; } \
      || die "apt-get install ${need[*]} failed"
  else
    say "not installed: ${need[*]} (as root: apt-get install ${need[*]}); the slow tests running them will skip"
  fi
}

# Runs the project's ops tool (scripts/msops, installed as the msops console script).
msops() { "$VENV/bin/msops" "$@"; }
