"""A one-binary OCI image archive, written directly: the real node's pause image without a registry or builder.

containerd's ``ctr images import`` reads an OCI image layout tarball (``oci-layout``, ``index.json``,
``blobs/sha256/...``); the ``io.containerd.image.name`` annotation names the imported image.
"""

from __future__ import annotations

import hashlib
import io
import json
import platform
import tarfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

_ARCH = {"x86_64": "amd64", "aarch64": "arm64"}


def _blob(data: bytes, media_type: str) -> tuple[dict[str, Any], bytes]:
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    return {"mediaType": media_type, "digest": digest, "size": len(data)}, data


def _json(obj: Mapping[str, object]) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()


def _add(archive: tarfile.TarFile, name: str, data: bytes, mode: int = 0o644) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = len(data), mode, 0
    archive.addfile(info, io.BytesIO(data))


def write(binary: Path, name: str, destination: Path, *, user: str = "65535:65535") -> Path:
    """An image ``name`` whose only file is ``binary`` as /<its name>, its entrypoint; written atomically."""
    layer_buffer = io.BytesIO()
    with tarfile.open(fileobj=layer_buffer, mode="w", format=tarfile.PAX_FORMAT) as layer:
        _add(layer, binary.name, binary.read_bytes(), 0o755)
    layer_desc, layer_data = _blob(layer_buffer.getvalue(), "application/vnd.oci.image.layer.v1.tar")
    config = {
        "architecture": _ARCH.get(platform.machine(), platform.machine()),
        "os": "linux",
        "config": {"Entrypoint": [f"/{binary.name}"], "User": user},
        "rootfs": {"type": "layers", "diff_ids": [layer_desc["digest"]]},
    }
    config_desc, config_data = _blob(_json(config), "application/vnd.oci.image.config.v1+json")
    manifest_type = "application/vnd.oci.image.manifest.v1+json"
    manifest = {
        "schemaVersion": 2,
        "mediaType": manifest_type,
        "config": config_desc,
        "layers": [layer_desc],
    }
    manifest_desc, manifest_data = _blob(_json(manifest), manifest_type)
    manifest_desc["annotations"] = {
        "io.containerd.image.name": name,
        "org.opencontainers.image.ref.name": name.rsplit(":", 1)[-1],
    }
    index = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json", "manifests": [manifest_desc]}
    partial = destination.with_name(destination.name + ".partial")
    with tarfile.open(partial, "w", format=tarfile.PAX_FORMAT) as archive:
        _add(archive, "oci-layout", _json({"imageLayoutVersion": "1.0.0"}))
        _add(archive, "index.json", _json(index))
        for desc, data in ((layer_desc, layer_data), (config_desc, config_data), (manifest_desc, manifest_data)):
            _add(archive, f"blobs/sha256/{desc['digest'].removeprefix('sha256:')}", data)
    partial.rename(destination)
    return destination
