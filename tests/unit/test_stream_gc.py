"""The stream process's garbage-collection policy (``service.stream_server.GcPolicy``):
freeze after streams open, collect in full only once a quarter of the open streams have
closed, never more than once per ``every`` seconds."""

from __future__ import annotations

from service.stream_server import GcPolicy


def test_nothing_to_do_without_opens_or_closes():
    assert GcPolicy().decide(now=10.0, open_streams=10_000) is None


def test_opened_streams_are_frozen_at_most_once_per_interval():
    policy = GcPolicy(every=1.0, last=10.0, opened=50)
    assert policy.decide(now=10.5, open_streams=50) is None
    assert policy.decide(now=11.0, open_streams=50) == "freeze"


def test_a_full_collection_waits_for_a_quarter_of_the_open_streams_to_close():
    policy = GcPolicy(closed=2_499)
    assert policy.decide(now=5.0, open_streams=10_000) is None
    policy.closed = 2_500
    assert policy.decide(now=5.0, open_streams=10_000) == "full"


def test_few_streams_need_a_thousand_closes():
    policy = GcPolicy(closed=999, opened=1)
    assert policy.decide(now=5.0, open_streams=100) == "freeze"
    policy.closed = 1000
    assert policy.decide(now=5.0, open_streams=100) == "full"
