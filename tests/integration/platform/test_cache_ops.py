"""Cache operations (issue 6): rebuild equals a cold rebuild by reads, dry-run reports a
planted difference without writing, reconciliation repairs planted corruption and reports
zero on a healthy system (also under traffic), rebuilds resume after Ctrl-C and respect
their rate, the warm job fills every read path, and the CLI commands run.

Runs unchanged against Redis Cluster: TEST_REDIS_URL=redis+cluster://... with
TEST_RQ_REDIS_URL on a single Redis (see tests/reliability/test_cluster.py).
"""

from __future__ import annotations

import threading
import time

import pytest
from rq import SimpleWorker

from cache import activity_feed, recent_reels, stats
from cache import community_feed as cf
from cache import group_feed as gf_cache
from cache.keyspace_admin import clear_keyspace
from jobs import cli as jobs_cli
from jobs import paths as read_paths
from jobs import rebuild, reconcile, scheduler
from jobs.context import use_state
from service import ranked_feed_ops as ranked_feed  # the clock of routes and jobs
from service import warming
from storage.demo import DemoSizes, seed
from tests.support.auth import bearer
from tests.support.cache_ops import FROZEN_NOW, active_user, groups_of, sql

SIZES = DemoSizes(users=30, groups=4, items=200, posts=150, reels=40, views=600, seed=7)
FEED = "/api/v1/messaging/feed/"


@pytest.fixture
def demo(state, monkeypatch) -> list[int]:
    """Small demo data (every section); the ranking clock frozen. Returns user ids."""
    monkeypatch.setattr(ranked_feed, "now", lambda: FROZEN_NOW)
    seed(state.db, SIZES)
    return list(range(1, SIZES.users + 1))


def answers(client, state, user_id: int) -> dict[str, object]:
    """Every read path's answer for the user, through the API."""
    headers = bearer(user_id)
    urls = [f"{FEED}unread-count/", "/api/events/activity-feed/summary/",
            "/api/events/activity-feed/?page_size=100",
            "/api/events/activity-feed/?page_size=100&is_read=false",
            "/community/feed?feed_type=following", "/api/posts/?page_size=50",
            "/api/reels/recently-viewed?per_page=100"]
    urls += [f"{FEED}?group={g}&limit=200" for g in groups_of(state, user_id)]
    out = {}
    for url in urls:
        response = client.get(url, headers=headers)
        assert response.status_code == 200, (url, response.get_json())
        out[url] = response.get_json()
    return out


def misses() -> float:
    return sum(s.value for m in stats.CACHE_EVENTS.collect() for s in m.samples
               if s.name.endswith("_total") and s.labels["outcome"] in ("miss", "fallback"))


def plant(state, user_id: int) -> dict[str, str]:
    """Corrupt one cached key per read path of ``user_id``; returns path -> key."""
    r, keys = state.cache.redis, state.cache.keys
    group = groups_of(state, user_id)[0]
    rs_key = gf_cache.key(keys, user_id, group)
    live = sorted(int(p) for (p,) in sql(
        state, "SELECT position FROM feed_items WHERE group_id = :g AND deleted_at IS NULL",
        g=group))
    viewed = gf_cache.ReadState.from_raw(r.get(rs_key)).viewed(live[0])
    r.setbit(rs_key, gf_cache.OFFSET + live[0], 0 if viewed else 1)
    if viewed:  # below the watermark a bit cannot unview it: rewrite the watermark
        r.setrange(rs_key, 0, b"\0\0\0\0")
    feed = activity_feed.feed_key(keys, user_id)
    r.set(feed, r.get(feed).replace(b",", b"999,", 1), keepttl=True)  # a wrong total
    r.sadd(cf.CommunityKeys(keys).followees(user_id), "424242")
    r.zadd(recent_reels.key(keys, user_id), {"777777": 1})
    return {"group_feed": rs_key, "activity_feed": feed,
            "community_feed": cf.CommunityKeys(keys).followees(user_id),
            "recent_reels": recent_reels.key(keys, user_id)}


# One difference planted per read path (the personalized ranking has none planted).
PLANTED = {"group_feed": 1, "activity_feed": 1, "community_feed": 1, "ranked_feed": 0,
           "recent_reels": 1}


def dump_all(state) -> dict[bytes, bytes]:
    r = state.cache.redis
    return {k: r.dump(k) for k in r.scan_iter(match=state.cache.keys.pattern(), count=1000)
            if b":lease" not in k}


# --- rebuild --------------------------------------------------------------------------------


def test_rebuild_equals_cold_rebuild_by_reads(client, state, demo):
    users = demo[:12]
    for user in users:
        answers(client, state, user)  # cache filled by reads
    planted = plant(state, active_user(state, users))
    report = rebuild.run(state, rebuild.Options(progress=False))
    assert not report.interrupted
    assert set(report.users) == set(read_paths.READ_PATHS)
    before = misses()
    rebuilt = {u: answers(client, state, u) for u in users}
    assert misses() == before, "after a rebuild every read is a hit"
    assert clear_keyspace(state.cache) > 0
    cold = {u: answers(client, state, u) for u in users}
    assert misses() > before
    assert rebuilt == cold
    assert state.cache.redis.exists(*planted.values()) == len(planted)


def test_rebuild_one_user_and_one_group(client, state, demo):
    user = active_user(state, demo)
    planted = plant(state, user) if answers(client, state, user) else {}
    report = rebuild.run(state, rebuild.Options(user=user, progress=False, dry_run=True))
    assert report.differences == {**PLANTED}
    rebuild.run(state, rebuild.Options(user=user, paths=["recent_reels", "community_feed"],
                                       progress=False))
    after = rebuild.run(state, rebuild.Options(user=user, progress=False, dry_run=True))
    assert after.differences == {**PLANTED, "community_feed": 0, "recent_reels": 0}
    group = groups_of(state, user)[0]
    assert gf_cache.key(state.cache.keys, user, group) == planted["group_feed"]
    rebuild.run(state, rebuild.Options(group=group, progress=False))
    after = rebuild.run(state, rebuild.Options(user=user, progress=False, dry_run=True))
    assert after.differences == {**PLANTED, "group_feed": 0, "community_feed": 0,
                                 "recent_reels": 0}


def test_dry_run_reports_a_planted_difference_without_writing(client, state, demo):
    user = active_user(state, demo)
    answers(client, state, user)
    planted = plant(state, user)
    snapshot = dump_all(state)
    lines: list[str] = []
    report = rebuild.run(state, rebuild.Options(dry_run=True, progress=False),
                         echo=lines.append)
    assert report.differences == {**PLANTED}
    for path, key in planted.items():
        assert any(line.startswith(f"{path} user {user} {key}:") for line in lines), lines
    assert dump_all(state) == snapshot, "a dry run writes nothing"


def test_rebuild_resumes_after_ctrl_c(state, demo, monkeypatch):
    path = read_paths.READ_PATHS["recent_reels"]
    done: list[int] = []

    def interrupted(s, user_id):
        if len(done) == 5:
            raise KeyboardInterrupt
        done.append(user_id)

    monkeypatch.setitem(read_paths.READ_PATHS, "recent_reels",
                        read_paths.ReadPath("recent_reels", path.check, interrupted, path.warm))
    options = rebuild.Options(paths=["recent_reels"], progress=False)
    report = rebuild.run(state, options)
    assert report.interrupted and report.users == {"recent_reels": 5}
    checkpoints = rebuild.Checkpoints(state, dry_run=False)
    assert checkpoints.get("recent_reels") == done[-1]
    first = list(done)
    done.clear()
    monkeypatch.setitem(read_paths.READ_PATHS, "recent_reels",
                        read_paths.ReadPath("recent_reels", path.check,
                                            lambda s, u: done.append(u), path.warm))
    report = rebuild.run(state, options)
    assert not report.interrupted
    everyone = list(path.users(state))
    assert first + done == everyone, "resumed after the last user done, none twice"
    assert checkpoints.get("recent_reels") == 0, "cleared once the run completed"
    done.clear()
    rebuild.run(state, rebuild.Options(paths=["recent_reels"], progress=False, restart=True))
    assert done == everyone


def test_rebuild_respects_max_rate(state, demo):
    users = len(list(read_paths.READ_PATHS["recent_reels"].users(state)))
    started = time.monotonic()
    report = rebuild.run(state, rebuild.Options(paths=["recent_reels"], max_rate=100,
                                                progress=False))
    assert report.users == {"recent_reels": users}
    assert time.monotonic() - started >= (users - 1) / 100


# --- reconciliation --------------------------------------------------------------------------


def repairs_metric(client, path: str) -> float:
    body = client.get("/metrics").get_data(as_text=True)
    line = next(ln for ln in body.splitlines()
                if ln.startswith(f'cache_repairs_total{{path="{path}"}}'))
    return float(line.split()[-1])


def test_reconciliation_zero_when_healthy_repairs_planted(client, state, demo):
    users = demo[:10]
    for user in users:
        answers(client, state, user)
    healthy = reconcile.reconcile(state, all_users=True)
    assert healthy.total_repairs == 0, healthy.differences
    assert sum(healthy.checked.values()) > 0
    assert repairs_metric(client, "group_feed") == 0
    user = active_user(state, users)
    plant(state, user)
    result = reconcile.reconcile(state, all_users=True)
    assert result.repairs == {**PLANTED}
    for path, n in PLANTED.items():
        assert repairs_metric(client, path) == n
    assert reconcile.reconcile(state, all_users=True).total_repairs == 0
    before = answers(client, state, user)
    clear_keyspace(state.cache)
    assert answers(client, state, user) == before, "repaired answers equal cold ones"


def test_reconciliation_is_scheduled_and_samples(client, state, demo):
    assert reconcile.periodic in scheduler.EXTRA_JOBS
    state.settings = state.settings.replace(reconcile_sample=4)
    job = next(j for j in scheduler.default_jobs(state) if j.name == "reconcile")
    assert job.interval == state.settings.reconcile_interval
    for user in demo[:8]:
        answers(client, state, user)
    assert scheduler.run_once(state, job) is True
    assert scheduler.run_once(state, job) is False  # within its interval
    sampled = reconcile.reconcile(state, sample=3)
    assert all(n <= 3 for n in sampled.checked.values())
    assert sampled.total_repairs == 0


def test_reconciliation_reports_zero_under_traffic(app, state, demo):
    """Writes on every path while checks run: nothing in flight is taken for a
    difference."""
    users = demo[:8]
    client = app.test_client()
    for user in users:
        answers(client, state, user)
    items = sql(state, "SELECT i.id, m.user_id FROM feed_items i JOIN group_members m "
                       "ON m.group_id = i.group_id WHERE m.user_id = ANY(:u) "
                       "AND i.deleted_at IS NULL ORDER BY i.id", u=users)
    reels = [r[0] for r in sql(state, "SELECT id FROM reels ORDER BY id LIMIT 20")]
    stop = threading.Event()
    errors: list[str] = []
    writes: list[int] = []

    def writer(n: int) -> None:
        c = app.test_client()
        i = n
        while not stop.is_set():
            item, user = items[i % len(items)]
            h = bearer(user)
            calls = [
                (f"{FEED}{item}/mark-viewed/", "post" if i % 3 else "delete", None),
                (f"/api/reels/{reels[i % len(reels)]}/view", "post", {"view_duration": 3}),
                (f"/community/users/{users[(i + 1) % len(users)]}/follow",
                 "post" if i % 2 else "delete", None),
                ("/api/events/", "post", None),
            ]
            for url, method, body in calls[:3]:
                r = getattr(c, method)(url, headers=h, json=body)
                if r.status_code >= 500:
                    errors.append(f"{url} {r.status_code}")
                writes.append(r.status_code)
            r = c.post("/api/events/", headers=bearer(1, admin=True),
                       json={"user_id": user, "event_type": "milestone", "title": f"t{i}"})
            if r.status_code >= 500:
                errors.append(f"event {r.status_code}")
            for read in (f"{FEED}unread-count/", "/api/reels/recently-viewed",
                         "/api/events/activity-feed/summary/"):
                c.get(read, headers=h)
            i += 4

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(3)]
    for t in threads:
        t.start()
    found, checks = [], 0
    try:
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline:
            for path in read_paths.get():
                for user in users:
                    found += path.check(state, user)
                    checks += 1
            found += read_paths.READ_PATHS["group_feed"].check_group(state, groups_of(
                state, users[0])[0])
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert not errors
    assert checks >= len(users) * 4
    assert len(writes) > 30, "the checks ran under traffic"
    assert not found, [str(d) for d in found]


# --- warming -------------------------------------------------------------------------------


def test_warm_job_fills_every_read_path(client, state, demo):
    user = active_user(state, demo)
    assert warming.enqueue_warm(state, user) is True
    use_state(state)
    try:
        SimpleWorker([state.queue("warm")], connection=state.queue_redis).work(burst=True)
    finally:
        use_state(None)
    assert state.queue("warm").failed_job_registry.count == 0
    before = misses()
    warmed = answers(client, state, user)
    assert misses() == before, "a warmed user's next reads are all hits"
    clear_keyspace(state.cache)
    assert answers(client, state, user) == warmed


# --- CLI ------------------------------------------------------------------------------------


def test_cli_commands(app, client, state, demo):
    runner = app.test_cli_runner()
    user = active_user(state, demo)
    answers(client, state, user)
    plant(state, user)
    out = runner.invoke(jobs_cli.rebuild_cache, args=["--dry-run", "--no-progress", "--path",
                              "recent_reels"])
    assert out.exit_code == 0, out.output
    assert "recent_reels: " in out.output and "1 key(s) differ" in out.output
    out = runner.invoke(jobs_cli.reconcile_command, args=["--all", "--path", "activity_feed"])
    assert out.exit_code == 0, out.output
    assert "activity_feed: checked" in out.output and "repaired 1" in out.output
    out = runner.invoke(jobs_cli.rebuild_cache, args=["--no-progress", "--user", str(user)])
    assert out.exit_code == 0, out.output
    assert "users/s" in out.output
    out = runner.invoke(jobs_cli.rebuild_cache, args=["--user", "1", "--group", "1"])
    assert out.exit_code == 2
    out = runner.invoke(jobs_cli.rebuild_cache, args=["--path", "nope"])
    assert out.exit_code == 2
