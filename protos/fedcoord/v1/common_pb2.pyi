from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Priority(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    PRIORITY_UNSPECIFIED: _ClassVar[Priority]
    PRIORITY_CRITICAL: _ClassVar[Priority]
    PRIORITY_HIGH: _ClassVar[Priority]
    PRIORITY_MEDIUM: _ClassVar[Priority]
    PRIORITY_LOW: _ClassVar[Priority]

class TaskStatus(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    TASK_STATUS_UNSPECIFIED: _ClassVar[TaskStatus]
    TASK_STATUS_PENDING: _ClassVar[TaskStatus]
    TASK_STATUS_QUEUED: _ClassVar[TaskStatus]
    TASK_STATUS_ASSIGNED: _ClassVar[TaskStatus]
    TASK_STATUS_IN_PROGRESS: _ClassVar[TaskStatus]
    TASK_STATUS_HANDING_OFF: _ClassVar[TaskStatus]
    TASK_STATUS_COMPLETED: _ClassVar[TaskStatus]
    TASK_STATUS_FAILED: _ClassVar[TaskStatus]
    TASK_STATUS_CANCELLED: _ClassVar[TaskStatus]
    TASK_STATUS_HANDED_OFF: _ClassVar[TaskStatus]
PRIORITY_UNSPECIFIED: Priority
PRIORITY_CRITICAL: Priority
PRIORITY_HIGH: Priority
PRIORITY_MEDIUM: Priority
PRIORITY_LOW: Priority
TASK_STATUS_UNSPECIFIED: TaskStatus
TASK_STATUS_PENDING: TaskStatus
TASK_STATUS_QUEUED: TaskStatus
TASK_STATUS_ASSIGNED: TaskStatus
TASK_STATUS_IN_PROGRESS: TaskStatus
TASK_STATUS_HANDING_OFF: TaskStatus
TASK_STATUS_COMPLETED: TaskStatus
TASK_STATUS_FAILED: TaskStatus
TASK_STATUS_CANCELLED: TaskStatus
TASK_STATUS_HANDED_OFF: TaskStatus

class TaskSpec(_message.Message):
    __slots__ = ("type", "payload", "context", "priority", "difficulty", "required_capabilities", "dependencies", "max_retries", "timeout_s", "delay_s", "idempotency_key", "id")
    class ContextEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    TYPE_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    CONTEXT_FIELD_NUMBER: _ClassVar[int]
    PRIORITY_FIELD_NUMBER: _ClassVar[int]
    DIFFICULTY_FIELD_NUMBER: _ClassVar[int]
    REQUIRED_CAPABILITIES_FIELD_NUMBER: _ClassVar[int]
    DEPENDENCIES_FIELD_NUMBER: _ClassVar[int]
    MAX_RETRIES_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_S_FIELD_NUMBER: _ClassVar[int]
    DELAY_S_FIELD_NUMBER: _ClassVar[int]
    IDEMPOTENCY_KEY_FIELD_NUMBER: _ClassVar[int]
    ID_FIELD_NUMBER: _ClassVar[int]
    type: str
    payload: bytes
    context: _containers.ScalarMap[str, str]
    priority: Priority
    difficulty: int
    required_capabilities: _containers.RepeatedScalarFieldContainer[str]
    dependencies: _containers.RepeatedScalarFieldContainer[str]
    max_retries: int
    timeout_s: float
    delay_s: float
    idempotency_key: str
    id: str
    def __init__(self, type: _Optional[str] = ..., payload: _Optional[bytes] = ..., context: _Optional[_Mapping[str, str]] = ..., priority: _Optional[_Union[Priority, str]] = ..., difficulty: _Optional[int] = ..., required_capabilities: _Optional[_Iterable[str]] = ..., dependencies: _Optional[_Iterable[str]] = ..., max_retries: _Optional[int] = ..., timeout_s: _Optional[float] = ..., delay_s: _Optional[float] = ..., idempotency_key: _Optional[str] = ..., id: _Optional[str] = ...) -> None: ...

class Task(_message.Message):
    __slots__ = ("id", "spec", "status", "origin_node", "owner_node", "created_ns", "assigned_worker", "attempt", "failures", "not_before_ns", "queued_ns", "claimed_ns", "started_ns", "finished_ns", "lease_deadline_ns", "result", "error", "hops", "from_node", "handoff_peer")
    ID_FIELD_NUMBER: _ClassVar[int]
    SPEC_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    ORIGIN_NODE_FIELD_NUMBER: _ClassVar[int]
    OWNER_NODE_FIELD_NUMBER: _ClassVar[int]
    CREATED_NS_FIELD_NUMBER: _ClassVar[int]
    ASSIGNED_WORKER_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    FAILURES_FIELD_NUMBER: _ClassVar[int]
    NOT_BEFORE_NS_FIELD_NUMBER: _ClassVar[int]
    QUEUED_NS_FIELD_NUMBER: _ClassVar[int]
    CLAIMED_NS_FIELD_NUMBER: _ClassVar[int]
    STARTED_NS_FIELD_NUMBER: _ClassVar[int]
    FINISHED_NS_FIELD_NUMBER: _ClassVar[int]
    LEASE_DEADLINE_NS_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    HOPS_FIELD_NUMBER: _ClassVar[int]
    FROM_NODE_FIELD_NUMBER: _ClassVar[int]
    HANDOFF_PEER_FIELD_NUMBER: _ClassVar[int]
    id: str
    spec: TaskSpec
    status: TaskStatus
    origin_node: str
    owner_node: str
    created_ns: int
    assigned_worker: str
    attempt: int
    failures: int
    not_before_ns: int
    queued_ns: int
    claimed_ns: int
    started_ns: int
    finished_ns: int
    lease_deadline_ns: int
    result: bytes
    error: str
    hops: int
    from_node: str
    handoff_peer: str
    def __init__(self, id: _Optional[str] = ..., spec: _Optional[_Union[TaskSpec, _Mapping]] = ..., status: _Optional[_Union[TaskStatus, str]] = ..., origin_node: _Optional[str] = ..., owner_node: _Optional[str] = ..., created_ns: _Optional[int] = ..., assigned_worker: _Optional[str] = ..., attempt: _Optional[int] = ..., failures: _Optional[int] = ..., not_before_ns: _Optional[int] = ..., queued_ns: _Optional[int] = ..., claimed_ns: _Optional[int] = ..., started_ns: _Optional[int] = ..., finished_ns: _Optional[int] = ..., lease_deadline_ns: _Optional[int] = ..., result: _Optional[bytes] = ..., error: _Optional[str] = ..., hops: _Optional[int] = ..., from_node: _Optional[str] = ..., handoff_peer: _Optional[str] = ...) -> None: ...

class LeaseRef(_message.Message):
    __slots__ = ("task_id", "attempt", "worker_id")
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    WORKER_ID_FIELD_NUMBER: _ClassVar[int]
    task_id: str
    attempt: int
    worker_id: str
    def __init__(self, task_id: _Optional[str] = ..., attempt: _Optional[int] = ..., worker_id: _Optional[str] = ...) -> None: ...
