"""Protocol sources (package fedcoord.v1) and their generated Python (next issues)."""
