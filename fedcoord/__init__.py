"""The ``fedcoord`` command line (``fedcoord.cli``)."""

import node  # noqa: F401 - first: sets gRPC's fork support and log level before grpc loads (see node/__init__.py)
