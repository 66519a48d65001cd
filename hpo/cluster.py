"""Connecting the search driver to Ray: a local Ray by default, a running cluster with ``--address``."""

from __future__ import annotations

import ray


def connect(address: str | None) -> None:
    """Start a local Ray (``address`` None) or join the cluster at ``address`` (``auto`` on a head node)."""
    ray.init(address=address, include_dashboard=False, configure_logging=False)
