"""``python -m fedcoord``: the same as the ``fedcoord`` command."""

from fedcoord.cli import main

main()
