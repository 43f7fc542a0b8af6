"""The environments declaration (environments/environments.yaml), loaded and checked."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import yaml

from . import OpsError
from .tools import ROOT

DECLARATION = Path("environments/environments.yaml")
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")


@dataclass(frozen=True)
class Environment:
    name: str
    namespace: str
    cluster: str
    values_files: tuple[str, ...]
    sync: str
    require_digest: bool
    promotes_to: str | None


@dataclass(frozen=True)
class Declaration:
    repo_url: str
    revision: str
    chart: str
    release_name: str
    promoted_keys: tuple[str, ...]
    environments: dict[str, Environment]

    def get(self, name: str) -> Environment:
        try:
            return self.environments[name]
        except KeyError:
            raise OpsError(f"unknown environment '{name}' (declared: {', '.join(self.environments)})") from None

    def select(self, names: list[str] | None) -> list[Environment]:
        return [self.get(n) for n in names] if names else list(self.environments.values())


def load(root: Path = ROOT) -> Declaration:
    """Parse and check the declaration; every problem is an OpsError naming the field."""
    path = root / DECLARATION
    try:
        raw = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise OpsError(f"cannot read {DECLARATION}: {exc}") from None
    if not isinstance(raw, dict):
        raise OpsError(f"{DECLARATION} must be a mapping")

    def need(mapping: dict, key: str, where: str, kind: type = str):
        value = mapping.get(key)
        if not isinstance(value, kind) or (kind is str and not value):
            raise OpsError(f"{DECLARATION}: {where}{key} must be a non-empty {kind.__name__}")
        return value

    repo = need(raw, "repository", "", dict)
    envs: dict[str, Environment] = {}
    for index, item in enumerate(need(raw, "environments", "", list)):
        where = f"environments[{index}]."
        if not isinstance(item, dict):
            raise OpsError(f"{DECLARATION}: environments[{index}] must be a mapping")
        name = need(item, "name", where)
        namespace = need(item, "namespace", where)
        for label, value in (("name", name), ("namespace", namespace)):
            if not _DNS_LABEL.match(value):
                raise OpsError(f"{DECLARATION}: {where}{label} '{value}' is not a DNS label")
        if name in envs:
            raise OpsError(f"{DECLARATION}: environment '{name}' is declared twice")
        files = need(item, "valuesFiles", where, list)
        for file in files:
            if not (root / file).is_file():
                raise OpsError(f"{DECLARATION}: {where}valuesFiles names {file}, which does not exist")
        sync = need(item, "sync", where)
        if sync not in ("automated", "manual"):
            raise OpsError(f"{DECLARATION}: {where}sync must be automated or manual, not '{sync}'")
        envs[name] = Environment(
            name=name,
            namespace=namespace,
            cluster=need(item, "cluster", where),
            values_files=tuple(files),
            sync=sync,
            require_digest=bool(item.get("requireDigest", False)),
            promotes_to=item.get("promotesTo"),
        )
    for env in envs.values():
        if env.promotes_to is not None and env.promotes_to not in envs:
            raise OpsError(f"{DECLARATION}: {env.name}.promotesTo names unknown environment '{env.promotes_to}'")
    chart = need(raw, "chart", "")
    if not (root / chart / "Chart.yaml").is_file():
        raise OpsError(f"{DECLARATION}: chart '{chart}' has no Chart.yaml")
    return Declaration(
        repo_url=need(repo, "url", "repository."),
        revision=need(repo, "revision", "repository."),
        chart=chart,
        release_name=need(raw, "releaseName", ""),
        promoted_keys=tuple(need(raw, "promotedKeys", "", list)),
        environments=envs,
    )
