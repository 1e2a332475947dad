"""RQ tasks of live updates (API section 6): a group item's fan-out to the members who
hold a stream (``service/live_updates_ops.py`` enqueues it by name)."""

from __future__ import annotations

from jobs.context import get_state
from service import live_updates_ops as ops


def fan_out_group(group_id: int, version: int) -> int:
    return ops.fan_out_group(get_state(), group_id, version)
