from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Scope(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    SCOPE_FULL: _ClassVar[Scope]
    SCOPE_TRAINABLE: _ClassVar[Scope]
SCOPE_FULL: Scope
SCOPE_TRAINABLE: Scope

class TensorSpec(_message.Message):
    __slots__ = ("name", "dtype", "shape", "offset", "nbytes", "trainable")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    NBYTES_FIELD_NUMBER: _ClassVar[int]
    TRAINABLE_FIELD_NUMBER: _ClassVar[int]
    name: str
    dtype: str
    shape: _containers.RepeatedScalarFieldContainer[int]
    offset: int
    nbytes: int
    trainable: bool
    def __init__(self, name: _Optional[str] = ..., dtype: _Optional[str] = ..., shape: _Optional[_Iterable[int]] = ..., offset: _Optional[int] = ..., nbytes: _Optional[int] = ..., trainable: _Optional[bool] = ...) -> None: ...

class SnapshotHeader(_message.Message):
    __slots__ = ("version", "scope", "tensors", "total_bytes", "chunk_bytes", "num_chunks", "sha256", "unchanged", "worker_id", "push_id")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    SCOPE_FIELD_NUMBER: _ClassVar[int]
    TENSORS_FIELD_NUMBER: _ClassVar[int]
    TOTAL_BYTES_FIELD_NUMBER: _ClassVar[int]
    CHUNK_BYTES_FIELD_NUMBER: _ClassVar[int]
    NUM_CHUNKS_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    UNCHANGED_FIELD_NUMBER: _ClassVar[int]
    WORKER_ID_FIELD_NUMBER: _ClassVar[int]
    PUSH_ID_FIELD_NUMBER: _ClassVar[int]
    version: int
    scope: Scope
    tensors: _containers.RepeatedCompositeFieldContainer[TensorSpec]
    total_bytes: int
    chunk_bytes: int
    num_chunks: int
    sha256: bytes
    unchanged: bool
    worker_id: str
    push_id: str
    def __init__(self, version: _Optional[int] = ..., scope: _Optional[_Union[Scope, str]] = ..., tensors: _Optional[_Iterable[_Union[TensorSpec, _Mapping]]] = ..., total_bytes: _Optional[int] = ..., chunk_bytes: _Optional[int] = ..., num_chunks: _Optional[int] = ..., sha256: _Optional[bytes] = ..., unchanged: _Optional[bool] = ..., worker_id: _Optional[str] = ..., push_id: _Optional[str] = ...) -> None: ...

class Chunk(_message.Message):
    __slots__ = ("index", "offset", "data", "sha256")
    INDEX_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    index: int
    offset: int
    data: bytes
    sha256: bytes
    def __init__(self, index: _Optional[int] = ..., offset: _Optional[int] = ..., data: _Optional[bytes] = ..., sha256: _Optional[bytes] = ...) -> None: ...

class SnapshotPart(_message.Message):
    __slots__ = ("header", "chunk")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    CHUNK_FIELD_NUMBER: _ClassVar[int]
    header: SnapshotHeader
    chunk: Chunk
    def __init__(self, header: _Optional[_Union[SnapshotHeader, _Mapping]] = ..., chunk: _Optional[_Union[Chunk, _Mapping]] = ...) -> None: ...

class ServerInfoRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ServerInfo(_message.Message):
    __slots__ = ("version", "tensors", "mode", "workers", "max_staleness", "optimizer", "pending_gradients")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    TENSORS_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    WORKERS_FIELD_NUMBER: _ClassVar[int]
    MAX_STALENESS_FIELD_NUMBER: _ClassVar[int]
    OPTIMIZER_FIELD_NUMBER: _ClassVar[int]
    PENDING_GRADIENTS_FIELD_NUMBER: _ClassVar[int]
    version: int
    tensors: _containers.RepeatedCompositeFieldContainer[TensorSpec]
    mode: str
    workers: int
    max_staleness: int
    optimizer: str
    pending_gradients: int
    def __init__(self, version: _Optional[int] = ..., tensors: _Optional[_Iterable[_Union[TensorSpec, _Mapping]]] = ..., mode: _Optional[str] = ..., workers: _Optional[int] = ..., max_staleness: _Optional[int] = ..., optimizer: _Optional[str] = ..., pending_gradients: _Optional[int] = ...) -> None: ...

class PullRequest(_message.Message):
    __slots__ = ("have_version", "scope")
    HAVE_VERSION_FIELD_NUMBER: _ClassVar[int]
    SCOPE_FIELD_NUMBER: _ClassVar[int]
    have_version: int
    scope: Scope
    def __init__(self, have_version: _Optional[int] = ..., scope: _Optional[_Union[Scope, str]] = ...) -> None: ...

class WatchRequest(_message.Message):
    __slots__ = ("after_version",)
    AFTER_VERSION_FIELD_NUMBER: _ClassVar[int]
    after_version: int
    def __init__(self, after_version: _Optional[int] = ...) -> None: ...

class SharedSnapshot(_message.Message):
    __slots__ = ("available", "header", "path", "inode", "device", "reason")
    AVAILABLE_FIELD_NUMBER: _ClassVar[int]
    HEADER_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    INODE_FIELD_NUMBER: _ClassVar[int]
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    available: bool
    header: SnapshotHeader
    path: str
    inode: int
    device: int
    reason: str
    def __init__(self, available: _Optional[bool] = ..., header: _Optional[_Union[SnapshotHeader, _Mapping]] = ..., path: _Optional[str] = ..., inode: _Optional[int] = ..., device: _Optional[int] = ..., reason: _Optional[str] = ...) -> None: ...

class TransferTicket(_message.Message):
    __slots__ = ("available", "header", "port", "ticket", "expires_in_s", "reason")
    AVAILABLE_FIELD_NUMBER: _ClassVar[int]
    HEADER_FIELD_NUMBER: _ClassVar[int]
    PORT_FIELD_NUMBER: _ClassVar[int]
    TICKET_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_IN_S_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    available: bool
    header: SnapshotHeader
    port: int
    ticket: bytes
    expires_in_s: float
    reason: str
    def __init__(self, available: _Optional[bool] = ..., header: _Optional[_Union[SnapshotHeader, _Mapping]] = ..., port: _Optional[int] = ..., ticket: _Optional[bytes] = ..., expires_in_s: _Optional[float] = ..., reason: _Optional[str] = ...) -> None: ...

class VersionEvent(_message.Message):
    __slots__ = ("version",)
    VERSION_FIELD_NUMBER: _ClassVar[int]
    version: int
    def __init__(self, version: _Optional[int] = ...) -> None: ...

class PushResult(_message.Message):
    __slots__ = ("accepted", "applied", "version", "pending", "detail")
    ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    APPLIED_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    PENDING_FIELD_NUMBER: _ClassVar[int]
    DETAIL_FIELD_NUMBER: _ClassVar[int]
    accepted: bool
    applied: bool
    version: int
    pending: int
    detail: str
    def __init__(self, accepted: _Optional[bool] = ..., applied: _Optional[bool] = ..., version: _Optional[int] = ..., pending: _Optional[int] = ..., detail: _Optional[str] = ...) -> None: ...
