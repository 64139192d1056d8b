"""Sandboxes: opencode servers on a backend, their lifecycle, idleness and repair."""
