"""Reels helpers: a fake clock for view times, reel builders and what Postgres holds."""

from __future__ import annotations

import threading

from sqlalchemy import text

from storage.recent_reels import datetime_to_ms, ms_to_datetime

BASE_MS = 1_750_000_000_000  # 2025-06-15: the fake clock's start


class FakeClock:
    """Replaces ``service.recent_reels.now_ms``: time moves only when a test says so."""

    def __init__(self, start: int = BASE_MS) -> None:
        self.now = start
        self._lock = threading.Lock()
        self._local = threading.local()

    def __call__(self) -> int:
        with self._lock:
            self._local.last = self.now
            return self.now

    def tick(self, ms: int = 1) -> int:
        with self._lock:
            self.now += ms
            return self.now

    @property
    def last(self) -> int:
        """The time the calling thread's last request read."""
        return self._local.last


def make_reels(client, admin_headers, n: int, duration: int = 30, available: bool = True
               ) -> list[int]:
    ids = []
    for i in range(n):
        r = client.post("/api/reels/", json={"video_url": f"https://cdn/r{i}.mp4",
                                             "description": f"reel {i}", "duration": duration,
                                             "is_available": available},
                        headers=admin_headers)
        assert r.status_code == 201, r.get_json()
        ids.append(r.get_json()["reel_id"])
    return ids


def bulk_reels(state, n: int, duration: int = 30) -> list[int]:
    """``n`` available reels in one statement (for tests that need many)."""
    with state.db.session() as s:
        ids = s.execute(text(
            "INSERT INTO reels (video_url, description, duration) "
            "SELECT 'https://cdn/b' || i || '.mp4', 'bulk ' || i, :d "
            "FROM generate_series(1, :n) AS i RETURNING id"), {"n": n, "d": duration}
        ).scalars().all()
        s.commit()
    return sorted(ids)


def recent(client, headers, **params) -> dict:
    r = client.get("/api/reels/recently-viewed", query_string=params, headers=headers)
    assert r.status_code == 200, r.get_json()
    return r.get_json()["data"]


def iso(ms: int) -> str:
    return ms_to_datetime(ms).isoformat().replace("+00:00", "Z")


def pg_rows(state, user_id: int) -> list[tuple[int, int, int]]:
    """(reel_id, viewed_at ms, view_duration) in list order, straight from Postgres."""
    from storage.recent_reels import LIST_ORDER

    with state.db.session() as s:
        rows = s.execute(text(
            "SELECT reel_id, viewed_at, view_duration FROM reel_views WHERE user_id = :u "
            f"ORDER BY {LIST_ORDER}"), {"u": user_id}).all()
    return [(r.reel_id, datetime_to_ms(r.viewed_at), r.view_duration) for r in rows]


def views_count(state, reel_id: int) -> int:
    with state.db.session() as s:
        return s.execute(text("SELECT views_count FROM reels WHERE id = :id"),
                         {"id": reel_id}).scalar_one()
