"""Concurrency: 8 threads marking items and one marking all, on the same user and group.

The final counts are exact in Redis and in Postgres, ``mark-all``'s N is exactly the items
it found unread, and every caller of mark-viewed on one item gets the same first time.
"""

from __future__ import annotations

import random
import threading
from collections import defaultdict

from sqlalchemy import text

from tests.support.group_feed import (
    make_group,
    mark,
    mark_all,
    pg_viewed,
    post_item,
    unread,
    viewed_map,
)

USER, ITEMS, THREADS = 55, 60, 8


def _run_all(workers) -> None:
    barrier = threading.Barrier(len(workers))
    errors: list[BaseException] = []

    def wrap(fn):
        def run():
            barrier.wait()
            try:
                fn()
            except BaseException as exc:  # noqa: BLE001 - re-raised in the main thread
                errors.append(exc)

        return run

    threads = [threading.Thread(target=wrap(fn)) for fn in workers]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not any(t.is_alive() for t in threads), "a worker hung"
    if errors:
        raise errors[0]


def test_eight_markers_and_one_mark_all(app, auth, admin_headers, state):
    client = app.test_client()
    headers = auth(USER)
    group = make_group(client, admin_headers, members=(USER,))
    items = [post_item(client, headers, group, f"i{n}")["id"] for n in range(ITEMS)]
    assert unread(client, headers, group) == ITEMS  # the cache is warm before the race
    times: dict[int, set[str]] = defaultdict(set)
    lock = threading.Lock()
    mark_all_count: list[int] = []

    def marker(seed: int):
        local = app.test_client()
        picks = random.Random(seed).sample(items, k=ITEMS // 4)
        for item in picks:
            r = mark(local, headers, item)
            assert r.status_code == 200
            with lock:
                times[item].add(r.get_json()["viewed_at"])

    def all_marker():
        r = mark_all(app.test_client(), headers, group)
        assert r.status_code == 200
        mark_all_count.append(r.get_json()["count"])

    _run_all([*(lambda s=s: marker(s) for s in range(THREADS)), all_marker])

    assert unread(client, headers, group) == 0
    assert all(viewed_map(client, headers, group).values())
    assert all(len(v) == 1 for v in times.values())  # one first viewed_at per item
    unpicked = set(items) - set(times)
    assert unpicked  # the seeds leave some items to mark-all alone
    with state.db.session() as s:
        rows = s.execute(text(
            "SELECT count(*), count(DISTINCT item_id) FROM feed_item_views WHERE user_id = :u"
        ), {"u": USER}).one()
        # mark-all's rows share its transaction time; an unpicked item has one of them.
        by_mark_all = s.execute(text(
            "SELECT count(*) FROM feed_item_views WHERE user_id = :u AND viewed_at ="
            " (SELECT viewed_at FROM feed_item_views WHERE user_id = :u AND item_id = :i)"
        ), {"u": USER, "i": min(unpicked)}).scalar_one()
    assert tuple(rows) == (ITEMS, ITEMS)
    assert mark_all_count[0] == by_mark_all  # N = exactly the items that were unread

    # Second round: unmarking races with mark-all and with viewers; Redis == Postgres.
    def unmarker(seed: int):
        local = app.test_client()
        r = random.Random(seed)
        for item in r.sample(items, k=ITEMS // 4):
            assert mark(local, headers, item, viewed=r.random() < 0.3).status_code == 200

    _run_all([*(lambda s=s: unmarker(100 + s) for s in range(THREADS)), all_marker])
    truth = pg_viewed(state, USER, group)
    assert viewed_map(client, headers, group) == truth
    assert unread(client, headers, group) == sum(not v for v in truth.values())
