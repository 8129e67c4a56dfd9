"""The app without a model (FastAPI's in-process client): readiness, CORS, the default bind address."""

from __future__ import annotations

from pathlib import Path

from fastapi.testclient import TestClient

from deltatune.serving.app import create_app
from deltatune.serving.pool import ModelPool
from deltatune.serving.server import is_loopback
from deltatune.serving.settings import ServeSettings


def _client(**settings) -> tuple[TestClient, ModelPool]:
    s = ServeSettings(**settings)
    pool = ModelPool([("m", Path("unused"))], s)
    return TestClient(create_app(pool, s, ["text-classification"])), pool


def test_health_is_503_until_the_models_are_loaded_and_requests_wait_for_it():
    client, pool = _client()
    r = client.get("/health")
    assert r.status_code == 503 and r.json() == {"status": "loading"}
    r = client.post("/v1/predict", json={"inputs": "x"})
    assert r.status_code == 503 and r.json()["error"]["code"] == "loading"
    pool.error = "run m: model/ is damaged"
    assert client.get("/health").json() == {"status": "error", "error": "run m: model/ is damaged"}


def test_cors_is_off_unless_origins_are_given():
    preflight = {"Origin": "http://site.example", "Access-Control-Request-Method": "POST"}
    client, _ = _client()
    r = client.options("/v1/predict", headers=preflight)
    assert "access-control-allow-origin" not in r.headers
    assert "access-control-allow-origin" not in client.get("/health", headers={"Origin": "http://site.example"}).headers
    client, _ = _client(cors_origins=["http://site.example"])
    r = client.options("/v1/predict", headers=preflight)
    assert r.status_code == 200 and r.headers["access-control-allow-origin"] == "http://site.example"
    r = client.options("/v1/predict", headers={**preflight, "Origin": "http://other.example"})
    assert r.headers.get("access-control-allow-origin") != "http://other.example"


def test_the_server_listens_on_this_machine_only_by_default(monkeypatch):
    monkeypatch.delenv("DELTATUNE_API_KEY", raising=False)
    s = ServeSettings()
    assert s.host == "127.0.0.1" and is_loopback(s.host) and s.api_key is None
    assert not is_loopback("0.0.0.0") and is_loopback("::1") and is_loopback("localhost")
    monkeypatch.setenv("DELTATUNE_API_KEY", "from-env")
    assert ServeSettings().api_key == "from-env"
