"""What a write request costs Postgres (issue 15): one transaction, no outbox bookkeeping
after its commit, and few statements: a first mark-viewed 3, a like of a post 2, a reel
view at most 4, a reel like 3; a write that changes nothing commits nothing.

Counted with SQLAlchemy engine events, as scripts/bench counts its SQL/request column
(``before_cursor_execute``), plus ``commit`` events for transactions. The relay's batched
clearing is tested here too: it is what replaced the request's second transaction.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field

from sqlalchemy import event

from cache.outbox import relay_outbox
from storage import cache_state
from tests.support.community_feed import make_post
from tests.support.crash import crash_after_commit
from tests.support.group_feed import FEED, make_group, post_item
from tests.support.recent_reels import make_reels, recent

MAX_REEL_VIEW_STATEMENTS = 4
# The user's version bump, the like (row, count, reel version, list check), the outbox row.
REEL_LIKE_STATEMENTS = 3
# The item (with the caller's membership and view), the version bump with the view, the
# outbox row.
MARK_VIEWED_STATEMENTS = 3
# The like (the post's visibility, the like row, its count and every version bump: one
# statement), the outbox row.
POST_LIKE_STATEMENTS = 2


@dataclass
class Sql:
    statements: list[str] = field(default_factory=list)
    commits: int = 0

    def writes(self, table: str) -> list[str]:
        return [s for s in self.statements
                if table in s and s.lstrip().upper().startswith(("DELETE", "UPDATE"))]


@contextmanager
def counted(state) -> Iterator[Sql]:
    """Statements and commits sent on the app's engine while the block runs."""
    sql = Sql()

    def on_statement(conn, cursor, statement, parameters, context, executemany) -> None:
        sql.statements.append(statement)

    def on_commit(conn) -> None:
        sql.commits += 1

    engine = state.db.engine
    event.listen(engine, "before_cursor_execute", on_statement)
    event.listen(engine, "commit", on_commit)
    try:
        yield sql
    finally:
        event.remove(engine, "before_cursor_execute", on_statement)
        event.remove(engine, "commit", on_commit)


def outbox_rows(state) -> int:
    with state.db.session() as s:
        return cache_state.outbox_size(s)


def assert_one_transaction(sql: Sql) -> None:
    assert sql.commits == 1, sql.statements
    assert not sql.writes("cache_outbox"), "the request touched its outbox row after commit"


def test_like_is_one_transaction_and_leaves_its_row_to_the_relay(client, auth, state):
    post = make_post(client, auth, 1)
    client.get("/community/feed", headers=auth(2))  # warm: the like applies to cached keys
    rows = outbox_rows(state)
    with counted(state) as sql:
        r = client.post(f"/community/posts/{post['id']}/like", headers=auth(2))
    assert r.get_json() == {"liked": True}
    assert_one_transaction(sql)
    assert len(sql.statements) == POST_LIKE_STATEMENTS, sql.statements
    with counted(state) as again:  # already liked: nothing to commit
        assert client.post(f"/community/posts/{post['id']}/like",
                           headers=auth(2)).get_json() == {"liked": False}
    assert again.commits == 0
    assert outbox_rows(state) == rows + 1
    assert relay_outbox(state.db, state.applier, min_age=0) == 0  # applied by the request
    assert outbox_rows(state) == 0
    engagement = client.get(f"/community/posts/{post['id']}/engagement", headers=auth(2))
    assert engagement.get_json()["like_count"] == 1


def test_mark_viewed_is_one_transaction(client, auth, admin_headers, state):
    group = make_group(client, admin_headers, members=[2])
    item = post_item(client, admin_headers, group)
    assert client.get(FEED, query_string={"group": group}, headers=auth(2)).status_code == 200
    with counted(state) as sql:
        r = client.post(f"{FEED}{item['id']}/mark-viewed/", headers=auth(2))
    assert r.status_code == 200, r.get_json()
    assert_one_transaction(sql)
    assert len(sql.statements) == MARK_VIEWED_STATEMENTS, sql.statements
    with counted(state) as again:  # a repeat: one statement, nothing to commit
        repeat = client.post(f"{FEED}{item['id']}/mark-viewed/", headers=auth(2))
    assert repeat.get_json()["viewed_at"] == r.get_json()["viewed_at"]
    assert (len(again.statements), again.commits) == (1, 0)
    page = client.get(FEED, query_string={"group": group}, headers=auth(2)).get_json()
    assert [i["has_viewed"] for i in page] == [True]  # the request's own apply


def test_reel_view_is_one_transaction_of_at_most_four_statements(client, auth, admin_headers,
                                                                  state):
    reels = make_reels(client, admin_headers, 3)
    headers = auth(5)
    for reel in reels[:2]:  # an existing list (the trim has rows to look at), cached
        assert client.post(f"/api/reels/{reel}/view", json={"view_duration": 3},
                           headers=headers).status_code == 200
    assert recent(client, headers)["pagination"]["total"] == 2
    with counted(state) as sql:
        r = client.post(f"/api/reels/{reels[2]}/view", json={"view_duration": 7},
                        headers=headers)
    assert r.status_code == 200, r.get_json()
    assert len(sql.statements) <= MAX_REEL_VIEW_STATEMENTS, sql.statements
    assert_one_transaction(sql)
    listed = recent(client, headers)["reels"]
    assert [e["reel_id"] for e in listed] == [reels[2], reels[1], reels[0]]
    assert listed[0]["view_duration"] == 7


def test_reel_like_is_one_transaction_of_three_statements(client, auth, admin_headers,
                                                          state):
    reels = make_reels(client, admin_headers, 2)
    headers = auth(5)
    assert client.post(f"/api/reels/{reels[0]}/view", json={"view_duration": 3},
                       headers=headers).status_code == 200
    assert recent(client, headers)["reels"][0]["is_liked"] is False  # cached
    for reel in reels:  # in the list, and not
        with counted(state) as sql:
            r = client.post(f"/api/reels/{reel}/like", headers=headers)
        assert r.get_json() == {"liked": True}
        assert len(sql.statements) == REEL_LIKE_STATEMENTS, sql.statements
        assert_one_transaction(sql)
    [listed] = recent(client, headers)["reels"]
    assert (listed["reel_id"], listed["is_liked"], listed["likes_count"]) == (reels[0], True, 1)
    # A like already there, or an unlike of none, commits nothing.
    with counted(state) as sql:
        assert client.post(f"/api/reels/{reels[0]}/like",
                           headers=headers).get_json() == {"liked": False}
        assert client.delete(f"/api/reels/{reels[0]}/like",
                             headers=auth(6)).get_json() == {"unliked": False}
    assert sql.commits == 0
    with counted(state) as sql:
        r = client.delete(f"/api/reels/{reels[0]}/like", headers=headers)
    assert r.get_json() == {"unliked": True}
    assert len(sql.statements) == REEL_LIKE_STATEMENTS, sql.statements
    assert_one_transaction(sql)
    [listed] = recent(client, headers)["reels"]
    assert (listed["is_liked"], listed["likes_count"]) == (False, 0)


def test_rejected_reel_views_commit_nothing(client, auth, admin_headers, state):
    [hidden] = make_reels(client, admin_headers, 1, available=False)
    rows = outbox_rows(state)
    with counted(state) as sql:
        assert client.post(f"/api/reels/{hidden}/view", json={},
                           headers=auth(5)).status_code == 400
        assert client.post("/api/reels/999999/view", json={},
                           headers=auth(5)).status_code == 404
    assert sql.commits == 0
    assert outbox_rows(state) == rows


def test_relay_clears_applied_rows_in_batches_and_applies_the_left_behind(client, auth,
                                                                          state):

    posts = [make_post(client, auth, 1)["id"] for _ in range(3)]
    client.get("/community/feed", headers=auth(2))
    for post in posts[:2]:
        assert client.post(f"/community/posts/{post}/like", headers=auth(2)).status_code == 200
    # The third like's request dies between its commit and its Redis apply.
    with crash_after_commit(state), suppress(SystemExit):
        client.post(f"/community/posts/{posts[2]}/like", headers=auth(2))
    assert outbox_rows(state) >= 3
    # Only the crashed write's changes were not in Redis yet.
    assert relay_outbox(state.db, state.applier, min_age=0) >= 1
    assert outbox_rows(state) == 0
    assert relay_outbox(state.db, state.applier, min_age=0) == 0
