from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class JoinRequest(_message.Message):
    __slots__ = ("actor_id",)
    ACTOR_ID_FIELD_NUMBER: _ClassVar[int]
    actor_id: str
    def __init__(self, actor_id: _Optional[str] = ...) -> None: ...

class ModelFile(_message.Message):
    __slots__ = ("name", "size", "sha256", "root")
    NAME_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    ROOT_FIELD_NUMBER: _ClassVar[int]
    name: str
    size: int
    sha256: bytes
    root: str
    def __init__(self, name: _Optional[str] = ..., size: _Optional[int] = ..., sha256: _Optional[bytes] = ..., root: _Optional[str] = ...) -> None: ...

class RunSpec(_message.Message):
    __slots__ = ("incarnation", "config_json", "files", "model_name", "policy_version", "heartbeat_s", "lease_s")
    INCARNATION_FIELD_NUMBER: _ClassVar[int]
    CONFIG_JSON_FIELD_NUMBER: _ClassVar[int]
    FILES_FIELD_NUMBER: _ClassVar[int]
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    POLICY_VERSION_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_S_FIELD_NUMBER: _ClassVar[int]
    LEASE_S_FIELD_NUMBER: _ClassVar[int]
    incarnation: str
    config_json: bytes
    files: _containers.RepeatedCompositeFieldContainer[ModelFile]
    model_name: str
    policy_version: int
    heartbeat_s: float
    lease_s: float
    def __init__(self, incarnation: _Optional[str] = ..., config_json: _Optional[bytes] = ..., files: _Optional[_Iterable[_Union[ModelFile, _Mapping]]] = ..., model_name: _Optional[str] = ..., policy_version: _Optional[int] = ..., heartbeat_s: _Optional[float] = ..., lease_s: _Optional[float] = ...) -> None: ...

class FileRequest(_message.Message):
    __slots__ = ("root", "name", "offset")
    ROOT_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    root: str
    name: str
    offset: int
    def __init__(self, root: _Optional[str] = ..., name: _Optional[str] = ..., offset: _Optional[int] = ...) -> None: ...

class FileChunk(_message.Message):
    __slots__ = ("data",)
    DATA_FIELD_NUMBER: _ClassVar[int]
    data: bytes
    def __init__(self, data: _Optional[bytes] = ...) -> None: ...

class NextTaskRequest(_message.Message):
    __slots__ = ("actor_id", "policy_version", "incarnation")
    ACTOR_ID_FIELD_NUMBER: _ClassVar[int]
    POLICY_VERSION_FIELD_NUMBER: _ClassVar[int]
    INCARNATION_FIELD_NUMBER: _ClassVar[int]
    actor_id: str
    policy_version: int
    incarnation: str
    def __init__(self, actor_id: _Optional[str] = ..., policy_version: _Optional[int] = ..., incarnation: _Optional[str] = ...) -> None: ...

class Task(_message.Message):
    __slots__ = ("available", "task_id", "payload", "policy_version", "stop", "incarnation", "lease_s")
    AVAILABLE_FIELD_NUMBER: _ClassVar[int]
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    POLICY_VERSION_FIELD_NUMBER: _ClassVar[int]
    STOP_FIELD_NUMBER: _ClassVar[int]
    INCARNATION_FIELD_NUMBER: _ClassVar[int]
    LEASE_S_FIELD_NUMBER: _ClassVar[int]
    available: bool
    task_id: str
    payload: bytes
    policy_version: int
    stop: bool
    incarnation: str
    lease_s: float
    def __init__(self, available: _Optional[bool] = ..., task_id: _Optional[str] = ..., payload: _Optional[bytes] = ..., policy_version: _Optional[int] = ..., stop: _Optional[bool] = ..., incarnation: _Optional[str] = ..., lease_s: _Optional[float] = ...) -> None: ...

class TrajectoryBatch(_message.Message):
    __slots__ = ("actor_id", "task_id", "trajectories", "push_id", "incarnation", "stats")
    class StatsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    ACTOR_ID_FIELD_NUMBER: _ClassVar[int]
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    TRAJECTORIES_FIELD_NUMBER: _ClassVar[int]
    PUSH_ID_FIELD_NUMBER: _ClassVar[int]
    INCARNATION_FIELD_NUMBER: _ClassVar[int]
    STATS_FIELD_NUMBER: _ClassVar[int]
    actor_id: str
    task_id: str
    trajectories: _containers.RepeatedScalarFieldContainer[bytes]
    push_id: str
    incarnation: str
    stats: _containers.ScalarMap[str, float]
    def __init__(self, actor_id: _Optional[str] = ..., task_id: _Optional[str] = ..., trajectories: _Optional[_Iterable[bytes]] = ..., push_id: _Optional[str] = ..., incarnation: _Optional[str] = ..., stats: _Optional[_Mapping[str, float]] = ...) -> None: ...

class PushTrajectoriesResult(_message.Message):
    __slots__ = ("accepted", "duplicate", "detail")
    ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    DUPLICATE_FIELD_NUMBER: _ClassVar[int]
    DETAIL_FIELD_NUMBER: _ClassVar[int]
    accepted: int
    duplicate: bool
    detail: str
    def __init__(self, accepted: _Optional[int] = ..., duplicate: _Optional[bool] = ..., detail: _Optional[str] = ...) -> None: ...

class HeartbeatRequest(_message.Message):
    __slots__ = ("actor_id", "policy_version", "stats", "incarnation", "task_ids")
    class StatsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    ACTOR_ID_FIELD_NUMBER: _ClassVar[int]
    POLICY_VERSION_FIELD_NUMBER: _ClassVar[int]
    STATS_FIELD_NUMBER: _ClassVar[int]
    INCARNATION_FIELD_NUMBER: _ClassVar[int]
    TASK_IDS_FIELD_NUMBER: _ClassVar[int]
    actor_id: str
    policy_version: int
    stats: _containers.ScalarMap[str, float]
    incarnation: str
    task_ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, actor_id: _Optional[str] = ..., policy_version: _Optional[int] = ..., stats: _Optional[_Mapping[str, float]] = ..., incarnation: _Optional[str] = ..., task_ids: _Optional[_Iterable[str]] = ...) -> None: ...

class HeartbeatReply(_message.Message):
    __slots__ = ("policy_version", "stop", "incarnation")
    POLICY_VERSION_FIELD_NUMBER: _ClassVar[int]
    STOP_FIELD_NUMBER: _ClassVar[int]
    INCARNATION_FIELD_NUMBER: _ClassVar[int]
    policy_version: int
    stop: bool
    incarnation: str
    def __init__(self, policy_version: _Optional[int] = ..., stop: _Optional[bool] = ..., incarnation: _Optional[str] = ...) -> None: ...

class StatusRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class StatusReply(_message.Message):
    __slots__ = ("json",)
    JSON_FIELD_NUMBER: _ClassVar[int]
    json: bytes
    def __init__(self, json: _Optional[bytes] = ...) -> None: ...
