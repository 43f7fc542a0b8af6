"""Edits to the environments (values files, chart pins) that keep comments and layout (ruamel.yaml round-trip).

Every edit is made and validated (chart schema, pins, GitOps agreement, a full render of each
release it touches) in a scratch copy of chart/ and environments/ first; only then are the real
files replaced, each atomically. A refused edit leaves every file byte-for-byte as it was.
"""

from __future__ import annotations

import difflib
import io
import json
import os
import re
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jsonschema
import yaml
from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap
from ruamel.yaml.error import YAMLError

from . import OpsError, manifests
from . import environments as environments_module
from .environments import DECLARATION, Declaration, Environment, Release
from .render import chart_dir, render
from .tools import ROOT

TAG = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")
DIGEST = re.compile(r"^sha256:[a-f0-9]{64}$")
SHA256 = re.compile(r"^[a-f0-9]{64}$")


def _yaml() -> YAML:
    handler = YAML()
    handler.preserve_quotes = True
    handler.width = 4096
    handler.indent(mapping=2, sequence=4, offset=2)
    # `key: null` stays `key: null` (ruamel writes a bare `key:`), as people write it to drop a chart default.
    handler.representer.add_representer(
        type(None), lambda representer, _: representer.represent_scalar("tag:yaml.org,2002:null", "null")
    )
    return handler


def check_tag(tag: str) -> str:
    if not TAG.match(tag):
        raise OpsError(f"'{tag}' is not a valid image tag ([A-Za-z0-9_][A-Za-z0-9_.-]{{0,127}})")
    return tag


def check_digest(digest: str) -> str:
    if not DIGEST.match(digest):
        raise OpsError(f"'{digest}' is not a digest: expected sha256: followed by 64 lowercase hex digits")
    return digest


def get_path(data: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        if not isinstance(data, dict) or part not in data:
            return None
        data = data[part]
    return data


def set_path(data: CommentedMap, dotted: str, value: Any) -> None:
    """Set (or, with value None, remove) a dotted key, creating mappings on the way."""
    parts = dotted.split(".")
    for part in parts[:-1]:
        if part not in data or not isinstance(data[part], dict):
            if value is None:
                return
            data[part] = CommentedMap()
        data = data[part]
    key = parts[-1]
    if value is None:
        _pop_keeping_comments(data, key)
    elif key in data:
        data[key] = value
    else:
        _append_keeping_comments(data, key, value)


def _append_keeping_comments(data: CommentedMap, key: str, value: Any) -> None:
    """Append a key; the comment block that trailed the old last key (it belongs to what follows
    the mapping) moves to the new last key, so the new line lands above that comment, not below it."""
    last = next(reversed(data), None) if len(data) else None
    data[key] = value
    if last is not None and last in data.ca.items:
        data.ca.items[key] = data.ca.items.pop(last)


def _pop_keeping_comments(data: CommentedMap, key: str) -> None:
    """Remove a key; its own comments go, a trailing block that belongs to what follows is kept."""
    if key not in data:
        return
    keys = list(data)
    position = keys.index(key)
    trailing = data.ca.items.pop(key, None)
    del data[key]
    if position == len(keys) - 1 and trailing is not None and position > 0 and trailing[2] is not None:
        # The removed key was last: the blank lines and comment after it now trail the new last key.
        text = trailing[2].value
        tail = text[text.index("\n") :] if "\n" in text else ""
        previous = keys[position - 1]
        entry = data.ca.items.setdefault(previous, [None, None, None, None])
        if entry[2] is None:
            trailing[2].value = tail
            entry[2] = trailing[2]


def coalesce(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """Helm's merge of a values file over defaults: maps merge, null deletes the key, the rest replaces."""
    merged = dict(base)
    for key, value in override.items():
        if value is None:
            merged.pop(key, None)
        elif isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = coalesce(merged[key], value)
        else:
            merged[key] = value
    return merged


def files_values(files: tuple[str, ...], root: Path = ROOT, replace: dict[str, Path] | None = None) -> dict[str, Any]:
    """Values files merged in order, as Helm merges them (without the chart defaults)."""
    merged: dict[str, Any] = {}
    for file in files:
        path = (replace or {}).get(file, root / file)
        try:
            loaded = yaml.safe_load(Path(path).read_text()) or {}
        except yaml.YAMLError as exc:
            raise OpsError(f"{file} is not valid YAML: {exc}") from None
        if not isinstance(loaded, dict):
            raise OpsError(f"{file}: must be a mapping")
        merged = coalesce(merged, loaded)
    return merged


def release_values(release: Release, root: Path = ROOT) -> dict[str, Any]:
    """The release's own values files merged (without the chart defaults)."""
    return files_values(release.values_files, root)


def schema_errors(
    decl: Declaration, env: Environment, release: Release, root: Path = ROOT, git_root: Path | None = None
) -> list[str]:
    """The schema of the chart ``env`` installs, on one release's merged values; each complaint names the key."""
    with chart_dir(decl, env, root, git_root) as chart:
        values = coalesce(yaml.safe_load((chart / "values.yaml").read_text()), release_values(release, root))
        schema = json.loads((chart / "values.schema.json").read_text())
    validator = jsonschema.Draft7Validator(schema)
    return [
        f"{'.'.join(str(p) for p in error.absolute_path) or '(root)'}: {error.message}"
        for error in sorted(validator.iter_errors(values), key=lambda e: list(map(str, e.absolute_path)))
    ]


def pin_errors(decl: Declaration, env: Environment, release: Release, root: Path = ROOT) -> list[str]:
    """What a pinned environment lacks for one release, and a model store path that names another version."""
    values = release_values(release, root)
    model = values.get("model") or {}
    problems = []
    if env.pinned:
        if not get_path(values, "image.digest"):
            problems.append(f"{env.name} requires an image digest (pinned in environments.yaml)")
        for key in ("version", "sha256"):
            if not model.get(key):
                problems.append(f"{env.name} requires model.{key} for {release.model} (pinned in environments.yaml)")
    if model.get("mode") == "existingClaim" and model.get("version"):
        expected = decl.store_path(release.model, str(model["version"]))
        if model.get("subPath") != expected:
            problems.append(
                f"{release.values_files[-1]}: model.subPath is {model.get('subPath')!r}, but version "
                f"{model['version']} of {release.model} is at {expected!r} in the model store"
            )
    return problems


Change = Callable[[CommentedMap], None]


def _apply(relative: str, text: str, change: Change) -> str:
    handler = _yaml()
    try:
        data = handler.load(text) or CommentedMap()
    except YAMLError as exc:
        raise OpsError(f"{relative} is not valid YAML: {exc}") from None
    if not isinstance(data, CommentedMap):
        raise OpsError(f"{relative} must be a mapping at the top level")
    change(data)
    buffer = io.StringIO()
    handler.dump(data, buffer)
    return buffer.getvalue()


def edit(
    decl: Declaration,
    changes: dict[str, Change],
    touched: list[str],
    root: Path = ROOT,
    dry_run: bool = False,
) -> str:
    """Apply ``changes`` (repository path -> edit), check the environments named in ``touched`` in a
    scratch copy, then replace the real files atomically; return the unified diff."""
    originals = {relative: (root / relative).read_text() for relative in changes}
    updated = {relative: _apply(relative, originals[relative], change) for relative, change in changes.items()}
    diff = "".join(
        "".join(
            difflib.unified_diff(originals[rel].splitlines(True), updated[rel].splitlines(True), f"a/{rel}", f"b/{rel}")
        )
        for rel in changes
    )
    if not diff:
        return ""
    with tempfile.TemporaryDirectory(prefix="msops-edit-") as scratch:
        copy = Path(scratch)
        for part in {decl.chart, str(DECLARATION.parent)}:
            shutil.copytree(root / part, copy / part)
        for relative, text in updated.items():
            (copy / relative).write_text(text)
        check(environments_module.load(copy), touched, copy, git_root=root)
    if dry_run:
        return diff
    temps = {}
    try:
        for relative, text in updated.items():
            path = root / relative
            fd, name = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
            with os.fdopen(fd, "w") as handle:
                handle.write(text)
            os.chmod(name, os.stat(path).st_mode & 0o777)
            temps[relative] = Path(name)
        for relative, temp in temps.items():
            temp.replace(root / relative)
    finally:
        for temp in temps.values():
            temp.unlink(missing_ok=True)
    return diff


def check(decl: Declaration, names: list[str], root: Path, git_root: Path | None = None) -> None:
    """Schema, pins and a full render of every release of the named environments, and GitOps agreement."""
    problems = manifests.check_all(decl, root)
    for env in decl.select(names):
        for release in env.releases:
            where = f"{env.name}/{release.model}"
            problems += [f"{where}: {e}" for e in schema_errors(decl, env, release, root, git_root)]
            problems += [p for p in pin_errors(decl, env, release, root) if p not in problems]
            if not problems:
                render(decl, env, release, root, git_root=git_root)
    if problems:
        raise OpsError("the change would not pass validation: " + "; ".join(problems))


def set_image(
    decl: Declaration, env: Environment, tag: str, digest: str | None, root: Path = ROOT, dry_run: bool = False
) -> str:
    """Point every model of ``env`` at an image: the tag, and the digest or none (a stale one would win)."""
    check_tag(tag)
    if digest is not None:
        check_digest(digest)

    def change(data: CommentedMap) -> None:
        set_path(data, "image.tag", tag)
        set_path(data, "image.digest", digest)

    return edit(decl, {env.values_files[-1]: change}, [env.name], root, dry_run)


def _next(decl: Declaration, source: Environment, target: Environment) -> None:
    if source.name == target.name:
        raise OpsError("--from and --to name the same environment")
    if source.promotes_to != target.name:
        expected = source.promotes_to or "nowhere"
        raise OpsError(f"{source.name} promotes to {expected}, not {target.name} (promotesTo in environments.yaml)")


def promote_image(
    decl: Declaration, source: Environment, target: Environment, root: Path = ROOT, dry_run: bool = False
) -> str:
    """Copy the image keys (promotedKeys.image) from ``source``'s environment values to ``target``'s."""
    _next(decl, source, target)
    merged = files_values(source.values_files, root)
    picked = {key: get_path(merged, key) for key in decl.promoted_keys["image"]}
    if picked.get("image.tag") is not None:
        check_tag(str(picked["image.tag"]))
    if picked.get("image.digest") is not None:
        check_digest(str(picked["image.digest"]))

    def change(data: CommentedMap) -> None:
        for key, value in picked.items():
            set_path(data, key, value)

    return edit(decl, {target.values_files[-1]: change}, [target.name], root, dry_run)


def promote_model(
    decl: Declaration, source: Environment, target: Environment, model: str, root: Path = ROOT, dry_run: bool = False
) -> str:
    """Copy one model's keys (promotedKeys.model) to ``target``; where it reads the model store,
    model.subPath follows the version. Other models and the environment's own values stay as they are."""
    _next(decl, source, target)
    merged = release_values(source.release(model), root)
    picked = {key: get_path(merged, key) for key in decl.promoted_keys["model"]}
    version, sha256 = picked.get("model.version"), picked.get("model.sha256")
    if not version:
        raise OpsError(f"{source.name} pins no model.version for {model}: nothing to promote")
    if sha256 and not SHA256.match(str(sha256)):
        raise OpsError(f"{source.model_file(model)}: model.sha256 {sha256!r} is not 64 lowercase hex digits")
    target_release = target.release(model)
    reads_store = (get_path(release_values(target_release, root), "model.mode") or "image") != "image"

    def change(data: CommentedMap) -> None:
        for key, value in picked.items():
            set_path(data, key, value)
        if reads_store:
            set_path(data, "model.subPath", decl.store_path(model, str(version)))

    return edit(decl, {target.model_file(model): change}, [target.name], root, dry_run)


def source_chart_version(decl: Declaration, env: Environment, root: Path = ROOT) -> str:
    """The chart version ``env`` runs: its pin, or the repository's chart where it follows it."""
    if env.chart_version:
        return env.chart_version
    return str(yaml.safe_load((root / decl.chart / "Chart.yaml").read_text())["version"])


def promote_chart(
    decl: Declaration, source: Environment, target: Environment, root: Path = ROOT, dry_run: bool = False
) -> str:
    """Pin ``target`` to the chart version ``source`` runs: environments.yaml, the ApplicationSet element
    and the environment's Flux OCIRepository, in one change."""
    _next(decl, source, target)
    version = source_chart_version(decl, source, root)
    if target.chart_version is None:
        raise OpsError(f"{target.name} follows the chart on {decl.revision}; only pinned environments take a version")
    index = list(decl.environments).index(target.name)

    def declaration(data: CommentedMap) -> None:
        data["environments"][index]["chartVersion"] = version

    def applicationset(data: CommentedMap) -> None:
        for element in manifests.argocd_elements(data):
            if element.get("name") == target.name:
                element["chartVersion"] = version

    def oci_repository(data: CommentedMap) -> None:
        set_path(data, "spec.ref.tag", version)

    files = [str(p) for p in chart_pin_files(target)]
    changes = dict(zip(files, (declaration, applicationset, oci_repository), strict=True))
    return edit(decl, changes, [target.name], root, dry_run)


def chart_pin_files(env: Environment) -> list[Path]:
    """Where an environment's chart version is written: the declaration, Argo CD, Flux."""
    return [DECLARATION, manifests.APPLICATIONSET, manifests.flux_chart_file(env)]
