from protos.fedcoord.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class RemoteStatus(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    REMOTE_STATUS_UNSPECIFIED: _ClassVar[RemoteStatus]
    REMOTE_STATUS_OWNED: _ClassVar[RemoteStatus]
    REMOTE_STATUS_UNKNOWN: _ClassVar[RemoteStatus]
REMOTE_STATUS_UNSPECIFIED: RemoteStatus
REMOTE_STATUS_OWNED: RemoteStatus
REMOTE_STATUS_UNKNOWN: RemoteStatus

class OfferItem(_message.Message):
    __slots__ = ("task_id", "type", "priority", "difficulty", "required_capabilities")
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    PRIORITY_FIELD_NUMBER: _ClassVar[int]
    DIFFICULTY_FIELD_NUMBER: _ClassVar[int]
    REQUIRED_CAPABILITIES_FIELD_NUMBER: _ClassVar[int]
    task_id: str
    type: str
    priority: _common_pb2.Priority
    difficulty: int
    required_capabilities: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, task_id: _Optional[str] = ..., type: _Optional[str] = ..., priority: _Optional[_Union[_common_pb2.Priority, str]] = ..., difficulty: _Optional[int] = ..., required_capabilities: _Optional[_Iterable[str]] = ...) -> None: ...

class OfferRequest(_message.Message):
    __slots__ = ("offer_id", "from_node", "items")
    OFFER_ID_FIELD_NUMBER: _ClassVar[int]
    FROM_NODE_FIELD_NUMBER: _ClassVar[int]
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    offer_id: str
    from_node: str
    items: _containers.RepeatedCompositeFieldContainer[OfferItem]
    def __init__(self, offer_id: _Optional[str] = ..., from_node: _Optional[str] = ..., items: _Optional[_Iterable[_Union[OfferItem, _Mapping]]] = ...) -> None: ...

class OfferReply(_message.Message):
    __slots__ = ("offer_id", "accepted", "expires_ns", "reason", "load")
    OFFER_ID_FIELD_NUMBER: _ClassVar[int]
    ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_NS_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    LOAD_FIELD_NUMBER: _ClassVar[int]
    offer_id: str
    accepted: _containers.RepeatedScalarFieldContainer[str]
    expires_ns: int
    reason: str
    load: float
    def __init__(self, offer_id: _Optional[str] = ..., accepted: _Optional[_Iterable[str]] = ..., expires_ns: _Optional[int] = ..., reason: _Optional[str] = ..., load: _Optional[float] = ...) -> None: ...

class HandoffRecord(_message.Message):
    __slots__ = ("task_id", "spec", "origin_node", "created_ns", "attempt", "failures", "hops", "error")
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    SPEC_FIELD_NUMBER: _ClassVar[int]
    ORIGIN_NODE_FIELD_NUMBER: _ClassVar[int]
    CREATED_NS_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    FAILURES_FIELD_NUMBER: _ClassVar[int]
    HOPS_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    task_id: str
    spec: _common_pb2.TaskSpec
    origin_node: str
    created_ns: int
    attempt: int
    failures: int
    hops: int
    error: str
    def __init__(self, task_id: _Optional[str] = ..., spec: _Optional[_Union[_common_pb2.TaskSpec, _Mapping]] = ..., origin_node: _Optional[str] = ..., created_ns: _Optional[int] = ..., attempt: _Optional[int] = ..., failures: _Optional[int] = ..., hops: _Optional[int] = ..., error: _Optional[str] = ...) -> None: ...

class TransferRequest(_message.Message):
    __slots__ = ("offer_id", "from_node", "records")
    OFFER_ID_FIELD_NUMBER: _ClassVar[int]
    FROM_NODE_FIELD_NUMBER: _ClassVar[int]
    RECORDS_FIELD_NUMBER: _ClassVar[int]
    offer_id: str
    from_node: str
    records: _containers.RepeatedCompositeFieldContainer[HandoffRecord]
    def __init__(self, offer_id: _Optional[str] = ..., from_node: _Optional[str] = ..., records: _Optional[_Iterable[_Union[HandoffRecord, _Mapping]]] = ...) -> None: ...

class TransferReply(_message.Message):
    __slots__ = ("owned", "refused")
    class RefusedEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    OWNED_FIELD_NUMBER: _ClassVar[int]
    REFUSED_FIELD_NUMBER: _ClassVar[int]
    owned: _containers.RepeatedScalarFieldContainer[str]
    refused: _containers.ScalarMap[str, str]
    def __init__(self, owned: _Optional[_Iterable[str]] = ..., refused: _Optional[_Mapping[str, str]] = ...) -> None: ...

class TaskStatusRequest(_message.Message):
    __slots__ = ("from_node", "task_ids")
    FROM_NODE_FIELD_NUMBER: _ClassVar[int]
    TASK_IDS_FIELD_NUMBER: _ClassVar[int]
    from_node: str
    task_ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, from_node: _Optional[str] = ..., task_ids: _Optional[_Iterable[str]] = ...) -> None: ...

class TaskStatusReply(_message.Message):
    __slots__ = ("statuses",)
    class StatusesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: RemoteStatus
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[RemoteStatus, str]] = ...) -> None: ...
    STATUSES_FIELD_NUMBER: _ClassVar[int]
    statuses: _containers.ScalarMap[str, RemoteStatus]
    def __init__(self, statuses: _Optional[_Mapping[str, RemoteStatus]] = ...) -> None: ...

class Outcome(_message.Message):
    __slots__ = ("task_id", "status", "finished_ns", "attempt", "worker_id", "owner_node", "result", "error")
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    FINISHED_NS_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    WORKER_ID_FIELD_NUMBER: _ClassVar[int]
    OWNER_NODE_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    task_id: str
    status: _common_pb2.TaskStatus
    finished_ns: int
    attempt: int
    worker_id: str
    owner_node: str
    result: bytes
    error: str
    def __init__(self, task_id: _Optional[str] = ..., status: _Optional[_Union[_common_pb2.TaskStatus, str]] = ..., finished_ns: _Optional[int] = ..., attempt: _Optional[int] = ..., worker_id: _Optional[str] = ..., owner_node: _Optional[str] = ..., result: _Optional[bytes] = ..., error: _Optional[str] = ...) -> None: ...

class ReportRequest(_message.Message):
    __slots__ = ("from_node", "outcomes")
    FROM_NODE_FIELD_NUMBER: _ClassVar[int]
    OUTCOMES_FIELD_NUMBER: _ClassVar[int]
    from_node: str
    outcomes: _containers.RepeatedCompositeFieldContainer[Outcome]
    def __init__(self, from_node: _Optional[str] = ..., outcomes: _Optional[_Iterable[_Union[Outcome, _Mapping]]] = ...) -> None: ...

class ReportReply(_message.Message):
    __slots__ = ("recorded", "rejected")
    class RejectedEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    RECORDED_FIELD_NUMBER: _ClassVar[int]
    REJECTED_FIELD_NUMBER: _ClassVar[int]
    recorded: _containers.RepeatedScalarFieldContainer[str]
    rejected: _containers.ScalarMap[str, str]
    def __init__(self, recorded: _Optional[_Iterable[str]] = ..., rejected: _Optional[_Mapping[str, str]] = ...) -> None: ...
