"""Community feed helpers: posts through the API."""

from __future__ import annotations


def make_post(client, auth, user_id, **body):
    body.setdefault("title", "hello")
    r = client.post("/community/posts", json=body, headers=auth(user_id))
    assert r.status_code == 201, r.get_json()
    return r.get_json()
