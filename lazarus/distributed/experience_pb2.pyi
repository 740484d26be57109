from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional

DESCRIPTOR: _descriptor.FileDescriptor

class NextTaskRequest(_message.Message):
    __slots__ = ("actor_id", "policy_version")
    ACTOR_ID_FIELD_NUMBER: _ClassVar[int]
    POLICY_VERSION_FIELD_NUMBER: _ClassVar[int]
    actor_id: str
    policy_version: int
    def __init__(self, actor_id: _Optional[str] = ..., policy_version: _Optional[int] = ...) -> None: ...

class Task(_message.Message):
    __slots__ = ("available", "task_id", "payload", "policy_version")
    AVAILABLE_FIELD_NUMBER: _ClassVar[int]
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    POLICY_VERSION_FIELD_NUMBER: _ClassVar[int]
    available: bool
    task_id: str
    payload: bytes
    policy_version: int
    def __init__(self, available: _Optional[bool] = ..., task_id: _Optional[str] = ..., payload: _Optional[bytes] = ..., policy_version: _Optional[int] = ...) -> None: ...

class TrajectoryBatch(_message.Message):
    __slots__ = ("actor_id", "task_id", "trajectories")
    ACTOR_ID_FIELD_NUMBER: _ClassVar[int]
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    TRAJECTORIES_FIELD_NUMBER: _ClassVar[int]
    actor_id: str
    task_id: str
    trajectories: _containers.RepeatedScalarFieldContainer[bytes]
    def __init__(self, actor_id: _Optional[str] = ..., task_id: _Optional[str] = ..., trajectories: _Optional[_Iterable[bytes]] = ...) -> None: ...

class PushTrajectoriesResult(_message.Message):
    __slots__ = ("accepted",)
    ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    accepted: int
    def __init__(self, accepted: _Optional[int] = ...) -> None: ...

class HeartbeatRequest(_message.Message):
    __slots__ = ("actor_id", "policy_version", "stats")
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
    actor_id: str
    policy_version: int
    stats: _containers.ScalarMap[str, float]
    def __init__(self, actor_id: _Optional[str] = ..., policy_version: _Optional[int] = ..., stats: _Optional[_Mapping[str, float]] = ...) -> None: ...

class HeartbeatReply(_message.Message):
    __slots__ = ("policy_version", "stop")
    POLICY_VERSION_FIELD_NUMBER: _ClassVar[int]
    STOP_FIELD_NUMBER: _ClassVar[int]
    policy_version: int
    stop: bool
    def __init__(self, policy_version: _Optional[int] = ..., stop: _Optional[bool] = ...) -> None: ...
