"""The committed gRPC modules are what the .proto files generate now."""

import re

from lazarus.distributed import protos
from lazarus.distributed.protos import proto_files, stale_modules


def test_generated_modules_match_the_proto_files():
    # given the .proto files in protos/lazarus/v1
    assert {p.name for p in proto_files()} == {"parameter_server.proto", "experience.proto", "replicas.proto"}
    # when they are compiled again, then every committed module is identical (else: run `make protos`)
    assert stale_modules() == []


def _copy_modules(target, edit=lambda text: text):
    """The committed generated modules, each passed through `edit`, written into `target`."""
    for path in protos.PACKAGE_DIR.iterdir():
        if path.name.endswith(protos.SUFFIXES):
            (target / path.name).write_text(edit(path.read_text()))


def test_stale_check_notices_a_changed_module(tmp_path):
    # given a copy of the generated modules with one of them edited
    _copy_modules(tmp_path)
    edited = tmp_path / "parameter_server_pb2.py"
    edited.write_text(edited.read_text() + "\n# hand edit\n")
    (tmp_path / "experience_pb2_grpc.py").unlink()
    # when checked, then both the edited and the missing module are reported
    assert sorted(stale_modules(tmp_path)) == ["experience_pb2_grpc.py", "parameter_server_pb2.py"]


def _stamped_by_other_tools(text: str) -> str:
    text = re.sub(r"GRPC_GENERATED_VERSION = '[^']*'", "GRPC_GENERATED_VERSION = '9.99.9'", text)
    text = re.sub(r"# Protobuf Python Version: .*", "# Protobuf Python Version: 9.99.9", text)
    return re.sub(r"(ValidateProtobufRuntimeVersion\(\s*_runtime_version.Domain.PUBLIC,\s*)\d+", r"\g<1>99", text)


def test_a_module_stamped_by_another_grpcio_tools_release_is_not_stale(tmp_path):
    # given a copy of the generated modules whose version stamps name other tool releases
    _copy_modules(tmp_path, _stamped_by_other_tools)
    assert "9.99.9" in (tmp_path / "replicas_pb2_grpc.py").read_text()
    assert "PUBLIC,\n    99," in (tmp_path / "replicas_pb2.py").read_text()
    # when checked, then none is stale: only the .proto contents count
    assert stale_modules(tmp_path) == []
