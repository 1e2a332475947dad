"""Admin setup endpoints."""

from __future__ import annotations

from sqlalchemy import text


def _count(state, sql: str, **params) -> int:
    with state.db.session() as s:
        return s.execute(text(sql), params).scalar_one()


def test_create_group_and_members(client, admin_headers, state):
    r = client.post("/api/v1/groups/", json={"name": "Choir"}, headers=admin_headers)
    assert r.status_code == 201
    group = r.get_json()
    assert group["name"] == "Choir" and group["id"] > 0
    for _ in range(2):  # idempotent
        r = client.post(f"/api/v1/groups/{group['id']}/members/", json={"user_id": 9},
                        headers=admin_headers)
        assert r.status_code == 201
    assert _count(state, "SELECT count(*) FROM group_members WHERE group_id=:g", g=group["id"]) == 1
    r = client.delete(f"/api/v1/groups/{group['id']}/members/9/", headers=admin_headers)
    assert r.status_code == 204
    assert _count(state, "SELECT count(*) FROM group_members WHERE group_id=:g", g=group["id"]) == 0


def test_member_of_unknown_group_404(client, admin_headers):
    r = client.post("/api/v1/groups/999999/members/", json={"user_id": 9}, headers=admin_headers)
    assert r.status_code == 404


def test_create_reel(client, admin_headers):
    r = client.post("/api/reels/", json={"video_url": "https://v/1.mp4", "description": "d",
                                         "duration": 30, "is_available": True},
                    headers=admin_headers)
    assert r.status_code == 201
    body = r.get_json()
    assert body["reel_id"] > 0 and body["duration"] == 30
    assert body["created_at"].endswith("Z")


def test_create_reel_bad_duration(client, admin_headers):
    for bad in (0, -5, "ten", 1.5):
        r = client.post("/api/reels/", json={"video_url": "u", "duration": bad},
                        headers=admin_headers)
        assert r.status_code == 400, bad


def test_create_collective(client, admin_headers):
    r = client.post("/api/collectives/", json={"name": "Readers"}, headers=admin_headers)
    assert r.status_code == 201
    assert r.get_json()["name"] == "Readers"
