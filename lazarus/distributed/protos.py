"""Generate the Python gRPC modules from `protos/lazarus/v1/*.proto` into `lazarus/distributed/`.

`python -m lazarus.distributed.protos` (what `make protos` runs) regenerates them; `stale_modules()`
says which committed modules differ from what the .proto files generate now (a test fails on any), apart
from the stamps of the generating tools' versions: a fresh install may bring a newer grpcio-tools patch
release, whose modules differ from the committed ones only in `GRPC_GENERATED_VERSION` and the like.
protoc writes `lazarus/v1/x_pb2.py` importing `from lazarus.v1 import ...`; we move the modules here
and point those imports at `lazarus.distributed`, so the .proto package name stays `lazarus.v1`.
"""

from __future__ import annotations

import re
import sys
import tempfile
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
PROTO_ROOT = PACKAGE_DIR.parent.parent / "protos"
PROTO_PACKAGE = "lazarus/v1"
SUFFIXES = ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py")
#: What protoc and grpcio-tools stamp with their own versions (the minimum runtime each module accepts).
TOOL_VERSION_STAMPS = re.compile(r"^GRPC_GENERATED_VERSION = .*$|^# Protobuf Python Version: .*$"
                                 r"|ValidateProtobufRuntimeVersion\([^)]*\)", re.MULTILINE)


class ProtocError(RuntimeError):
    """protoc failed; the message carries its output."""


def proto_files() -> list[Path]:
    return sorted((PROTO_ROOT / PROTO_PACKAGE).glob("*.proto"))


def _render(out_dir: Path) -> dict[str, str]:
    """Run protoc into `out_dir`; return {module file name: text after import rewriting}."""
    import grpc_tools
    from grpc_tools import protoc

    include = Path(grpc_tools.__file__).parent / "_proto"
    args = ["grpc_tools.protoc", f"-I{PROTO_ROOT}", f"-I{include}", f"--python_out={out_dir}",
            f"--pyi_out={out_dir}", f"--grpc_python_out={out_dir}"]
    args += [str(p.relative_to(PROTO_ROOT)) for p in proto_files()]
    if protoc.main(args) != 0:
        raise ProtocError(f"protoc failed on {', '.join(a for a in args if a.endswith('.proto'))}")
    rendered = {}
    for path in sorted((out_dir / PROTO_PACKAGE).iterdir()):
        if path.name.endswith(SUFFIXES):
            text = path.read_text().replace("from lazarus.v1 import", "from lazarus.distributed import")
            rendered[path.name] = text
    return rendered


def generate(target: Path = PACKAGE_DIR) -> list[Path]:
    """Regenerate the modules into `target`; returns the files written."""
    with tempfile.TemporaryDirectory() as tmp:
        rendered = _render(Path(tmp))
    written = []
    for name, text in rendered.items():
        (target / name).write_text(text)
        written.append(target / name)
    return written


def _without_tool_versions(text: str) -> str:
    return TOOL_VERSION_STAMPS.sub("<tool version>", text)


def stale_modules(target: Path = PACKAGE_DIR) -> list[str]:
    """Generated module names in `target` that are missing or differ from a fresh generation (tool version
    stamps aside)."""
    with tempfile.TemporaryDirectory() as tmp:
        rendered = _render(Path(tmp))
    return [name for name, text in rendered.items() if not (target / name).exists()
            or _without_tool_versions((target / name).read_text()) != _without_tool_versions(text)]


if __name__ == "__main__":
    for path in generate():
        print(f"wrote {path}")
    sys.exit(0)
