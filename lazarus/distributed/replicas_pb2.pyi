from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable
from typing import ClassVar as _ClassVar, Optional as _Optional

DESCRIPTOR: _descriptor.FileDescriptor

class BatchRequest(_message.Message):
    __slots__ = ("replica_id", "after_step", "wait_s")
    REPLICA_ID_FIELD_NUMBER: _ClassVar[int]
    AFTER_STEP_FIELD_NUMBER: _ClassVar[int]
    WAIT_S_FIELD_NUMBER: _ClassVar[int]
    replica_id: str
    after_step: int
    wait_s: float
    def __init__(self, replica_id: _Optional[str] = ..., after_step: _Optional[int] = ..., wait_s: _Optional[float] = ...) -> None: ...

class LearnerBatch(_message.Message):
    __slots__ = ("available", "stop", "dropped", "step", "shard", "shards", "trajectories")
    AVAILABLE_FIELD_NUMBER: _ClassVar[int]
    STOP_FIELD_NUMBER: _ClassVar[int]
    DROPPED_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    SHARD_FIELD_NUMBER: _ClassVar[int]
    SHARDS_FIELD_NUMBER: _ClassVar[int]
    TRAJECTORIES_FIELD_NUMBER: _ClassVar[int]
    available: bool
    stop: bool
    dropped: bool
    step: int
    shard: int
    shards: int
    trajectories: _containers.RepeatedScalarFieldContainer[bytes]
    def __init__(self, available: _Optional[bool] = ..., stop: _Optional[bool] = ..., dropped: _Optional[bool] = ..., step: _Optional[int] = ..., shard: _Optional[int] = ..., shards: _Optional[int] = ..., trajectories: _Optional[_Iterable[bytes]] = ...) -> None: ...
