"""Web dashboards: the node view (served by ``fedcoord node``) and the federation view (served
by ``fedcoord up`` and ``fedcoord aggregator``). Starlette under uvicorn inside those processes;
the pages are static HTML and a little JavaScript with a vendored chart library (ECharts), fed
by JSON and server-sent events."""

from fedcoord.dashboard.access import Access, Role
from fedcoord.dashboard.server import DashboardServer

__all__ = ["Access", "DashboardServer", "Role"]
