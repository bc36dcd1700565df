"""The ``fedcoord`` command line (``fedcoord.cli``)."""

import os

# gRPC's core reads its log level once, when it is first imported (the CLI imports it early):
# without this, each fork of a Ray worker while a gRPC server runs (``simulate --engine
# flower``) prints an INFO line. Errors still show; GRPC_VERBOSITY in the environment wins.
os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
