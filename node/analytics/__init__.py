"""Node analytics: counts, latency quantiles, throughput, utilization, error rate, per-minute
history, the performance report, and the per-window summaries the federation reads."""

from node.analytics.histogram import DEFAULT_COMPLETION_EDGES_S, FixedBinHistogram, FixedBins, LogHistogram
from node.analytics.stats import Analytics, MinuteRow, NodeStats, PerformanceReport, error_kind
from node.analytics.window import TypeWindow, Windows, WindowSummary

__all__ = [
    "DEFAULT_COMPLETION_EDGES_S",
    "Analytics",
    "FixedBinHistogram",
    "FixedBins",
    "LogHistogram",
    "MinuteRow",
    "NodeStats",
    "PerformanceReport",
    "TypeWindow",
    "WindowSummary",
    "Windows",
    "error_kind",
]
