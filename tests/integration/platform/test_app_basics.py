"""Conventions of API.md that hold for every endpoint: auth, errors, health, OpenAPI."""

from __future__ import annotations

import time

import jwt

from tests.support.auth import JWT_SECRET


def test_healthz(client):
    r = client.get("/healthz")
    assert r.status_code == 200
    assert r.get_json() == {"status": "ok"}


def test_trailing_slash_optional(client):
    assert client.get("/healthz/").status_code == 200


def test_readyz_ok(client):
    r = client.get("/readyz")
    assert r.status_code == 200
    assert r.get_json()["redis"] == "ok"
    assert r.get_json()["postgres"] == "ok"


def test_unknown_route_is_json_404(client):
    r = client.get("/nope")
    assert r.status_code == 404
    assert r.is_json
    assert r.get_json()["code"] == "not_found"


def test_405_keeps_allow_header(client):
    r = client.delete("/healthz")
    assert r.status_code == 405
    assert "GET" in r.headers["Allow"]
    assert r.get_json()["code"] == "method_not_allowed"


def test_missing_token_401(client):
    r = client.post("/api/v1/groups/", json={"name": "x"})
    assert r.status_code == 401
    body = r.get_json()
    assert body["error"] == "Authentication required"
    assert body["code"] == "authentication_required"


def test_forged_token_401(client):
    claims = {"sub": "1", "exp": time.time() + 60, "role": "admin"}
    forged = jwt.encode(claims, "wrong-key-" + "k" * 32, algorithm="HS256")
    r = client.post("/api/v1/groups/", json={"name": "x"},
                    headers={"Authorization": f"Bearer {forged}"})
    assert r.status_code == 401
    assert r.get_json()["code"] == "invalid_token"


def test_expired_token_401(client):
    expired = jwt.encode({"sub": "1", "exp": time.time() - 10, "role": "admin"}, JWT_SECRET,
                         algorithm="HS256")
    r = client.post("/api/v1/groups/", json={"name": "x"},
                    headers={"Authorization": f"Bearer {expired}"})
    assert r.status_code == 401
    assert r.get_json()["code"] == "token_expired"


def test_token_without_exp_401(client):
    token = jwt.encode({"sub": "1", "role": "admin"}, JWT_SECRET, algorithm="HS256")
    r = client.post("/api/v1/groups/", json={"name": "x"},
                    headers={"Authorization": f"Bearer {token}"})
    assert r.status_code == 401


def test_alg_none_token_401(client):
    token = jwt.encode({"sub": "1", "exp": time.time() + 60, "role": "admin"}, None,
                       algorithm="none")
    r = client.post("/api/v1/groups/", json={"name": "x"},
                    headers={"Authorization": f"Bearer {token}"})
    assert r.status_code == 401


def test_int_and_string_sub_accepted(client):
    for sub in (7, "7"):
        token = jwt.encode({"sub": sub, "exp": time.time() + 60, "role": "admin"}, JWT_SECRET,
                           algorithm="HS256")
        r = client.post("/api/v1/groups/", json={"name": "g"},
                        headers={"Authorization": f"Bearer {token}"})
        assert r.status_code == 201, r.get_json()


def test_bad_sub_401(client):
    for sub in ("abc", -3, 0, "1.5", 2**70, True):
        token = jwt.encode({"sub": sub, "exp": time.time() + 60}, JWT_SECRET, algorithm="HS256")
        r = client.post("/api/v1/groups/", json={"name": "g"},
                        headers={"Authorization": f"Bearer {token}"})
        assert r.status_code == 401, sub


def test_malformed_header_401(client):
    r = client.post("/api/v1/groups/", json={"name": "x"}, headers={"Authorization": "Token a"})
    assert r.status_code == 401


def test_non_admin_403(client, auth):
    r = client.post("/api/v1/groups/", json={"name": "x"}, headers=auth(5))
    assert r.status_code == 403
    assert r.get_json()["code"] == "forbidden"


def test_bad_json_400(client, admin_headers):
    r = client.post("/api/v1/groups/", data="{not json",
                    headers={**admin_headers, "Content-Type": "application/json"})
    assert r.status_code == 400
    assert r.get_json()["code"] == "invalid_json"


def test_validation_error_400_with_details(client, admin_headers):
    r = client.post("/api/v1/groups/", json={"name": 5}, headers=admin_headers)
    assert r.status_code == 400
    body = r.get_json()
    assert body["code"] == "validation_error"
    assert "name" in body["details"]


def test_json_array_body_400(client, admin_headers):
    r = client.post("/api/v1/groups/", json=[1, 2], headers=admin_headers)
    assert r.status_code == 400


def test_body_over_1mib_413(client, admin_headers):
    r = client.post("/api/v1/groups/", data=b'{"name":"' + b"a" * (1024 * 1024 + 10) + b'"}',
                    headers={**admin_headers, "Content-Type": "application/json"})
    assert r.status_code == 413
    assert r.get_json()["code"] == "body_too_large"


def test_id_out_of_range_in_path_404(client, admin_headers):
    r = client.post(f"/api/v1/groups/{2**63}/members/", json={"user_id": 1},
                    headers=admin_headers)
    assert r.status_code == 404
    r = client.post("/api/v1/groups/0/members/", json={"user_id": 1}, headers=admin_headers)
    assert r.status_code == 404


def test_id_out_of_range_in_body_400(client, admin_headers):
    gid = client.post("/api/v1/groups/", json={"name": "g"}, headers=admin_headers).get_json()["id"]
    for bad in (0, -1, 2**63, "x", 1.5):
        r = client.post(f"/api/v1/groups/{gid}/members/", json={"user_id": bad},
                        headers=admin_headers)
        assert r.status_code == 400, bad


def test_openapi_document(client):
    r = client.get("/openapi.json")
    assert r.status_code == 200
    doc = r.get_json()
    assert doc["openapi"].startswith("3.")
    for path in ("/healthz", "/readyz", "/api/v1/groups/", "/api/reels/", "/api/collectives/"):
        assert path in doc["paths"], path
    assert "bearerAuth" in doc["components"]["securitySchemes"]


def test_openapi_document_is_valid(client):
    import schemathesis

    schema = schemathesis.openapi.from_dict(client.get("/openapi.json").get_json())
    results = list(schema.get_all_operations())
    assert results
    for result in results:
        operation = result.ok()  # raises if the operation's definition is invalid
        assert operation.method and operation.path
