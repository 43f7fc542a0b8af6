"""Edits to the environments (values files, chart pins) that keep comments and layout (ruamel.yaml round-trip).

Every edit is made and validated (chart schema, pins, GitOps agreement, a full render of each
release it touches) in a scratch copy of chart/ and environments/ first; only then are the real
files replaced, each atomically. A refused edit leaves every file byte-for-byte as it was.
"""

from __future__ import annotations

import difflib
import hashlib
import io
import json
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Mapping
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


def from_image(values: dict[str, Any]) -> bool:
    """Whether merged values serve the artifact baked into the image (the chart's default mode)."""
    return (get_path(values, "model.mode") or "image") == "image"


def _setting_file(release: Release, key: str, root: Path) -> str:
    """The last of the release's values files that sets ``key`` (the one to edit), else its own last file."""
    for file in reversed(release.values_files):
        if get_path(files_values((file,), root), key) is not None:
            return file
    return release.values_files[-1]


def pin_errors(decl: Declaration, env: Environment, release: Release, root: Path = ROOT) -> list[str]:
    """What a pinned environment lacks for one release, a sha256 pin no image build can meet, and a
    model store path that names another version.

    Where the artifact comes from decides what pins it. From the model store (a volume), nothing but
    model.sha256 does: a pinned environment needs it. From the image, the image digest does, and a
    sha256 pin cannot work: every build trains anew and a skops file is a zip with timestamps, so
    each build has another sha256, and the server would refuse the one it was built with."""
    values = release_values(release, root)
    model = values.get("model") or {}
    baked = from_image(values)
    problems = []
    if env.pinned:
        if not get_path(values, "image.digest"):
            problems.append(f"{env.name} requires an image digest (pinned in environments.yaml)")
        if not model.get("version"):
            problems.append(f"{env.name} requires model.version for {release.model} (pinned in environments.yaml)")
        if not baked and not model.get("sha256"):
            problems.append(
                f"{env.name} requires model.sha256 for {release.model}: it reads the model store "
                "(pinned in environments.yaml)"
            )
    if baked and model.get("sha256"):
        problems.append(
            f"{_setting_file(release, 'model.sha256', root)}: model.sha256 is set, but {release.model} is the "
            "artifact baked into the image (model.mode image), which every image build writes anew with another "
            "sha256, so the server would never become ready; leave it empty: the image digest pins the artifact"
        )
    if model.get("mode") == "existingClaim" and model.get("version"):
        expected = decl.store_path(release.model, str(model["version"]))
        if model.get("subPath") != expected:
            problems.append(
                f"{_setting_file(release, 'model.subPath', root)}: model.subPath is {model.get('subPath')!r}, but "
                f"version {model['version']} of {release.model} is at {expected!r} in the model store"
            )
    return problems


def release_problems(
    decl: Declaration, env: Environment, release: Release, root: Path = ROOT, git_root: Path | None = None
) -> list[str]:
    """Why one release's values may not be applied: the schema of the chart ``env`` installs, and the pins."""
    return schema_errors(decl, env, release, root, git_root) + pin_errors(decl, env, release, root)


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
    changes: Mapping[str, Change],
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
            problems += [
                f"{env.name}/{release.model}: {e}" for e in release_problems(decl, env, release, root, git_root)
            ]
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


def artifact_pin(directory: Path) -> dict[str, str]:
    """model.version and model.sha256 from an artifact directory's metadata.json (what scripts/train and
    scripts/package-model write, and the ML release pipeline copies to the model store). The model file
    beside it, when present, must hash to the recorded sha256."""
    metadata_path = directory / "metadata.json"
    try:
        metadata = json.loads(metadata_path.read_text())
    except OSError as exc:
        raise OpsError(f"--artifact {directory}: cannot read metadata.json ({exc.strerror})") from None
    except ValueError as exc:  # not UTF-8, or not JSON
        raise OpsError(f"{metadata_path} is not valid JSON: {exc}") from None
    if not isinstance(metadata, dict):
        raise OpsError(f"{metadata_path} must hold a JSON object")
    version, sha256 = metadata.get("version"), metadata.get("model_sha256")
    if not isinstance(version, str | int) or isinstance(version, bool) or not str(version):
        raise OpsError(f"{metadata_path}: version must be a non-empty string, not {version!r}")
    if not isinstance(sha256, str) or not SHA256.match(sha256):
        raise OpsError(f"{metadata_path}: model_sha256 {sha256!r} is not 64 lowercase hex digits")
    model_file = metadata.get("model_file")
    if isinstance(model_file, str) and (directory / Path(model_file).name).is_file():
        path = directory / Path(model_file).name
        actual = hashlib.sha256(path.read_bytes()).hexdigest()
        if actual != sha256:
            raise OpsError(f"{path} has sha256 {actual}, but {metadata_path} records {sha256}: a damaged artifact")
    return {"model.version": str(version), "model.sha256": sha256}


def model_pin(
    decl: Declaration, source: Environment, model: str, root: Path = ROOT, artifact: Path | None = None
) -> dict[str, Any]:
    """The keys promotion moves for ``model`` (promotedKeys.model) as ``source`` pins them; with
    ``artifact``, version and sha256 from that artifact directory, which must be the version ``source`` runs."""
    merged = release_values(source.release(model), root)
    picked = {key: get_path(merged, key) for key in decl.promoted_keys["model"]}
    if artifact is not None:
        recorded = artifact_pin(artifact)
        for key, value in recorded.items():
            pinned = picked.get(key)
            if pinned and str(pinned) != value:
                raise OpsError(
                    f"--artifact {artifact} records {key} {value}, but {source.name} pins {pinned} for {model}: "
                    f"promote the artifact {source.name} runs"
                )
        picked.update(recorded)
    if not picked.get("model.version"):
        raise OpsError(f"{source.name} pins no model.version for {model}: nothing to promote")
    sha256 = picked.get("model.sha256")
    if sha256 and not SHA256.match(str(sha256)):
        raise OpsError(f"{source.model_file(model)}: model.sha256 {sha256!r} is not 64 lowercase hex digits")
    return picked


def promote_model(
    decl: Declaration,
    source: Environment,
    target: Environment,
    model: str,
    root: Path = ROOT,
    dry_run: bool = False,
    artifact: Path | None = None,
) -> str:
    """Copy one model's keys (promotedKeys.model) to ``target``, or, with ``artifact``, the version and
    sha256 its metadata.json records; where ``target`` reads the model store, model.subPath follows the
    version. Other models and the environment's own values stay as they are."""
    _next(decl, source, target)
    picked = model_pin(decl, source, model, root, artifact)
    version = str(picked["model.version"])
    reads_store = not from_image(release_values(target.release(model), root))
    if not reads_store:
        # The image digest pins a baked artifact; a sha256 pin would refuse every new build's.
        picked["model.sha256"] = ""
    elif target.pinned and not picked.get("model.sha256"):
        why = " (its image pins the artifact)" if from_image(release_values(source.release(model), root)) else ""
        raise OpsError(
            f"{source.name} pins no model.sha256 for {model}{why}, but pinned "
            f"{target.name} reads it from the model store: pass --artifact DIR, the directory released to "
            f"{decl.store_path(model, version)}, to take version and sha256 from its metadata.json"
        )

    def change(data: CommentedMap) -> None:
        for key, value in picked.items():
            set_path(data, key, value)
        if reads_store:
            set_path(data, "model.subPath", decl.store_path(model, version))

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
