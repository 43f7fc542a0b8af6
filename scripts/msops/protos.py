"""The gRPC binding's descriptor set: transport/rpc/*.proto compiled by the pinned grpcio-tools.

The server never imports generated ``*_pb2`` modules: it builds its message classes from this one binary
FileDescriptorSet in a descriptor pool of its own (model_server/transport/rpc/messages.py). The set is
checked in (the image has no compiler); tests/server/test_grpc.py compiles it again and compares bytes.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
RPC = ROOT / "image" / "model_server" / "transport" / "rpc"
PROTOS = ("open_inference.proto", "health.proto")
DESCRIPTORS = RPC / "descriptors.binpb"


def compile_descriptors() -> bytes:
    """The FileDescriptorSet of PROTOS, as protoc writes it (no source info: nothing but the definitions)."""
    from grpc_tools import protoc

    with tempfile.TemporaryDirectory() as scratch:
        out = Path(scratch) / "set.binpb"
        code = protoc.main(["protoc", f"-I{RPC}", f"--descriptor_set_out={out}", *PROTOS])
        if code != 0:
            raise RuntimeError(f"protoc failed ({code}) on {', '.join(PROTOS)} in {RPC}")
        return out.read_bytes()


def write() -> Path:
    """Compile and replace the checked-in set in one rename (never a half-written file)."""
    data = compile_descriptors()
    tmp = DESCRIPTORS.with_name(f".{DESCRIPTORS.name}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, DESCRIPTORS)
    return DESCRIPTORS
