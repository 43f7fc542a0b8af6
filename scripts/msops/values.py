"""Edits to environment values files that keep comments and layout (ruamel.yaml round-trip).

Every edit is validated (chart schema + a full render) on a temp copy before the real file is
replaced atomically; a refused edit leaves the file byte-for-byte as it was.
"""

from __future__ import annotations

import difflib
import io
import json
import os
import re
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jsonschema
import yaml
from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap
from ruamel.yaml.error import YAMLError

from . import OpsError
from .environments import Declaration, Environment
from .render import render
from .tools import ROOT

TAG = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")
DIGEST = re.compile(r"^sha256:[a-f0-9]{64}$")


def _yaml() -> YAML:
    handler = YAML()
    handler.preserve_quotes = True
    handler.width = 4096
    handler.indent(mapping=2, sequence=4, offset=2)
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


def environment_values(env: Environment, root: Path = ROOT) -> dict[str, Any]:
    """The environment's own values files merged in order (without the chart defaults)."""
    merged: dict[str, Any] = {}
    for file in env.values_files:
        merged = coalesce(merged, yaml.safe_load((root / file).read_text()) or {})
    return merged


def schema_errors(
    decl: Declaration, env: Environment, root: Path = ROOT, replace: dict[str, Path] | None = None
) -> list[str]:
    """The chart schema's complaints about an environment's merged values, each naming the key."""
    chart = root / decl.chart
    values = yaml.safe_load((chart / "values.yaml").read_text())
    for file in env.values_files:
        path = (replace or {}).get(file, root / file)
        loaded = yaml.safe_load(Path(path).read_text()) or {}
        if not isinstance(loaded, dict):
            return [f"{file}: must be a mapping"]
        values = coalesce(values, loaded)
    schema = json.loads((chart / "values.schema.json").read_text())
    validator = jsonschema.Draft7Validator(schema)
    return [
        f"{'.'.join(str(p) for p in error.absolute_path) or '(root)'}: {error.message}"
        for error in sorted(validator.iter_errors(values), key=lambda e: list(map(str, e.absolute_path)))
    ]


def edit(
    decl: Declaration,
    env: Environment,
    change: Callable[[CommentedMap], None],
    root: Path = ROOT,
    dry_run: bool = False,
) -> str:
    """Apply ``change`` to the environment's last values file; validate, write atomically, return the diff."""
    relative = env.values_files[-1]
    path = root / relative
    original = path.read_text()
    handler = _yaml()
    try:
        data = handler.load(original) or CommentedMap()
    except YAMLError as exc:
        raise OpsError(f"{relative} is not valid YAML: {exc}") from None
    if not isinstance(data, CommentedMap):
        raise OpsError(f"{relative} must be a mapping at the top level")
    change(data)
    buffer = io.StringIO()
    handler.dump(data, buffer)
    updated = buffer.getvalue()
    diff = "".join(
        difflib.unified_diff(original.splitlines(True), updated.splitlines(True), f"a/{relative}", f"b/{relative}")
    )
    if not diff:
        return ""
    fd, temp_name = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    temp = Path(temp_name)
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(updated)
        errors = schema_errors(decl, env, root, {relative: temp})
        if errors:
            raise OpsError(f"{relative} would not pass the chart schema: " + "; ".join(errors))
        if env.require_digest and not get_path(yaml.safe_load(updated), "image.digest"):
            raise OpsError(f"{env.name} requires an image digest (requireDigest in environments.yaml)")
        render(decl, env, root, {relative: temp})
        if dry_run:
            temp.unlink()
        else:
            os.chmod(temp, os.stat(path).st_mode & 0o777)
            temp.replace(path)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    return diff


def set_image(
    decl: Declaration, env: Environment, tag: str, digest: str | None, root: Path = ROOT, dry_run: bool = False
) -> str:
    """Point ``env`` at an image: the tag, and the digest or none (a stale digest would win over the new tag)."""
    check_tag(tag)
    if digest is not None:
        check_digest(digest)

    def change(data: CommentedMap) -> None:
        set_path(data, "image.tag", tag)
        set_path(data, "image.digest", digest)

    return edit(decl, env, change, root, dry_run)


def promote(
    decl: Declaration, source: Environment, target: Environment, root: Path = ROOT, dry_run: bool = False
) -> str:
    """Copy exactly the declared promotedKeys from ``source``'s values to ``target``'s."""
    if source.name == target.name:
        raise OpsError("--from and --to name the same environment")
    if source.promotes_to != target.name:
        expected = source.promotes_to or "nowhere"
        raise OpsError(f"{source.name} promotes to {expected}, not {target.name} (promotesTo in environments.yaml)")
    merged = environment_values(source, root)
    picked = {key: get_path(merged, key) for key in decl.promoted_keys}
    if picked.get("image.tag") is not None:
        check_tag(str(picked["image.tag"]))
    if picked.get("image.digest") is not None:
        check_digest(str(picked["image.digest"]))

    def change(data: CommentedMap) -> None:
        for key, value in picked.items():
            set_path(data, key, value)

    return edit(decl, target, change, root, dry_run)
