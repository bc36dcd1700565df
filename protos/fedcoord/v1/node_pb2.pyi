from protos.fedcoord.v1 import common_pb2 as _common_pb2
from protos.fedcoord.v1 import federation_pb2 as _federation_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class SubmitRequest(_message.Message):
    __slots__ = ("tasks",)
    TASKS_FIELD_NUMBER: _ClassVar[int]
    tasks: _containers.RepeatedCompositeFieldContainer[_common_pb2.TaskSpec]
    def __init__(self, tasks: _Optional[_Iterable[_Union[_common_pb2.TaskSpec, _Mapping]]] = ...) -> None: ...

class SubmitReply(_message.Message):
    __slots__ = ("task_ids",)
    TASK_IDS_FIELD_NUMBER: _ClassVar[int]
    task_ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, task_ids: _Optional[_Iterable[str]] = ...) -> None: ...

class WorkerSpec(_message.Message):
    __slots__ = ("id", "capabilities", "skill", "concurrency")
    ID_FIELD_NUMBER: _ClassVar[int]
    CAPABILITIES_FIELD_NUMBER: _ClassVar[int]
    SKILL_FIELD_NUMBER: _ClassVar[int]
    CONCURRENCY_FIELD_NUMBER: _ClassVar[int]
    id: str
    capabilities: _containers.RepeatedScalarFieldContainer[str]
    skill: int
    concurrency: int
    def __init__(self, id: _Optional[str] = ..., capabilities: _Optional[_Iterable[str]] = ..., skill: _Optional[int] = ..., concurrency: _Optional[int] = ...) -> None: ...

class WorkerInfo(_message.Message):
    __slots__ = ("id", "capabilities", "skill", "concurrency", "healthy", "health", "active", "completed", "failed", "timed_out", "success_rate", "avg_completion_s", "busy_s", "registered_ns", "last_seen_ns")
    ID_FIELD_NUMBER: _ClassVar[int]
    CAPABILITIES_FIELD_NUMBER: _ClassVar[int]
    SKILL_FIELD_NUMBER: _ClassVar[int]
    CONCURRENCY_FIELD_NUMBER: _ClassVar[int]
    HEALTHY_FIELD_NUMBER: _ClassVar[int]
    HEALTH_FIELD_NUMBER: _ClassVar[int]
    ACTIVE_FIELD_NUMBER: _ClassVar[int]
    COMPLETED_FIELD_NUMBER: _ClassVar[int]
    FAILED_FIELD_NUMBER: _ClassVar[int]
    TIMED_OUT_FIELD_NUMBER: _ClassVar[int]
    SUCCESS_RATE_FIELD_NUMBER: _ClassVar[int]
    AVG_COMPLETION_S_FIELD_NUMBER: _ClassVar[int]
    BUSY_S_FIELD_NUMBER: _ClassVar[int]
    REGISTERED_NS_FIELD_NUMBER: _ClassVar[int]
    LAST_SEEN_NS_FIELD_NUMBER: _ClassVar[int]
    id: str
    capabilities: _containers.RepeatedScalarFieldContainer[str]
    skill: int
    concurrency: int
    healthy: bool
    health: str
    active: int
    completed: int
    failed: int
    timed_out: int
    success_rate: float
    avg_completion_s: float
    busy_s: float
    registered_ns: int
    last_seen_ns: int
    def __init__(self, id: _Optional[str] = ..., capabilities: _Optional[_Iterable[str]] = ..., skill: _Optional[int] = ..., concurrency: _Optional[int] = ..., healthy: _Optional[bool] = ..., health: _Optional[str] = ..., active: _Optional[int] = ..., completed: _Optional[int] = ..., failed: _Optional[int] = ..., timed_out: _Optional[int] = ..., success_rate: _Optional[float] = ..., avg_completion_s: _Optional[float] = ..., busy_s: _Optional[float] = ..., registered_ns: _Optional[int] = ..., last_seen_ns: _Optional[int] = ...) -> None: ...

class DeregisterWorkerRequest(_message.Message):
    __slots__ = ("worker_id",)
    WORKER_ID_FIELD_NUMBER: _ClassVar[int]
    worker_id: str
    def __init__(self, worker_id: _Optional[str] = ...) -> None: ...

class DeregisterWorkerReply(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class Lease(_message.Message):
    __slots__ = ("task_id", "attempt", "worker_id", "deadline_ns", "spec")
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    WORKER_ID_FIELD_NUMBER: _ClassVar[int]
    DEADLINE_NS_FIELD_NUMBER: _ClassVar[int]
    SPEC_FIELD_NUMBER: _ClassVar[int]
    task_id: str
    attempt: int
    worker_id: str
    deadline_ns: int
    spec: _common_pb2.TaskSpec
    def __init__(self, task_id: _Optional[str] = ..., attempt: _Optional[int] = ..., worker_id: _Optional[str] = ..., deadline_ns: _Optional[int] = ..., spec: _Optional[_Union[_common_pb2.TaskSpec, _Mapping]] = ...) -> None: ...

class ClaimRequest(_message.Message):
    __slots__ = ("worker_id", "max_tasks", "wait_s")
    WORKER_ID_FIELD_NUMBER: _ClassVar[int]
    MAX_TASKS_FIELD_NUMBER: _ClassVar[int]
    WAIT_S_FIELD_NUMBER: _ClassVar[int]
    worker_id: str
    max_tasks: int
    wait_s: float
    def __init__(self, worker_id: _Optional[str] = ..., max_tasks: _Optional[int] = ..., wait_s: _Optional[float] = ...) -> None: ...

class ClaimReply(_message.Message):
    __slots__ = ("leases",)
    LEASES_FIELD_NUMBER: _ClassVar[int]
    leases: _containers.RepeatedCompositeFieldContainer[Lease]
    def __init__(self, leases: _Optional[_Iterable[_Union[Lease, _Mapping]]] = ...) -> None: ...

class HeartbeatRequest(_message.Message):
    __slots__ = ("worker_id",)
    WORKER_ID_FIELD_NUMBER: _ClassVar[int]
    worker_id: str
    def __init__(self, worker_id: _Optional[str] = ...) -> None: ...

class HeartbeatReply(_message.Message):
    __slots__ = ("healthy", "revoked")
    HEALTHY_FIELD_NUMBER: _ClassVar[int]
    REVOKED_FIELD_NUMBER: _ClassVar[int]
    healthy: bool
    revoked: _containers.RepeatedCompositeFieldContainer[_common_pb2.LeaseRef]
    def __init__(self, healthy: _Optional[bool] = ..., revoked: _Optional[_Iterable[_Union[_common_pb2.LeaseRef, _Mapping]]] = ...) -> None: ...

class CompleteRequest(_message.Message):
    __slots__ = ("lease", "result")
    LEASE_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    lease: _common_pb2.LeaseRef
    result: bytes
    def __init__(self, lease: _Optional[_Union[_common_pb2.LeaseRef, _Mapping]] = ..., result: _Optional[bytes] = ...) -> None: ...

class FailRequest(_message.Message):
    __slots__ = ("lease", "error", "no_retry")
    LEASE_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    NO_RETRY_FIELD_NUMBER: _ClassVar[int]
    lease: _common_pb2.LeaseRef
    error: str
    no_retry: bool
    def __init__(self, lease: _Optional[_Union[_common_pb2.LeaseRef, _Mapping]] = ..., error: _Optional[str] = ..., no_retry: _Optional[bool] = ...) -> None: ...

class Ack(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class TaskRef(_message.Message):
    __slots__ = ("task_id",)
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    task_id: str
    def __init__(self, task_id: _Optional[str] = ...) -> None: ...

class CancelReply(_message.Message):
    __slots__ = ("status",)
    STATUS_FIELD_NUMBER: _ClassVar[int]
    status: _common_pb2.TaskStatus
    def __init__(self, status: _Optional[_Union[_common_pb2.TaskStatus, str]] = ...) -> None: ...

class WaitTaskRequest(_message.Message):
    __slots__ = ("task_id", "timeout_s")
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_S_FIELD_NUMBER: _ClassVar[int]
    task_id: str
    timeout_s: float
    def __init__(self, task_id: _Optional[str] = ..., timeout_s: _Optional[float] = ...) -> None: ...

class WorkerMessage(_message.Message):
    __slots__ = ("hello", "credit", "started", "completions", "failures", "heartbeat")
    HELLO_FIELD_NUMBER: _ClassVar[int]
    CREDIT_FIELD_NUMBER: _ClassVar[int]
    STARTED_FIELD_NUMBER: _ClassVar[int]
    COMPLETIONS_FIELD_NUMBER: _ClassVar[int]
    FAILURES_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_FIELD_NUMBER: _ClassVar[int]
    hello: WorkerSpec
    credit: int
    started: _containers.RepeatedCompositeFieldContainer[_common_pb2.LeaseRef]
    completions: _containers.RepeatedCompositeFieldContainer[Completion]
    failures: _containers.RepeatedCompositeFieldContainer[Failure]
    heartbeat: bool
    def __init__(self, hello: _Optional[_Union[WorkerSpec, _Mapping]] = ..., credit: _Optional[int] = ..., started: _Optional[_Iterable[_Union[_common_pb2.LeaseRef, _Mapping]]] = ..., completions: _Optional[_Iterable[_Union[Completion, _Mapping]]] = ..., failures: _Optional[_Iterable[_Union[Failure, _Mapping]]] = ..., heartbeat: _Optional[bool] = ...) -> None: ...

class Completion(_message.Message):
    __slots__ = ("task_id", "attempt", "result")
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    task_id: str
    attempt: int
    result: bytes
    def __init__(self, task_id: _Optional[str] = ..., attempt: _Optional[int] = ..., result: _Optional[bytes] = ...) -> None: ...

class Failure(_message.Message):
    __slots__ = ("task_id", "attempt", "error", "no_retry")
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    NO_RETRY_FIELD_NUMBER: _ClassVar[int]
    task_id: str
    attempt: int
    error: str
    no_retry: bool
    def __init__(self, task_id: _Optional[str] = ..., attempt: _Optional[int] = ..., error: _Optional[str] = ..., no_retry: _Optional[bool] = ...) -> None: ...

class NodeMessage(_message.Message):
    __slots__ = ("registered", "leases", "revoked", "acked", "rejected", "healthy")
    REGISTERED_FIELD_NUMBER: _ClassVar[int]
    LEASES_FIELD_NUMBER: _ClassVar[int]
    REVOKED_FIELD_NUMBER: _ClassVar[int]
    ACKED_FIELD_NUMBER: _ClassVar[int]
    REJECTED_FIELD_NUMBER: _ClassVar[int]
    HEALTHY_FIELD_NUMBER: _ClassVar[int]
    registered: WorkerInfo
    leases: _containers.RepeatedCompositeFieldContainer[Lease]
    revoked: _containers.RepeatedCompositeFieldContainer[_common_pb2.LeaseRef]
    acked: _containers.RepeatedCompositeFieldContainer[_common_pb2.LeaseRef]
    rejected: _containers.RepeatedCompositeFieldContainer[LeaseError]
    healthy: bool
    def __init__(self, registered: _Optional[_Union[WorkerInfo, _Mapping]] = ..., leases: _Optional[_Iterable[_Union[Lease, _Mapping]]] = ..., revoked: _Optional[_Iterable[_Union[_common_pb2.LeaseRef, _Mapping]]] = ..., acked: _Optional[_Iterable[_Union[_common_pb2.LeaseRef, _Mapping]]] = ..., rejected: _Optional[_Iterable[_Union[LeaseError, _Mapping]]] = ..., healthy: _Optional[bool] = ...) -> None: ...

class LeaseError(_message.Message):
    __slots__ = ("task_id", "attempt", "code", "message")
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    task_id: str
    attempt: int
    code: str
    message: str
    def __init__(self, task_id: _Optional[str] = ..., attempt: _Optional[int] = ..., code: _Optional[str] = ..., message: _Optional[str] = ...) -> None: ...

class WatchRequest(_message.Message):
    __slots__ = ("max_queue",)
    MAX_QUEUE_FIELD_NUMBER: _ClassVar[int]
    max_queue: int
    def __init__(self, max_queue: _Optional[int] = ...) -> None: ...

class Event(_message.Message):
    __slots__ = ("kind", "task_id", "status", "type", "priority", "worker_id", "attempt", "ts_ns", "error")
    KIND_FIELD_NUMBER: _ClassVar[int]
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    PRIORITY_FIELD_NUMBER: _ClassVar[int]
    WORKER_ID_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    TS_NS_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    kind: str
    task_id: str
    status: _common_pb2.TaskStatus
    type: str
    priority: _common_pb2.Priority
    worker_id: str
    attempt: int
    ts_ns: int
    error: str
    def __init__(self, kind: _Optional[str] = ..., task_id: _Optional[str] = ..., status: _Optional[_Union[_common_pb2.TaskStatus, str]] = ..., type: _Optional[str] = ..., priority: _Optional[_Union[_common_pb2.Priority, str]] = ..., worker_id: _Optional[str] = ..., attempt: _Optional[int] = ..., ts_ns: _Optional[int] = ..., error: _Optional[str] = ...) -> None: ...

class EventBatch(_message.Message):
    __slots__ = ("events",)
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    events: _containers.RepeatedCompositeFieldContainer[Event]
    def __init__(self, events: _Optional[_Iterable[_Union[Event, _Mapping]]] = ...) -> None: ...

class StatsRequest(_message.Message):
    __slots__ = ("report", "history")
    REPORT_FIELD_NUMBER: _ClassVar[int]
    HISTORY_FIELD_NUMBER: _ClassVar[int]
    report: bool
    history: bool
    def __init__(self, report: _Optional[bool] = ..., history: _Optional[bool] = ...) -> None: ...

class Load(_message.Message):
    __slots__ = ("leased", "ready", "delayed", "pending", "handing_off", "slots", "ratio")
    LEASED_FIELD_NUMBER: _ClassVar[int]
    READY_FIELD_NUMBER: _ClassVar[int]
    DELAYED_FIELD_NUMBER: _ClassVar[int]
    PENDING_FIELD_NUMBER: _ClassVar[int]
    HANDING_OFF_FIELD_NUMBER: _ClassVar[int]
    SLOTS_FIELD_NUMBER: _ClassVar[int]
    RATIO_FIELD_NUMBER: _ClassVar[int]
    leased: int
    ready: int
    delayed: int
    pending: int
    handing_off: int
    slots: int
    ratio: float
    def __init__(self, leased: _Optional[int] = ..., ready: _Optional[int] = ..., delayed: _Optional[int] = ..., pending: _Optional[int] = ..., handing_off: _Optional[int] = ..., slots: _Optional[int] = ..., ratio: _Optional[float] = ...) -> None: ...

class StatsReply(_message.Message):
    __slots__ = ("node_id", "state", "load", "threshold", "active_by_status", "totals", "workers", "handoffs", "stats_json", "report_json", "privacy")
    class ActiveByStatusEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    class TotalsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    class HandoffsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    LOAD_FIELD_NUMBER: _ClassVar[int]
    THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    ACTIVE_BY_STATUS_FIELD_NUMBER: _ClassVar[int]
    TOTALS_FIELD_NUMBER: _ClassVar[int]
    WORKERS_FIELD_NUMBER: _ClassVar[int]
    HANDOFFS_FIELD_NUMBER: _ClassVar[int]
    STATS_JSON_FIELD_NUMBER: _ClassVar[int]
    REPORT_JSON_FIELD_NUMBER: _ClassVar[int]
    PRIVACY_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    state: str
    load: Load
    threshold: float
    active_by_status: _containers.ScalarMap[str, int]
    totals: _containers.ScalarMap[str, int]
    workers: _containers.RepeatedCompositeFieldContainer[WorkerInfo]
    handoffs: _containers.ScalarMap[str, int]
    stats_json: bytes
    report_json: bytes
    privacy: _federation_pb2.PrivacyStatus
    def __init__(self, node_id: _Optional[str] = ..., state: _Optional[str] = ..., load: _Optional[_Union[Load, _Mapping]] = ..., threshold: _Optional[float] = ..., active_by_status: _Optional[_Mapping[str, int]] = ..., totals: _Optional[_Mapping[str, int]] = ..., workers: _Optional[_Iterable[_Union[WorkerInfo, _Mapping]]] = ..., handoffs: _Optional[_Mapping[str, int]] = ..., stats_json: _Optional[bytes] = ..., report_json: _Optional[bytes] = ..., privacy: _Optional[_Union[_federation_pb2.PrivacyStatus, _Mapping]] = ...) -> None: ...

class SummaryRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class SummaryReply(_message.Message):
    __slots__ = ("status", "reason", "summary", "privacy", "node_id")
    STATUS_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    SUMMARY_FIELD_NUMBER: _ClassVar[int]
    PRIVACY_FIELD_NUMBER: _ClassVar[int]
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    status: str
    reason: str
    summary: _federation_pb2.ReleasedSummary
    privacy: _federation_pb2.PrivacyStatus
    node_id: str
    def __init__(self, status: _Optional[str] = ..., reason: _Optional[str] = ..., summary: _Optional[_Union[_federation_pb2.ReleasedSummary, _Mapping]] = ..., privacy: _Optional[_Union[_federation_pb2.PrivacyStatus, _Mapping]] = ..., node_id: _Optional[str] = ...) -> None: ...

class ApplyFederationRequest(_message.Message):
    __slots__ = ("view",)
    VIEW_FIELD_NUMBER: _ClassVar[int]
    view: _federation_pb2.GlobalView
    def __init__(self, view: _Optional[_Union[_federation_pb2.GlobalView, _Mapping]] = ...) -> None: ...

class ApplyFederationReply(_message.Message):
    __slots__ = ("threshold", "policy")
    THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    POLICY_FIELD_NUMBER: _ClassVar[int]
    threshold: float
    policy: str
    def __init__(self, threshold: _Optional[float] = ..., policy: _Optional[str] = ...) -> None: ...
