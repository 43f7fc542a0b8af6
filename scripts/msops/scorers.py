"""Third-party scorers over rendered manifests: kube-score and checkov, judged against scorers/<tool>.yaml.

Each tool reports what it finds; an entry of the tool's file under scorers/ may excuse a finding, with
its reason and a scope narrow enough that the excuse cannot spread. What no entry covers is a problem,
and so is an entry that covers nothing (on a complete run: every environment and values file).
"""

from __future__ import annotations

import fnmatch
import json
import os
import subprocess
import tempfile
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from . import OpsError, tools
from .tools import ROOT

KUBE_SCORE = "kube-score"
CHECKOV = "checkov"
TOOLS = (KUBE_SCORE, CHECKOV)
# The oldest Kubernetes the chart supports (Chart.yaml kubeVersion): kube-score's checks follow it.
KUBERNETES_VERSION = "v1.30"
# kube-score's grades (scorecard.Grade): 10 is "all OK", anything lower is a finding.
ALL_OK = 10
IGNORE_KEYS = {"check", "reason", "kinds", "labels", "renderings", "digestPinned"}


@dataclass(frozen=True)
class Rendering:
    """One rendered release or values file: ``where`` names it in every message (`prod/diabetes`, `chart/ci/x.yaml`)."""

    where: str
    manifest: str

    def objects(self) -> list[dict[str, Any]]:
        return [doc for doc in yaml.safe_load_all(self.manifest) if isinstance(doc, dict)]


@dataclass(frozen=True)
class Finding:
    tool: str
    where: str
    kind: str
    name: str
    check: str
    message: str
    container: str = ""

    def __str__(self) -> str:
        where = f"{self.kind} {self.name}" + (f" (container {self.container})" if self.container else "")
        return f"{self.where}: {where}: {self.tool} {self.check}: {self.message}"


@dataclass(frozen=True)
class Ignore:
    """One excused check, and everything that must hold for a finding to be excused by it."""

    check: str
    reason: str
    kinds: tuple[str, ...] = ()
    labels: tuple[tuple[str, str], ...] = ()
    renderings: tuple[str, ...] = ()
    digest_pinned: bool = False

    def describe(self) -> str:
        scope = [f"kinds={','.join(self.kinds)}"] if self.kinds else []
        scope += [f"labels={k}={v}" for k, v in self.labels]
        scope += [f"renderings={','.join(self.renderings)}"] if self.renderings else []
        scope += ["digestPinned"] if self.digest_pinned else []
        return f"{self.check} ({'; '.join(scope) or 'everywhere'})"

    def covers(self, finding: Finding, objects: Sequence[Mapping[str, Any]]) -> bool:
        if finding.check != self.check:
            return False
        if self.kinds and finding.kind not in self.kinds:
            return False
        if self.renderings and not any(fnmatch.fnmatchcase(finding.where, p) for p in self.renderings):
            return False
        if not self.labels and not self.digest_pinned:
            return True
        obj = _find(objects, finding.kind, finding.name)
        if obj is None:
            return False
        labels = obj.get("metadata", {}).get("labels") or {}
        if any(labels.get(key) != value for key, value in self.labels):
            return False
        return not self.digest_pinned or _digest_pinned(obj, finding.container)


@dataclass
class Score:
    """One tool's verdict over a set of renderings."""

    tool: str
    passed: int = 0
    findings: list[Finding] = field(default_factory=list)
    excused: dict[Finding, Ignore] = field(default_factory=dict)
    unused: list[Ignore] = field(default_factory=list)

    @property
    def unjustified(self) -> list[Finding]:
        return [f for f in self.findings if f not in self.excused]

    def summary(self, where: str) -> str:
        """One line for a rendering: its unexcused findings (none, when it passes) and its excused ones."""
        mine = [f for f in self.findings if f.where == where]
        excused = sum(f in self.excused for f in mine)
        return f"{self.tool}: {len(mine) - excused} finding(s), {excused} excused by scorers/{self.tool}.yaml"


def load_ignores(tool: str, root: Path = ROOT) -> list[Ignore]:
    """The entries of scorers/<tool>.yaml; OpsError naming the file and entry when one is malformed."""
    path = root / "scorers" / f"{tool}.yaml"
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise OpsError(f"cannot read {path}: {exc}") from None
    entries = data.get("ignore") if isinstance(data, dict) else None
    if not isinstance(entries, list):
        raise OpsError(f"{path}: expected a top-level 'ignore:' list")
    return [_ignore(entry, f"{path.relative_to(root)} entry {n}") for n, entry in enumerate(entries, 1)]


def _ignore(entry: object, label: str) -> Ignore:
    if not isinstance(entry, dict):
        raise OpsError(f"{label}: expected a mapping")
    unknown = set(entry) - IGNORE_KEYS
    if unknown:
        raise OpsError(f"{label}: unknown key(s) {', '.join(sorted(map(str, unknown)))}")
    check, reason = entry.get("check"), entry.get("reason")
    if not isinstance(check, str) or not check:
        raise OpsError(f"{label}: 'check' must name the check")
    if not isinstance(reason, str) or len(reason.split()) < 5:
        raise OpsError(f"{label} ({check}): 'reason' must say why the rule is wrong here")
    labels = entry.get("labels") or {}
    if not isinstance(labels, dict):
        raise OpsError(f"{label} ({check}): 'labels' must be a mapping")
    digest_pinned = entry.get("digestPinned", False)
    if not isinstance(digest_pinned, bool):
        raise OpsError(f"{label} ({check}): 'digestPinned' must be true or false")
    return Ignore(
        check=check,
        reason=" ".join(reason.split()),
        kinds=_strings(entry.get("kinds"), f"{label} ({check}): 'kinds'"),
        labels=tuple(sorted((str(k), str(v)) for k, v in labels.items())),
        renderings=_strings(entry.get("renderings"), f"{label} ({check}): 'renderings'"),
        digest_pinned=digest_pinned,
    )


def _strings(value: object, label: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise OpsError(f"{label} must be a list of strings")
    return tuple(value)


def score(
    renderings: Sequence[Rendering], tools_to_run: Iterable[str] = TOOLS, root: Path = ROOT, complete: bool = True
) -> list[Score]:
    """Run each tool over every rendering; ``complete`` (every environment and values file) reports unused ignores."""
    scores = []
    with tempfile.TemporaryDirectory(prefix="msops-scorers-") as scratch:
        files = _write(renderings, Path(scratch))
        for tool in tools_to_run:
            findings, passed = _kube_score(files) if tool == KUBE_SCORE else _checkov(files)
            scores.append(_judge(tool, findings, passed, renderings, load_ignores(tool, root), complete))
    return scores


def _write(renderings: Sequence[Rendering], scratch: Path) -> dict[Path, Rendering]:
    """One file per rendering, named by its position: `where` may hold slashes."""
    files = {}
    for n, rendering in enumerate(renderings):
        path = scratch / f"{n:03d}.yaml"
        path.write_text(rendering.manifest)
        files[path] = rendering
    return files


def _judge(
    tool: str,
    findings: list[Finding],
    passed: int,
    renderings: Sequence[Rendering],
    ignores: list[Ignore],
    complete: bool,
) -> Score:
    objects = {r.where: r.objects() for r in renderings}
    result = Score(tool, passed, findings)
    used: set[Ignore] = set()
    for finding in findings:
        for ignore in ignores:
            if ignore.covers(finding, objects[finding.where]):
                result.excused[finding] = ignore
                used.add(ignore)
                break
    if complete:
        result.unused = [i for i in ignores if i not in used]
    return result


def _run(args: list[str], env: Mapping[str, str] | None = None) -> str:
    """Run a scorer; exit 1 means "found something" and is not an error (its report says what)."""
    try:
        done = subprocess.run(args, capture_output=True, text=True, check=False, env=env, cwd=ROOT)
    except OSError as exc:
        raise OpsError(f"could not run {args[0]}: {exc}") from None
    if done.returncode not in (0, 1) or not done.stdout.strip():
        message = (done.stderr or done.stdout).strip().splitlines()[-5:]
        raise OpsError(f"{Path(args[0]).name} failed (exit {done.returncode}): {' / '.join(message)}")
    return done.stdout


def _kube_score(files: Mapping[Path, Rendering]) -> tuple[list[Finding], int]:
    """kube-score per rendering (it matches NetworkPolicies, PDBs and Services to pods within its input)."""
    binary = tools.find(KUBE_SCORE)
    findings, passed = [], 0
    for path, rendering in files.items():
        args = [binary, "score", str(path), "--output-format", "json", "--kubernetes-version", KUBERNETES_VERSION]
        # Only scorers/kube-score.yaml excuses a finding, never an annotation in the rendered objects.
        args += ["--disable-ignore-checks-annotations", "--disable-optional-checks-annotations"]
        for obj in _json_list(_run(args), "kube-score"):
            kind = str(obj.get("type_meta", {}).get("kind", ""))
            name = str(obj.get("object_meta", {}).get("name", ""))
            for check in obj.get("checks") or []:
                if check.get("skipped"):
                    continue
                if check.get("grade") == ALL_OK:
                    passed += 1
                    continue
                check_id = str(check.get("check", {}).get("id", ""))
                comments = check.get("comments") or [{"summary": check.get("check", {}).get("name", "")}]
                for comment in comments:
                    container = str(comment.get("path") or "")
                    message = str(comment.get("summary", ""))
                    findings.append(Finding(KUBE_SCORE, rendering.where, kind, name, check_id, message, container))
    return findings, passed


def _checkov(files: Mapping[Path, Rendering]) -> tuple[list[Finding], int]:
    """checkov over every rendering, in as few runs as is sound (each run costs seconds of start-up)."""
    findings, passed = [], 0
    for group in _separate(files):
        found, count = _checkov_run(group, files)
        findings += found
        passed += count
    return findings, passed


def _separate(files: Mapping[Path, Rendering]) -> list[list[Path]]:
    """Groups of renderings no NetworkPolicy of which selects another's pods. checkov's graph checks
    (CKV2_K8S_6: a pod with no NetworkPolicy) match policies to pods by labels, across namespaces: every
    environment names its releases alike, so dev's policy would otherwise vouch for prod's pods."""
    groups: list[list[Path]] = []
    for path, rendering in files.items():
        objects = rendering.objects()
        for group in groups:
            if not any(_cross(objects, files[other].objects()) for other in group):
                group.append(path)
                break
        else:
            groups.append([path])
    return groups


def _cross(a: Sequence[Mapping[str, Any]], b: Sequence[Mapping[str, Any]]) -> bool:
    """Whether a NetworkPolicy of either set of objects selects a pod of the other."""
    pairs = [*_selectors_and_pods(a, b), *_selectors_and_pods(b, a)]
    return any(_selects(selector, labels) for selector, labels in pairs)


def _selectors_and_pods(
    policies: Sequence[Mapping[str, Any]], workloads: Sequence[Mapping[str, Any]]
) -> Iterator[tuple[Mapping[str, Any], Mapping[str, Any]]]:
    """(a NetworkPolicy's podSelector, a pod's labels) for every policy of one set and pod of the other."""
    for policy in policies:
        if policy.get("kind") != "NetworkPolicy":
            continue
        for obj in workloads:
            if not _containers_of(obj):
                continue
            spec = obj.get("spec") or {}
            meta = spec.get("template", {}).get("metadata", {}) if "template" in spec else obj.get("metadata", {})
            yield policy.get("spec", {}).get("podSelector") or {}, meta.get("labels") or {}


def _selects(selector: Mapping[str, Any], labels: Mapping[str, Any]) -> bool:
    """Label selector semantics, erring towards "selects" (matchExpressions are not evaluated)."""
    if selector.get("matchExpressions"):
        return True
    return all(labels.get(key) == value for key, value in (selector.get("matchLabels") or {}).items())


def _checkov_run(paths: Sequence[Path], files: Mapping[Path, Rendering]) -> tuple[list[Finding], int]:
    # Offline: --skip-download and BC_SKIP_MAPPING keep it from fetching guidelines from Prisma Cloud.
    env = {**os.environ, "BC_SKIP_MAPPING": "TRUE", "LOG_LEVEL": "ERROR"}
    args = [tools.find(CHECKOV), "--framework", "kubernetes", "--output", "json", "--skip-download", "--quiet"]
    for path in paths:
        args += ["--file", str(path)]
    output = _run(args, env)
    reports = json.loads(output) if output.strip().startswith(("[", "{")) else None
    if isinstance(reports, dict):
        reports = [reports]
    if not isinstance(reports, list):
        raise OpsError(f"checkov printed no JSON report: {output.strip()[:200]}")
    by_name = {path.name: rendering for path, rendering in files.items()}
    findings, passed = [], 0
    for report in reports:
        summary = report.get("summary", {})
        if summary.get("parsing_errors"):
            raise OpsError(f"checkov could not parse {summary['parsing_errors']} rendered file(s)")
        passed += int(summary.get("passed", 0))
        for failed in report.get("results", {}).get("failed_checks", []):
            rendering = by_name.get(Path(str(failed.get("file_path", ""))).name)
            if rendering is None:
                raise OpsError(f"checkov reported a file it was not given: {failed.get('file_path')}")
            kind, _namespace, name = _checkov_resource(str(failed.get("resource", "")))
            findings.append(
                Finding(CHECKOV, rendering.where, kind, name, str(failed["check_id"]), str(failed.get("check_name")))
            )
    return findings, passed


def _checkov_resource(resource: str) -> tuple[str, str, str]:
    """checkov names a Kubernetes object `Kind.namespace.name` (a name may hold dots, a kind or namespace not)."""
    parts = resource.split(".", 2)
    if len(parts) != 3:
        raise OpsError(f"checkov named an object '{resource}', expected Kind.namespace.name")
    return parts[0], parts[1], parts[2]


def _json_list(text: str, tool: str) -> list[dict[str, Any]]:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise OpsError(f"{tool} printed no JSON report: {exc}") from None
    if not isinstance(data, list):
        raise OpsError(f"{tool}: expected a JSON list of objects")
    return [item for item in data if isinstance(item, dict)]


def _find(objects: Sequence[Mapping[str, Any]], kind: str, name: str) -> Mapping[str, Any] | None:
    for obj in objects:
        if obj.get("kind") == kind and obj.get("metadata", {}).get("name") == name:
            return obj
    return None


def _containers(obj: Mapping[str, Any]) -> Iterator[Mapping[str, Any]]:
    spec = obj.get("spec") or {}
    pod = spec.get("template", {}).get("spec", {}) if "template" in spec else spec
    for key in ("initContainers", "containers"):
        yield from pod.get(key) or []


def _containers_of(obj: Mapping[str, Any]) -> bool:
    """Whether ``obj`` runs pods (a Pod, or a workload with a pod template)."""
    return any(True for _ in _containers(obj))


def _digest_pinned(obj: Mapping[str, Any], container: str) -> bool:
    """The named container (or, unnamed, every container) of ``obj`` runs an image referenced by digest."""
    images = [str(c.get("image", "")) for c in _containers(obj) if not container or c.get("name") == container]
    return bool(images) and all("@sha256:" in image for image in images)
