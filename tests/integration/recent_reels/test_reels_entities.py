"""Recently viewed reels from the entity cache (DESIGN rule 7): a warm page is 0 SQL and
2 Redis round trips, its bytes match ``RecentReelsOut``; views, likes and unlikes show on
the next read without refills; an evicted reel is one batched fill; Redis down answers the
same from Postgres."""

from __future__ import annotations

from cache import recent_reels
from service.recent_reels import RecentReelsOut
from tests.support.metrics import Costs
from tests.support.recent_reels import make_reels, recent

USER, OTHER = 7, 8


def _view(client, headers, reel, duration=None):
    body = {} if duration is None else {"view_duration": duration}
    assert client.post(f"/api/reels/{reel}/view", json=body, headers=headers).status_code == 200


def test_warm_page_is_0_sql_2_round_trips_and_matches_the_schema(
        client, auth, admin_headers, clock, monkeypatch):
    reels = make_reels(client, admin_headers, 4)
    for n, reel in enumerate(reels):
        _view(client, auth(USER), reel, duration=n or None)
        clock.tick(10)
    client.post(f"/api/reels/{reels[1]}/like", headers=auth(USER))
    client.post(f"/api/reels/{reels[1]}/like", headers=auth(OTHER))
    costs = Costs(monkeypatch)
    cold, cold_sql, _ = costs.of(lambda: recent(client, auth(USER)))
    warm, sql, trips = costs.of(lambda: recent(client, auth(USER)))
    assert (sql, trips) == (0, 2)
    assert warm == cold
    assert [r["reel_id"] for r in warm["reels"]] == list(reversed(reels))
    second = warm["reels"][2]
    assert (second["reel_id"], second["likes_count"], second["is_liked"],
            second["view_duration"], second["views_count"]) == (reels[1], 2, True, 1, 1)
    assert warm["reels"][3]["view_duration"] is None
    assert warm["reels"][0]["description"] == "reel 3"
    schema = RecentReelsOut()
    body = {"status": "success", "data": warm}
    assert schema.validate(body) == {}
    assert schema.dump(schema.load(body)) == body
    print(f"\n[recent reels] warm page: {sql} SQL, {trips} Redis round trips; cold: "
          f"{cold_sql} SQL")


def test_views_likes_show_on_the_next_read_in_place(client, auth, admin_headers, clock,
                                                      state, monkeypatch):
    reels = make_reels(client, admin_headers, 3)
    for reel in reels:
        _view(client, auth(USER), reel, duration=5)
        clock.tick(10)
    recent(client, auth(USER))  # warm
    costs = Costs(monkeypatch)
    # Another user's view moves the shared count; a like moves likes_count and is_liked;
    # a re-watch moves the reel to the top with its new duration.
    _view(client, auth(OTHER), reels[0])
    client.post(f"/api/reels/{reels[0]}/like", headers=auth(USER))
    clock.tick(10)
    _view(client, auth(USER), reels[0], duration=9)
    page, sql, _ = costs.of(lambda: recent(client, auth(USER)))
    assert sql == 0  # applied in place, no refill
    top = page["reels"][0]
    assert (top["reel_id"], top["views_count"], top["likes_count"], top["is_liked"],
            top["view_duration"]) == (reels[0], 3, 1, True, 9)
    client.delete(f"/api/reels/{reels[0]}/like", headers=auth(USER))
    page, sql, _ = costs.of(lambda: recent(client, auth(USER)))
    assert (page["reels"][0]["likes_count"], page["reels"][0]["is_liked"], sql) == (0, False, 0)
    # A like of a reel outside the list changes nobody's list, only the shared count.
    [outside] = make_reels(client, admin_headers, 1)
    client.post(f"/api/reels/{outside}/like", headers=auth(USER))
    mine = state.cache.redis.hgetall(recent_reels.mine_key(state.cache.keys, USER))
    assert f"l:{outside}".encode() not in mine


def test_evicted_reels_are_one_batched_fill(client, auth, admin_headers, clock, state,
                                            monkeypatch):
    reels = make_reels(client, admin_headers, 5)
    for reel in reels:
        _view(client, auth(USER), reel)
        clock.tick(10)
    before = recent(client, auth(USER))
    r, keys = state.cache.redis, state.cache.keys
    assert r.delete(*(recent_reels.reel_key(keys, x) for x in reels[:3])) == 3
    costs = Costs(monkeypatch)
    after, sql, _ = costs.of(lambda: recent(client, auth(USER)))
    assert after == before and sql == 1
    # The version copies lost too (a Redis restart): one more statement, never a reset.
    r.delete(*(recent_reels.reel_key(keys, x) for x in reels),
             *(keys.version(recent_reels.reel_scope(x)) for x in reels))
    after, sql, _ = costs.of(lambda: recent(client, auth(USER)))
    assert after == before and sql == 2
    # The user's hash evicted alone: the list and the hash are filled together.
    r.delete(recent_reels.mine_key(keys, USER))
    after, sql, _ = costs.of(lambda: recent(client, auth(USER)))
    assert after == before and sql >= 1
    assert costs.of(lambda: recent(client, auth(USER)))[1] == 0


def test_redis_down_same_page(client, auth, admin_headers, clock, state):
    reels = make_reels(client, admin_headers, 3)
    for n, reel in enumerate(reels):
        _view(client, auth(USER), reel, duration=n)
        clock.tick(10)
    client.post(f"/api/reels/{reels[2]}/like", headers=auth(USER))
    warm = recent(client, auth(USER))
    state.cache.enabled = False
    try:
        assert recent(client, auth(USER)) == warm
        assert recent(client, auth(USER), fields="reel_id,likes_count")["reels"] == [
            {"reel_id": r["reel_id"], "likes_count": r["likes_count"]} for r in warm["reels"]]
    finally:
        state.cache.enabled = True


def test_a_slow_fill_never_publishes_over_a_newer_write(client, auth, admin_headers, clock,
                                                         state, monkeypatch):
    import storage.recent_reels as storage
    from service import recent_reels_ops

    [reel] = make_reels(client, admin_headers, 1)
    _view(client, auth(USER), reel)
    recent(client, auth(USER))
    r, key = state.cache.redis, recent_reels.reel_key(state.cache.keys, reel)
    r.delete(key)  # evicted
    original = storage.reel_entities

    def slow(session, ids):
        rows = original(session, ids)  # likes_count 0
        monkeypatch.setattr(storage, "reel_entities", original)
        assert recent_reels_ops.like(state, OTHER, reel) is True  # commits and applies
        return rows

    monkeypatch.setattr(storage, "reel_entities", slow)
    recent(client, auth(USER))
    assert not r.exists(key), "the fill loaded before the like must not be published"
    assert recent(client, auth(USER))["reels"][0]["likes_count"] == 1
