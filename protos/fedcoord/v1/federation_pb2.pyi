from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class PrivacyCost(_message.Message):
    __slots__ = ("mechanism", "scale", "variance", "rho", "m", "delta", "epsilon", "epsilon_budget", "epsilon_left", "suppress_below")
    MECHANISM_FIELD_NUMBER: _ClassVar[int]
    SCALE_FIELD_NUMBER: _ClassVar[int]
    VARIANCE_FIELD_NUMBER: _ClassVar[int]
    RHO_FIELD_NUMBER: _ClassVar[int]
    M_FIELD_NUMBER: _ClassVar[int]
    DELTA_FIELD_NUMBER: _ClassVar[int]
    EPSILON_FIELD_NUMBER: _ClassVar[int]
    EPSILON_BUDGET_FIELD_NUMBER: _ClassVar[int]
    EPSILON_LEFT_FIELD_NUMBER: _ClassVar[int]
    SUPPRESS_BELOW_FIELD_NUMBER: _ClassVar[int]
    mechanism: str
    scale: float
    variance: float
    rho: float
    m: int
    delta: float
    epsilon: float
    epsilon_budget: float
    epsilon_left: float
    suppress_below: int
    def __init__(self, mechanism: _Optional[str] = ..., scale: _Optional[float] = ..., variance: _Optional[float] = ..., rho: _Optional[float] = ..., m: _Optional[int] = ..., delta: _Optional[float] = ..., epsilon: _Optional[float] = ..., epsilon_budget: _Optional[float] = ..., epsilon_left: _Optional[float] = ..., suppress_below: _Optional[int] = ...) -> None: ...

class ReleasedSummary(_message.Message):
    __slots__ = ("schema", "node_id", "window", "window_s", "types", "submitted", "completed", "failed", "handed_off_in", "handed_off_out", "completion_edges_s", "completion_counts", "occupied_slots", "capacity_bucket", "cost")
    SCHEMA_FIELD_NUMBER: _ClassVar[int]
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    WINDOW_FIELD_NUMBER: _ClassVar[int]
    WINDOW_S_FIELD_NUMBER: _ClassVar[int]
    TYPES_FIELD_NUMBER: _ClassVar[int]
    SUBMITTED_FIELD_NUMBER: _ClassVar[int]
    COMPLETED_FIELD_NUMBER: _ClassVar[int]
    FAILED_FIELD_NUMBER: _ClassVar[int]
    HANDED_OFF_IN_FIELD_NUMBER: _ClassVar[int]
    HANDED_OFF_OUT_FIELD_NUMBER: _ClassVar[int]
    COMPLETION_EDGES_S_FIELD_NUMBER: _ClassVar[int]
    COMPLETION_COUNTS_FIELD_NUMBER: _ClassVar[int]
    OCCUPIED_SLOTS_FIELD_NUMBER: _ClassVar[int]
    CAPACITY_BUCKET_FIELD_NUMBER: _ClassVar[int]
    COST_FIELD_NUMBER: _ClassVar[int]
    schema: int
    node_id: str
    window: int
    window_s: float
    types: _containers.RepeatedScalarFieldContainer[str]
    submitted: _containers.RepeatedScalarFieldContainer[int]
    completed: _containers.RepeatedScalarFieldContainer[int]
    failed: _containers.RepeatedScalarFieldContainer[int]
    handed_off_in: _containers.RepeatedScalarFieldContainer[int]
    handed_off_out: _containers.RepeatedScalarFieldContainer[int]
    completion_edges_s: _containers.RepeatedScalarFieldContainer[float]
    completion_counts: _containers.RepeatedScalarFieldContainer[int]
    occupied_slots: int
    capacity_bucket: int
    cost: PrivacyCost
    def __init__(self, schema: _Optional[int] = ..., node_id: _Optional[str] = ..., window: _Optional[int] = ..., window_s: _Optional[float] = ..., types: _Optional[_Iterable[str]] = ..., submitted: _Optional[_Iterable[int]] = ..., completed: _Optional[_Iterable[int]] = ..., failed: _Optional[_Iterable[int]] = ..., handed_off_in: _Optional[_Iterable[int]] = ..., handed_off_out: _Optional[_Iterable[int]] = ..., completion_edges_s: _Optional[_Iterable[float]] = ..., completion_counts: _Optional[_Iterable[int]] = ..., occupied_slots: _Optional[int] = ..., capacity_bucket: _Optional[int] = ..., cost: _Optional[_Union[PrivacyCost, _Mapping]] = ...) -> None: ...

class Estimate(_message.Message):
    __slots__ = ("value", "sd")
    VALUE_FIELD_NUMBER: _ClassVar[int]
    SD_FIELD_NUMBER: _ClassVar[int]
    value: float
    sd: float
    def __init__(self, value: _Optional[float] = ..., sd: _Optional[float] = ...) -> None: ...

class QuantileEstimate(_message.Message):
    __slots__ = ("q", "value", "low", "high")
    Q_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    LOW_FIELD_NUMBER: _ClassVar[int]
    HIGH_FIELD_NUMBER: _ClassVar[int]
    q: float
    value: float
    low: float
    high: float
    def __init__(self, q: _Optional[float] = ..., value: _Optional[float] = ..., low: _Optional[float] = ..., high: _Optional[float] = ...) -> None: ...

class NodeEstimate(_message.Message):
    __slots__ = ("node_id", "window", "occupied", "capacity", "load", "handed_off_out_per_s", "handed_off_in_per_s")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    WINDOW_FIELD_NUMBER: _ClassVar[int]
    OCCUPIED_FIELD_NUMBER: _ClassVar[int]
    CAPACITY_FIELD_NUMBER: _ClassVar[int]
    LOAD_FIELD_NUMBER: _ClassVar[int]
    HANDED_OFF_OUT_PER_S_FIELD_NUMBER: _ClassVar[int]
    HANDED_OFF_IN_PER_S_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    window: int
    occupied: Estimate
    capacity: int
    load: Estimate
    handed_off_out_per_s: Estimate
    handed_off_in_per_s: Estimate
    def __init__(self, node_id: _Optional[str] = ..., window: _Optional[int] = ..., occupied: _Optional[_Union[Estimate, _Mapping]] = ..., capacity: _Optional[int] = ..., load: _Optional[_Union[Estimate, _Mapping]] = ..., handed_off_out_per_s: _Optional[_Union[Estimate, _Mapping]] = ..., handed_off_in_per_s: _Optional[_Union[Estimate, _Mapping]] = ...) -> None: ...

class Dropped(_message.Message):
    __slots__ = ("node_id", "reason")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    reason: str
    def __init__(self, node_id: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class GlobalView(_message.Message):
    __slots__ = ("round", "at_ns", "window", "window_s", "types", "participants", "dropped", "missing", "submitted_per_s", "throughput_per_s", "failed_per_s", "handed_off_per_s", "occupied", "capacity", "federation_load", "completion_quantiles_s", "completed_in_histogram", "nodes")
    class SubmittedPerSEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: Estimate
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[Estimate, _Mapping]] = ...) -> None: ...
    class ThroughputPerSEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: Estimate
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[Estimate, _Mapping]] = ...) -> None: ...
    class FailedPerSEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: Estimate
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[Estimate, _Mapping]] = ...) -> None: ...
    class NodesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: NodeEstimate
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[NodeEstimate, _Mapping]] = ...) -> None: ...
    ROUND_FIELD_NUMBER: _ClassVar[int]
    AT_NS_FIELD_NUMBER: _ClassVar[int]
    WINDOW_FIELD_NUMBER: _ClassVar[int]
    WINDOW_S_FIELD_NUMBER: _ClassVar[int]
    TYPES_FIELD_NUMBER: _ClassVar[int]
    PARTICIPANTS_FIELD_NUMBER: _ClassVar[int]
    DROPPED_FIELD_NUMBER: _ClassVar[int]
    MISSING_FIELD_NUMBER: _ClassVar[int]
    SUBMITTED_PER_S_FIELD_NUMBER: _ClassVar[int]
    THROUGHPUT_PER_S_FIELD_NUMBER: _ClassVar[int]
    FAILED_PER_S_FIELD_NUMBER: _ClassVar[int]
    HANDED_OFF_PER_S_FIELD_NUMBER: _ClassVar[int]
    OCCUPIED_FIELD_NUMBER: _ClassVar[int]
    CAPACITY_FIELD_NUMBER: _ClassVar[int]
    FEDERATION_LOAD_FIELD_NUMBER: _ClassVar[int]
    COMPLETION_QUANTILES_S_FIELD_NUMBER: _ClassVar[int]
    COMPLETED_IN_HISTOGRAM_FIELD_NUMBER: _ClassVar[int]
    NODES_FIELD_NUMBER: _ClassVar[int]
    round: int
    at_ns: int
    window: int
    window_s: float
    types: _containers.RepeatedScalarFieldContainer[str]
    participants: _containers.RepeatedScalarFieldContainer[str]
    dropped: _containers.RepeatedCompositeFieldContainer[Dropped]
    missing: _containers.RepeatedScalarFieldContainer[str]
    submitted_per_s: _containers.MessageMap[str, Estimate]
    throughput_per_s: _containers.MessageMap[str, Estimate]
    failed_per_s: _containers.MessageMap[str, Estimate]
    handed_off_per_s: Estimate
    occupied: Estimate
    capacity: int
    federation_load: Estimate
    completion_quantiles_s: _containers.RepeatedCompositeFieldContainer[QuantileEstimate]
    completed_in_histogram: Estimate
    nodes: _containers.MessageMap[str, NodeEstimate]
    def __init__(self, round: _Optional[int] = ..., at_ns: _Optional[int] = ..., window: _Optional[int] = ..., window_s: _Optional[float] = ..., types: _Optional[_Iterable[str]] = ..., participants: _Optional[_Iterable[str]] = ..., dropped: _Optional[_Iterable[_Union[Dropped, _Mapping]]] = ..., missing: _Optional[_Iterable[str]] = ..., submitted_per_s: _Optional[_Mapping[str, Estimate]] = ..., throughput_per_s: _Optional[_Mapping[str, Estimate]] = ..., failed_per_s: _Optional[_Mapping[str, Estimate]] = ..., handed_off_per_s: _Optional[_Union[Estimate, _Mapping]] = ..., occupied: _Optional[_Union[Estimate, _Mapping]] = ..., capacity: _Optional[int] = ..., federation_load: _Optional[_Union[Estimate, _Mapping]] = ..., completion_quantiles_s: _Optional[_Iterable[_Union[QuantileEstimate, _Mapping]]] = ..., completed_in_histogram: _Optional[_Union[Estimate, _Mapping]] = ..., nodes: _Optional[_Mapping[str, NodeEstimate]] = ...) -> None: ...

class PrivacyStatus(_message.Message):
    __slots__ = ("enabled", "mechanism", "scale", "variance", "m", "delta", "epsilon_budget", "rho_budget", "rho_per_release", "releases", "refused", "last_window", "epsilon_current", "epsilon_worst", "epsilon_left", "next_allowed")
    ENABLED_FIELD_NUMBER: _ClassVar[int]
    MECHANISM_FIELD_NUMBER: _ClassVar[int]
    SCALE_FIELD_NUMBER: _ClassVar[int]
    VARIANCE_FIELD_NUMBER: _ClassVar[int]
    M_FIELD_NUMBER: _ClassVar[int]
    DELTA_FIELD_NUMBER: _ClassVar[int]
    EPSILON_BUDGET_FIELD_NUMBER: _ClassVar[int]
    RHO_BUDGET_FIELD_NUMBER: _ClassVar[int]
    RHO_PER_RELEASE_FIELD_NUMBER: _ClassVar[int]
    RELEASES_FIELD_NUMBER: _ClassVar[int]
    REFUSED_FIELD_NUMBER: _ClassVar[int]
    LAST_WINDOW_FIELD_NUMBER: _ClassVar[int]
    EPSILON_CURRENT_FIELD_NUMBER: _ClassVar[int]
    EPSILON_WORST_FIELD_NUMBER: _ClassVar[int]
    EPSILON_LEFT_FIELD_NUMBER: _ClassVar[int]
    NEXT_ALLOWED_FIELD_NUMBER: _ClassVar[int]
    enabled: bool
    mechanism: str
    scale: float
    variance: float
    m: int
    delta: float
    epsilon_budget: float
    rho_budget: float
    rho_per_release: float
    releases: int
    refused: int
    last_window: int
    epsilon_current: float
    epsilon_worst: float
    epsilon_left: float
    next_allowed: bool
    def __init__(self, enabled: _Optional[bool] = ..., mechanism: _Optional[str] = ..., scale: _Optional[float] = ..., variance: _Optional[float] = ..., m: _Optional[int] = ..., delta: _Optional[float] = ..., epsilon_budget: _Optional[float] = ..., rho_budget: _Optional[float] = ..., rho_per_release: _Optional[float] = ..., releases: _Optional[int] = ..., refused: _Optional[int] = ..., last_window: _Optional[int] = ..., epsilon_current: _Optional[float] = ..., epsilon_worst: _Optional[float] = ..., epsilon_left: _Optional[float] = ..., next_allowed: _Optional[bool] = ...) -> None: ...
