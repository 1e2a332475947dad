"""The group feed's entity cache (DESIGN rule 7): a warm page is 0 SQL and 1 Redis round
trip (one per node on a cluster), assembled from cached JSON that matches ``FeedItemOut``;
an evicted entity is one batched fill; deletes and creates show on the next read; deep
pages and Redis down are answered from Postgres, the same."""

from __future__ import annotations

import pytest
import redis

from cache import group_feed as gf_cache
from service.group_feed import FeedItemOut
from tests.support.group_feed import FEED, feed, make_group, mark, post_item
from tests.support.metrics import Costs

ALICE, BOB = 11, 12


@pytest.fixture
def group(client, admin_headers):
    return make_group(client, admin_headers, members=(ALICE, BOB))


def _pg_page(state, group_id, limit=50, before=None):
    """The oracle: ids of the page straight from Postgres."""
    from storage import group_feed as store

    with state.db.session() as s:
        return [i.id for i in store.list_items(s, group_id, limit, before)]


def _page_trips(state) -> int:
    """A warm page's round trips: one pipeline, sent once per node it touches (the
    group's slot and the caller's may be on two nodes of a cluster)."""
    return 1 if isinstance(state.cache.redis, redis.Redis) else 2


def test_warm_page_is_0_sql_1_round_trip_and_matches_the_schema(
        client, auth, admin_headers, group, state, monkeypatch):
    items = [post_item(client, auth(ALICE), group, f"i{n}") for n in range(5)]
    mark(client, auth(BOB), items[1]["id"])
    costs = Costs(monkeypatch)
    cold, cold_sql, _ = costs.of(lambda: feed(client, auth(BOB), group))
    warm, sql, trips = costs.of(lambda: feed(client, auth(BOB), group))
    assert sql == 0 and 1 <= trips <= _page_trips(state)
    assert warm == cold
    assert [i["id"] for i in warm] == [i["id"] for i in reversed(items)]
    assert {i["id"]: i["has_viewed"] for i in warm} == {
        i["id"]: i["id"] == items[1]["id"] for i in items}
    # The assembled bytes are what the schema (the OpenAPI contract) describes.
    assert FeedItemOut(many=True).validate(warm) == {}
    assert warm == FeedItemOut(many=True).dump(FeedItemOut(many=True).load(warm))
    assert warm[0] == {k: v for k, v in items[-1].items() if k != "body"}
    # A cursor within the cached list, and an admin's page: warm too.
    (page, sql, trips) = costs.of(
        lambda: feed(client, auth(BOB), group, before=items[3]["id"], limit=2))
    assert [i["id"] for i in page] == [items[2]["id"], items[1]["id"]] and sql == 0
    feed(client, admin_headers, group)
    _, sql, trips = costs.of(lambda: feed(client, admin_headers, group))
    assert sql == 0 and 1 <= trips <= _page_trips(state)
    print(f"\n[group feed] warm page: {sql} SQL, {trips} Redis round trips; cold: "
          f"{cold_sql} SQL")


def test_evicted_entities_are_one_batched_fill(client, auth, group, state, monkeypatch):
    items = [post_item(client, auth(ALICE), group, f"i{n}") for n in range(6)]
    before = feed(client, auth(BOB), group)
    r, keys = state.cache.redis, state.cache.keys
    assert r.delete(*(gf_cache.item_key(keys, group, i["id"]) for i in items[1:4])) == 3
    costs = Costs(monkeypatch)
    after, sql, _ = costs.of(lambda: feed(client, auth(BOB), group))
    assert after == before and sql == 1  # one statement for the three
    _, sql, _ = costs.of(lambda: feed(client, auth(BOB), group))
    assert sql == 0
    # The whole list evicted: one fill for it, one for the entities it names.
    r.delete(gf_cache.items_key(keys, group), *(gf_cache.item_key(keys, group, i["id"])
                                                for i in items))
    again, sql, _ = costs.of(lambda: feed(client, auth(BOB), group))
    assert again == before and sql == 2


def test_delete_and_create_show_on_the_next_read(client, auth, group, state, monkeypatch):
    items = [post_item(client, auth(ALICE), group, f"i{n}") for n in range(4)]
    feed(client, auth(BOB), group)
    assert client.delete(f"{FEED}{items[2]['id']}/", headers=auth(ALICE)).status_code == 204
    costs = Costs(monkeypatch)
    page, sql, _ = costs.of(lambda: feed(client, auth(BOB), group))
    assert [i["id"] for i in page] == [items[3]["id"], items[1]["id"], items[0]["id"]]
    assert sql == 0
    assert not state.cache.redis.exists(gf_cache.item_key(state.cache.keys, group,
                                                          items[2]["id"]))
    new = post_item(client, auth(ALICE), group, "new")
    page, sql, _ = costs.of(lambda: feed(client, auth(BOB), group))
    assert page[0]["id"] == new["id"] and sql == 1  # the new entity's fill
    assert [i["id"] for i in page] == _pg_page(state, group)


def test_list_is_bounded_and_deep_pages_come_from_postgres(client, auth, admin_headers,
                                                             state, monkeypatch):
    from tests.integration.group_feed.test_group_feed_cache import USER, _fill_group

    group = make_group(client, admin_headers, members=(ALICE, USER))
    n = gf_cache.ITEMS_LIST_SIZE + 30
    _fill_group(state, group, items=n, viewed_every=7)
    first = feed(client, auth(USER), group, limit=100)
    lkey = gf_cache.items_key(state.cache.keys, group)
    assert state.cache.redis.zcard(lkey) == gf_cache.ITEMS_LIST_SIZE  # no sentinel: full
    costs = Costs(monkeypatch)
    deep, sql, _ = costs.of(lambda: feed(client, auth(USER), group, limit=100,
                                         before=first[-1]["id"]))
    assert sql > 0  # past the cached list
    assert [i["id"] for i in first + deep] == _pg_page(state, group, limit=200)
    assert [i["has_viewed"] for i in first + deep] == [
        p % 7 == 0 for p in range(n, 0, -1)][:200]
    # A create trims the list to its bound; deleting the newest keeps it exact.
    post_item(client, auth(ALICE), group, "newest")
    assert state.cache.redis.zcard(lkey) == gf_cache.ITEMS_LIST_SIZE
    newest = feed(client, auth(USER), group, limit=3)
    client.delete(f"{FEED}{newest[0]['id']}/", headers=auth(ALICE))
    for limit in (1, 50, 127, 128, 200):
        assert [i["id"] for i in feed(client, auth(USER), group, limit=limit)] == _pg_page(
            state, group, limit=limit)


def test_redis_down_same_page(client, auth, admin_headers, group, state):
    items = [post_item(client, auth(ALICE), group, f"i{n}") for n in range(3)]
    mark(client, auth(BOB), items[0]["id"])
    warm = feed(client, auth(BOB), group)
    state.cache.enabled = False
    try:
        assert feed(client, auth(BOB), group) == warm
        assert client.get(FEED, query_string={"group": group},
                          headers=auth(99)).status_code == 403
    finally:
        state.cache.enabled = True
    assert client.get(FEED, query_string={"group": group}, headers=auth(99)).status_code == 403
    assert client.get(FEED, query_string={"group": 999_999},
                      headers=admin_headers).status_code == 404
    assert client.get(FEED, query_string={"group": 999_999},
                      headers=auth(ALICE)).status_code == 404


def test_each_missing_piece_of_a_listed_page_is_filled_and_the_page_is_the_same(
        client, auth, admin_headers, group, state, monkeypatch):
    """With the group's list cached, a missing groups set, read state or entity is filled
    (SQL) and the page is the one Postgres gives; a non-member still gets 403."""
    items = [post_item(client, auth(ALICE), group, f"i{n}") for n in range(4)]
    mark(client, auth(BOB), items[2]["id"])
    warm = feed(client, auth(BOB), group)
    assert [i["id"] for i in warm] == _pg_page(state, group)
    assert [i["has_viewed"] for i in warm] == [False, True, False, False]
    r, keys = state.cache.redis, state.cache.keys
    costs = Costs(monkeypatch)
    for missing in (gf_cache.groups_key(keys, BOB), gf_cache.key(keys, BOB, group),
                    gf_cache.item_key(keys, group, items[0]["id"])):
        assert r.delete(missing) == 1, missing
        page, sql, _ = costs.of(lambda: feed(client, auth(BOB), group))
        assert page == warm and sql >= 1, missing
        page, sql, trips = costs.of(lambda: feed(client, auth(BOB), group))
        assert page == warm and sql == 0 and 1 <= trips <= _page_trips(state), missing
    # A viewer outside the group, on a cached list: refused, with nothing of the page
    # (the first request fills their groups set, the second reads it).
    for _ in range(2):
        r_out = client.get(FEED, query_string={"group": group}, headers=auth(99))
        assert r_out.status_code == 403 and b"i0" not in r_out.data
    # An admin's page has no per-viewer membership check, and its own has_viewed.
    admin_page = feed(client, admin_headers, group)
    assert [i["id"] for i in admin_page] == [i["id"] for i in warm]
    assert not any(i["has_viewed"] for i in admin_page)
    # An empty page of a cached list (a cursor below the oldest item).
    assert feed(client, auth(BOB), group, before=items[0]["id"]) == []
