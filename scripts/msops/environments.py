"""The environments declaration (environments/environments.yaml), loaded and checked."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from . import OpsError
from .tools import ROOT

DECLARATION = Path("environments/environments.yaml")
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
_SEMVER = re.compile(r"^\d+\.\d+\.\d+(-[0-9A-Za-z.-]+)?$")


@dataclass(frozen=True)
class Release:
    """One model's Helm release in one environment."""

    model: str
    name: str
    values_files: tuple[str, ...]


@dataclass(frozen=True)
class Environment:
    name: str
    namespace: str
    cluster: str
    # The environment-wide values file (image, sizing, network): the last one of the environment's own.
    values_files: tuple[str, ...]
    releases: tuple[Release, ...]
    sync: str
    # A published chart version; None follows the chart in the repository (dev).
    chart_version: str | None
    pinned: bool
    promotes_to: str | None

    def release(self, model: str) -> Release:
        for release in self.releases:
            if release.model == model:
                return release
        served = ", ".join(r.model for r in self.releases)
        raise OpsError(f"{self.name} serves no model '{model}' (it serves: {served})")

    def select(self, models: list[str] | None) -> list[Release]:
        return [self.release(m) for m in models] if models else list(self.releases)

    def model_file(self, model: str) -> str:
        """The values file that pins ``model`` here: the release's last."""
        return self.release(model).values_files[-1]


@dataclass(frozen=True)
class Declaration:
    repo_url: str
    revision: str
    chart: str
    chart_registry: str
    chart_name: str
    release_pattern: str
    values_patterns: tuple[str, ...]
    store_sub_path: str
    promoted_keys: dict[str, tuple[str, ...]]
    environments: dict[str, Environment]

    def get(self, name: str) -> Environment:
        try:
            return self.environments[name]
        except KeyError:
            raise OpsError(f"unknown environment '{name}' (declared: {', '.join(self.environments)})") from None

    def select(self, names: list[str] | None) -> list[Environment]:
        return [self.get(n) for n in names] if names else list(self.environments.values())

    def store_path(self, model: str, version: str) -> str:
        return self.store_sub_path.format(model=model, version=version)


def _need(mapping: dict[str, Any], key: str, where: str, kind: type = str) -> Any:
    value = mapping.get(key)
    if not isinstance(value, kind) or (kind is str and not value):
        raise OpsError(f"{DECLARATION}: {where}{key} must be a non-empty {kind.__name__}")
    return value


def _fill(pattern: str, where: str, **fields: str) -> str:
    try:
        return pattern.format(**fields)
    except (KeyError, IndexError, ValueError):
        raise OpsError(f"{DECLARATION}: {where} '{pattern}' may only use {{{'}, {'.join(fields)}}}") from None


def load(root: Path = ROOT) -> Declaration:
    """Parse and check the declaration; every problem is an OpsError naming the field."""
    path = root / DECLARATION
    try:
        raw = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise OpsError(f"cannot read {DECLARATION}: {exc}") from None
    if not isinstance(raw, dict):
        raise OpsError(f"{DECLARATION} must be a mapping")

    repo = _need(raw, "repository", "", dict)
    chart = _need(raw, "chart", "", dict)
    chart_path = _need(chart, "path", "chart.")
    if not (root / chart_path / "Chart.yaml").is_file():
        raise OpsError(f"{DECLARATION}: chart.path '{chart_path}' has no Chart.yaml")
    registry = _need(chart, "registry", "chart.")
    if not registry.startswith("oci://"):
        raise OpsError(f"{DECLARATION}: chart.registry must be an oci:// reference, not '{registry}'")
    release_pattern = _need(raw, "releaseName", "")
    patterns = tuple(_need(raw, "valuesFiles", "", list))
    store = _need(_need(raw, "modelStore", "", dict), "subPath", "modelStore.")
    keys = _need(raw, "promotedKeys", "", dict)
    promoted = {kind: tuple(_need(keys, kind, "promotedKeys.", list)) for kind in ("image", "model")}

    envs: dict[str, Environment] = {}
    for index, item in enumerate(_need(raw, "environments", "", list)):
        where = f"environments[{index}]."
        if not isinstance(item, dict):
            raise OpsError(f"{DECLARATION}: environments[{index}] must be a mapping")
        name = _need(item, "name", where)
        namespace = _need(item, "namespace", where)
        for label, value in (("name", name), ("namespace", namespace)):
            if not _DNS_LABEL.match(value):
                raise OpsError(f"{DECLARATION}: {where}{label} '{value}' is not a DNS label")
        if name in envs:
            raise OpsError(f"{DECLARATION}: environment '{name}' is declared twice")
        sync = _need(item, "sync", where)
        if sync not in ("automated", "manual"):
            raise OpsError(f"{DECLARATION}: {where}sync must be automated or manual, not '{sync}'")
        version = item.get("chartVersion")
        if version is not None and not (isinstance(version, str) and _SEMVER.match(version)):
            raise OpsError(f"{DECLARATION}: {where}chartVersion must be a quoted semantic version, not {version!r}")
        if item.get("pinned") and version is None:
            raise OpsError(f"{DECLARATION}: {name} is pinned but has no chartVersion")
        releases = []
        for model in _need(item, "models", where, list):
            if not isinstance(model, str) or not _DNS_LABEL.match(model):
                raise OpsError(f"{DECLARATION}: {where}models: '{model}' is not a DNS label")
            files = tuple(_fill(p, "valuesFiles entry", model=model, env=name) for p in patterns)
            for file in files:
                if not (root / file).is_file():
                    raise OpsError(f"{DECLARATION}: {name} serves {model}, but {file} does not exist")
            release_name = _fill(release_pattern, "releaseName", model=model)
            if not _DNS_LABEL.match(release_name):
                raise OpsError(f"{DECLARATION}: release name '{release_name}' is not a DNS label")
            releases.append(Release(model=model, name=release_name, values_files=files))
        if len({r.model for r in releases}) != len(releases):
            raise OpsError(f"{DECLARATION}: {where}models lists a model twice")
        own = tuple(_fill(p, "valuesFiles entry", env=name) for p in patterns if "{env}" in p and "{model}" not in p)
        envs[name] = Environment(
            name=name,
            namespace=namespace,
            cluster=_need(item, "cluster", where),
            values_files=own,
            releases=tuple(releases),
            sync=sync,
            chart_version=version,
            pinned=bool(item.get("pinned", False)),
            promotes_to=item.get("promotesTo"),
        )
    for env in envs.values():
        if env.promotes_to is not None and env.promotes_to not in envs:
            raise OpsError(f"{DECLARATION}: {env.name}.promotesTo names unknown environment '{env.promotes_to}'")
        if not env.values_files:
            raise OpsError(f"{DECLARATION}: valuesFiles needs an environment-wide file (with {{env}}, not {{model}})")
    return Declaration(
        repo_url=_need(repo, "url", "repository."),
        revision=_need(repo, "revision", "repository."),
        chart=chart_path,
        chart_registry=registry.removesuffix("/"),
        chart_name=str(yaml.safe_load((root / chart_path / "Chart.yaml").read_text())["name"]),
        release_pattern=release_pattern,
        values_patterns=patterns,
        store_sub_path=store,
        promoted_keys=promoted,
        environments=envs,
    )
