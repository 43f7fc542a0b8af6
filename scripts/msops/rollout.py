"""What a canary rollout (the chart's rollout.enabled) decided, and git put back in line with what runs.

``status`` reads the release's Argo Rollout, its latest AnalysisRun and the analysis Job's log (the judge's
figures: model_server.judge). ``revert`` is for a rollout the judgement aborted: the stable version kept
serving, but the environment's values file still names the version that failed, so the next sync would
try it again and git no longer says what runs. It writes that file back to what it was before the commit
that last changed it (the promotion), after checking the file has not changed since, and commits with the
judgement's figures in the message.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import OpsError

Kubectl = Callable[..., str]


def kubectl_runner(binary: str | None = None, kubeconfig: str | None = None) -> Kubectl:
    """kubectl (``binary``, else the one on PATH) against ``kubeconfig`` (else the usual one)."""
    found = binary or shutil.which("kubectl")
    if not found:
        raise OpsError("kubectl not found: put it on PATH or pass --kubectl")

    def run(*args: str) -> str:
        argv = [found, *(["--kubeconfig", kubeconfig] if kubeconfig else []), *args]
        done = subprocess.run(argv, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise OpsError(f"kubectl {' '.join(args)} failed: {(done.stderr or done.stdout).strip()[:400]}")
        return done.stdout

    return run


@dataclass
class Status:
    """A release's rollout as its controller last saw it, and the latest judgement."""

    namespace: str
    rollout: str
    phase: str
    message: str
    aborted: bool
    step: str
    analysis: str = ""
    analysis_phase: str = ""
    judgement: str = ""  # the judge's own report: every figure and each check

    def lines(self) -> list[str]:
        found = [
            f"rollout {self.namespace}/{self.rollout}: {self.phase}{' (aborted)' if self.aborted else ''}"
            + (f": {self.message}" if self.message else ""),
            f"step: {self.step}",
        ]
        if self.analysis:
            found.append(f"latest judgement: AnalysisRun {self.analysis}: {self.analysis_phase}")
        if self.judgement:
            found += ["  " + line for line in self.judgement.strip().splitlines()]
        return found


def status(kubectl: Kubectl, namespace: str, release: str) -> Status:
    selector = f"app.kubernetes.io/instance={release}"
    rollouts = json.loads(kubectl("get", "rollouts.argoproj.io", "-n", namespace, "-l", selector, "-o", "json"))
    if not rollouts["items"]:
        raise OpsError(f"no Rollout of release {release} in {namespace}: is rollout.enabled on there?")
    rollout = rollouts["items"][0]
    spec, state = rollout["spec"], rollout.get("status", {})
    steps = spec.get("strategy", {}).get("canary", {}).get("steps", [])
    index = state.get("currentStepIndex")
    step = f"{index} of {len(steps)}" if index is not None else "none"
    if index is not None and index < len(steps):
        step += f" ({_step_name(steps[index])})"
    found = Status(
        namespace,
        rollout["metadata"]["name"],
        state.get("phase", "unknown"),
        state.get("message", ""),
        bool(state.get("abort")),
        step,
    )
    runs = json.loads(kubectl("get", "analysisruns.argoproj.io", "-n", namespace, "-o", "json"))["items"]
    owned = [r for r in runs if _owned_by(r, rollout["metadata"]["uid"])]
    if owned:
        latest = max(owned, key=lambda r: r["metadata"]["creationTimestamp"])
        found.analysis = latest["metadata"]["name"]
        found.analysis_phase = latest.get("status", {}).get("phase", "Pending")
        job = _job_name(latest)
        if job:
            try:
                found.judgement = kubectl("logs", f"job/{job}", "-n", namespace)
            except OpsError as exc:
                found.judgement = f"(the judgement's log is gone: {exc})"
    return found


def _step_name(step: dict[str, Any]) -> str:
    if "setWeight" in step:
        return f"setWeight {step['setWeight']}"
    if "pause" in step:
        return f"pause {step['pause'].get('duration', 'until promoted')}"
    return next(iter(step), "?")


def _owned_by(run: dict[str, Any], uid: str) -> bool:
    return any(ref.get("uid") == uid for ref in run["metadata"].get("ownerReferences", []))


def _job_name(run: dict[str, Any]) -> str:
    for metric in run.get("status", {}).get("metricResults", []):
        for measurement in reversed(metric.get("measurements", [])):
            name = measurement.get("metadata", {}).get("job-name")
            if name:
                return str(name)
    return ""


def revert_text(root: Path, path: str) -> tuple[str, str]:
    """(the content ``path`` had before the commit that last changed it, that commit's subject); refused when the
    file has uncommitted changes or was never committed."""
    if _git(root, "status", "--porcelain", "--", path).strip():
        raise OpsError(f"{path} has uncommitted changes: commit or discard them before reverting")
    last = _git(root, "log", "-1", "--format=%H%x00%s", "--", path).strip()
    if not last:
        raise OpsError(f"{path} has no commit to revert")
    commit, subject = last.split("\0", 1)
    try:
        before = _git(root, "show", f"{commit}~1:{path}")
    except OpsError:
        raise OpsError(f"{path} did not exist before {commit[:12]} ({subject}): nothing to go back to") from None
    return before, subject


def _git(root: Path, *args: str) -> str:
    done = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise OpsError(f"git {' '.join(args)} failed: {done.stderr.strip()[:300]}")
    return done.stdout


def revert_message(model: str, env: str, subject: str, found: Status) -> str:
    """The revert commit's message: what is undone and the judgement that decided it."""
    figures = [line.strip() for line in found.judgement.splitlines() if line.strip()]
    body = "\n".join(figures) or "(no judgement log was left)"
    return (
        f"Revert {model} in {env}: the canary was aborted ({subject!r} undone)\n\n"
        f"Rollout {found.namespace}/{found.rollout}: {found.phase}, {found.message}\n"
        f"AnalysisRun {found.analysis}: {found.analysis_phase}\n{body}\n"
    )
