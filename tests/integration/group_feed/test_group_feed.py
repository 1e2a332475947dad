"""Group feed endpoints (API section 1): behaviour, permissions and bad input."""

from __future__ import annotations

import pytest

from cache.outbox import relay_outbox
from tests.support.group_feed import (
    FEED,
    feed,
    make_group,
    mark,
    mark_all,
    pg_unread,
    pg_viewed,
    post_item,
    remove_member,
    unread,
    viewed_map,
)

ALICE, BOB, EVE = 101, 102, 666


@pytest.fixture
def group(client, admin_headers):
    return make_group(client, admin_headers, members=(ALICE, BOB))


def test_create_and_list_newest_first(client, auth, group):
    first = post_item(client, auth(ALICE), group, "one", body="b1")
    assert first["body"] == "b1" and first["author_id"] == ALICE and first["group"] == group
    assert first["created_at"].endswith("Z") and first["has_viewed"] is False
    second = post_item(client, auth(BOB), group, "two")
    items = feed(client, auth(ALICE), group)
    assert [i["id"] for i in items] == [second["id"], first["id"]]
    assert set(items[0]) == {"id", "group", "title", "content_type", "author_id", "created_at",
                             "has_viewed"}
    assert feed(client, auth(ALICE), group, before=second["id"])[0]["id"] == first["id"]
    assert len(feed(client, auth(ALICE), group, limit=1)) == 1


def test_mark_viewed_keeps_first_time_and_unread_works(client, auth, group):
    item = post_item(client, auth(ALICE), group)
    r1 = mark(client, auth(BOB), item["id"])
    assert r1.status_code == 200 and r1.get_json()["detail"] == "Marked as viewed"
    r2 = mark(client, auth(BOB), item["id"])
    assert r2.get_json()["viewed_at"] == r1.get_json()["viewed_at"]
    assert viewed_map(client, auth(BOB), group) == {item["id"]: True}
    assert viewed_map(client, auth(ALICE), group) == {item["id"]: False}
    assert unread(client, auth(BOB), group) == 0 and unread(client, auth(ALICE), group) == 1
    r = mark(client, auth(BOB), item["id"], viewed=False)
    assert r.status_code == 200 and r.get_json() == {"detail": "Marked as unread"}
    assert viewed_map(client, auth(BOB), group) == {item["id"]: False}
    assert unread(client, auth(BOB), group) == 1
    # Unmarking what was never viewed is fine too.
    assert mark(client, auth(BOB), item["id"], viewed=False).status_code == 200


def test_mark_all_then_new_items_and_unread_below_watermark(client, auth, group, state):
    items = [post_item(client, auth(ALICE), group, f"i{n}") for n in range(5)]
    mark(client, auth(BOB), items[1]["id"])
    r = mark_all(client, auth(BOB), group)
    assert r.status_code == 200
    assert r.get_json() == {"detail": "Marked 4 items as viewed", "count": 4}
    assert mark_all(client, auth(BOB), group).get_json()["count"] == 0
    assert unread(client, auth(BOB), group) == 0
    assert all(viewed_map(client, auth(BOB), group).values())
    newer = post_item(client, auth(ALICE), group, "new")
    assert unread(client, auth(BOB), group) == 1
    mark(client, auth(BOB), items[2]["id"], viewed=False)  # below the watermark
    assert unread(client, auth(BOB), group) == 2
    got = viewed_map(client, auth(BOB), group)
    assert got == pg_viewed(state, BOB, group)
    assert {i for i, v in got.items() if not v} == {items[2]["id"], newer["id"]}


def test_delete_removes_from_feeds_and_counts(client, auth, admin_headers, group, state):
    keep = post_item(client, auth(ALICE), group, "keep")
    gone = post_item(client, auth(ALICE), group, "gone")
    mark(client, auth(BOB), gone["id"])
    assert unread(client, auth(ALICE), group) == 2 and unread(client, auth(BOB), group) == 1
    assert client.delete(f"{FEED}{gone['id']}/", headers=auth(BOB)).status_code == 403
    assert client.delete(f"{FEED}{gone['id']}/", headers=auth(EVE)).status_code == 404
    assert client.delete(f"{FEED}{gone['id']}/", headers=auth(ALICE)).status_code == 204
    assert client.delete(f"{FEED}{gone['id']}/", headers=auth(ALICE)).status_code == 404
    assert [i["id"] for i in feed(client, auth(BOB), group)] == [keep["id"]]
    assert unread(client, auth(ALICE), group) == 1 and unread(client, auth(BOB), group) == 1
    assert mark(client, auth(BOB), gone["id"]).status_code == 404
    # Admins may delete anyone's item.
    assert client.delete(f"{FEED}{keep['id']}/", headers=admin_headers).status_code == 204
    assert unread(client, auth(ALICE)) == {"groups": {str(group): 0}, "total": 0}
    assert pg_unread(state, ALICE) == {group: 0}


def test_unread_over_all_groups_and_membership_changes(client, auth, admin_headers, group):
    other = make_group(client, admin_headers, members=(ALICE,))
    lonely = make_group(client, admin_headers)
    post_item(client, auth(ALICE), group)
    post_item(client, auth(ALICE), other)
    post_item(client, auth(ALICE), other)
    assert unread(client, auth(ALICE)) == {"groups": {str(group): 1, str(other): 2}, "total": 3}
    assert unread(client, auth(BOB)) == {"groups": {str(group): 1}, "total": 1}
    assert unread(client, auth(EVE)) == {"groups": {}, "total": 0}
    remove_member(client, admin_headers, other, ALICE)
    assert unread(client, auth(ALICE)) == {"groups": {str(group): 1}, "total": 1}
    assert client.get(FEED, query_string={"group": other}, headers=auth(ALICE)).status_code == 403
    # Admins see any group, member or not.
    assert unread(client, admin_headers, lonely) == 0
    assert feed(client, admin_headers, other)[0]["has_viewed"] is False


def test_non_members(client, auth, admin_headers, group):
    item = post_item(client, auth(ALICE), group)
    headers = auth(EVE)
    assert client.get(FEED, query_string={"group": group}, headers=headers).status_code == 403
    r = client.get(FEED + "unread-count/", query_string={"group": group}, headers=headers)
    assert r.status_code == 403 and r.get_json()["code"] == "not_a_member"
    assert mark_all(client, headers, group).status_code == 403
    r = client.post(FEED, json={"group": group, "title": "x", "content_type": "text"},
                    headers=headers)
    assert r.status_code == 403
    for method, url in (("post", f"{FEED}{item['id']}/mark-viewed/"),
                        ("delete", f"{FEED}{item['id']}/mark-viewed/"),
                        ("get", f"{FEED}{item['id']}/views/"),
                        ("delete", f"{FEED}{item['id']}/")):
        r = getattr(client, method)(url, headers=headers)
        assert r.status_code == 404, (method, url)
        assert r.get_json()["code"] == "item_not_found"


@pytest.mark.parametrize("headers_of", ["member", "admin"])
def test_unknown_group_and_items_are_404(client, auth, admin_headers, group, headers_of):
    headers = auth(ALICE) if headers_of == "member" else admin_headers
    unknown = 987_654_321
    assert client.get(FEED, query_string={"group": unknown}, headers=headers).status_code == 404
    assert mark_all(client, headers, unknown).status_code == 404
    r = client.get(FEED + "unread-count/", query_string={"group": unknown}, headers=headers)
    assert r.status_code == 404
    r = client.post(FEED, json={"group": unknown, "title": "x", "content_type": "t"},
                    headers=headers)
    assert r.status_code == 404
    for url in (f"{FEED}{unknown}/mark-viewed/", f"{FEED}{2**63 - 1}/mark-viewed/",
                f"{FEED}{2**63}/mark-viewed/", f"{FEED}0/mark-viewed/"):
        assert client.post(url, headers=headers).status_code == 404, url


def test_views_endpoint(client, auth, admin_headers, state, group):
    item = post_item(client, auth(ALICE), group)
    viewers = list(range(200, 207))
    for user_id in viewers:
        client.post(f"/api/v1/groups/{group}/members/", json={"user_id": user_id},
                    headers=admin_headers)
        mark(client, auth(user_id), item["id"])
    seen, cursor = [], None
    while True:
        params = {"limit": 3} | ({"cursor": cursor} if cursor else {})
        r = client.get(f"{FEED}{item['id']}/views/", query_string=params, headers=auth(ALICE))
        assert r.status_code == 200, r.get_json()
        body = r.get_json()
        assert body["count"] == len(viewers)
        seen += body["viewers"]
        cursor = body["next_cursor"]
        if cursor is None:
            break
    assert sorted(v["user_id"] for v in seen) == viewers
    times = [v["viewed_at"] for v in seen]
    assert times == sorted(times, reverse=True) and times[0].endswith("Z")
    assert client.get(f"{FEED}{item['id']}/views/", headers=admin_headers).status_code == 200
    r = client.get(f"{FEED}{item['id']}/views/", headers=auth(BOB))
    assert r.status_code == 403 and r.get_json()["code"] == "not_author"


BAD_QUERIES = [
    {}, {"group": "abc"}, {"group": 0}, {"group": -3}, {"group": 2**63}, {"group": "1.5"},
    {"group": "9" * 5000}, {"group": 1, "limit": 0}, {"group": 1, "limit": 201},
    {"group": 1, "limit": "ten"}, {"group": 1, "before": 0}, {"group": 1, "before": "x"},
]

BAD_BODIES = [
    {"title": "t", "content_type": "text"},
    {"group": "1", "title": "t", "content_type": "text"},
    {"group": 1.5, "title": "t", "content_type": "text"},
    {"group": 2**63, "title": "t", "content_type": "text"},
    {"group": None, "title": "t", "content_type": "text"},
    {"group": "G", "content_type": "text"},
    {"group": "G", "title": "", "content_type": "text"},
    {"group": "G", "title": "t" * 301, "content_type": "text"},
    {"group": "G", "title": 5, "content_type": "text"},
    {"group": "G", "title": "t", "content_type": "c" * 51},
    {"group": "G", "title": "t", "content_type": "text", "body": 12},
    {"group": "G", "title": "t", "content_type": "text", "body": "b" * 100_001},
    {"group": "G", "title": "t", "content_type": "text", "colour": "red"},
    [1, 2],
]


def test_feed_bad_query_is_400(client, auth, group):
    for params in BAD_QUERIES:
        params = {k: (group if v == 1 and k == "group" else v) for k, v in params.items()}
        r = client.get(FEED, query_string=params, headers=auth(ALICE))
        assert r.status_code == 400, (params, r.get_json())
        body = r.get_json()
        assert body["code"] == "validation_error" and body["details"]


def test_create_bad_body_is_400(client, auth, group):
    for body in BAD_BODIES:
        if isinstance(body, dict):
            body = {k: (group if v == "G" else v) for k, v in body.items()}
        r = client.post(FEED, json=body, headers=auth(ALICE))
        assert r.status_code == 400, (body, r.get_json())


def test_other_bad_input(client, auth, group):
    headers = auth(ALICE)
    r = client.post(FEED, data="{not json", headers={**headers,
                                                      "Content-Type": "application/json"})
    assert r.status_code == 400 and r.get_json()["code"] == "invalid_json"
    assert client.get(FEED, query_string={"group": group}).status_code == 401
    r = client.get(FEED, query_string={"group": group},
                   headers={"Authorization": "Bearer nope"})
    assert r.status_code == 401
    assert client.post(FEED + "mark-all-viewed/", headers=headers).status_code == 400
    r = client.get(FEED + "unread-count/", query_string={"group": "x"}, headers=headers)
    assert r.status_code == 400
    item = post_item(client, headers, group)
    for cursor in ("!!!", "bm90IGEgY3Vyc29y", "MTow", "x" * 201, ""):
        r = client.get(f"{FEED}{item['id']}/views/", query_string={"cursor": cursor},
                       headers=headers)
        assert r.status_code == 400, cursor
    r = client.get(f"{FEED}{item['id']}/views/", query_string={"limit": 201}, headers=headers)
    assert r.status_code == 400
    assert client.put(f"{FEED}{item['id']}/mark-viewed/", headers=headers).status_code == 405
    # Unknown query parameters are ignored, as is an extra trailing-slash-less path.
    r = client.get(FEED.rstrip("/"), query_string={"group": group, "_": "1"}, headers=headers)
    assert r.status_code == 200


def test_redis_down_gives_the_same_answers(client, auth, admin_headers, state, group):
    items = [post_item(client, auth(ALICE), group, f"i{n}") for n in range(6)]
    mark(client, auth(BOB), items[0]["id"])
    mark(client, auth(BOB), items[3]["id"])
    client.delete(f"{FEED}{items[1]['id']}/", headers=auth(ALICE))

    def answers():
        return (viewed_map(client, auth(BOB), group), unread(client, auth(BOB), group),
                unread(client, auth(BOB)), viewed_map(client, admin_headers, group))

    with_cache = answers()
    assert with_cache[0] == pg_viewed(state, BOB, group)
    state.cache.enabled = False
    try:
        without = answers()
        # Writes still work without Redis and show in the Postgres answers.
        mark_all(client, auth(BOB), group)
        after_without = answers()
    finally:
        state.cache.enabled = True
    relay_outbox(state.db, state.applier, min_age=0)  # what the relay job does
    assert with_cache == without
    assert after_without == answers()  # the cache caught up (outbox) or was rebuilt
    assert after_without[1] == 0
