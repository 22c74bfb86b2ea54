"""Downstream authentication: static API keys and JWT bearer tokens checked
against a JWKS (file and URL), the OAuth protected-resource metadata and
challenges a client's OAuth library acts on, session binding, and the rule
that a client's credentials never reach an upstream. Tests make their own
keys."""

from __future__ import annotations

import asyncio
import hashlib
import http.server
import json
import threading
import time

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm
from mcp import Client

from conftest import fixture_stdio, http_get, mcp_session, run

ISSUER = "https://idp.test"
AUDIENCE = "portcullis"
API_KEY = "pk-test-0123456789abcdef"


def rsa_key():
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def jwk_of(key, kid: str) -> dict:
    jwk = json.loads(RSAAlgorithm.to_jwk(key.public_key()))
    return {**jwk, "kid": kid, "use": "sig", "alg": "RS256"}


def token(key, kid="k1", **overrides) -> str:
    now = int(time.time())
    claims = {
        "sub": "alice",
        "iss": ISSUER,
        "aud": AUDIENCE,
        "iat": now,
        "exp": now + 600,
        "groups": ["readers"],
        "scope": "mcp:tools",
        **overrides,
    }
    return jwt.encode(claims, key, algorithm="RS256", headers={"kid": kid})


def post_initialize(url: str, headers: dict[str, str]) -> tuple[int, dict[str, str], bytes]:
    import urllib.request

    body = json.dumps(
        {
            "jsonrpc": "2.0",
            "id": 1,
            "method": "initialize",
            "params": {
                "protocolVersion": "2025-06-18",
                "capabilities": {},
                "clientInfo": {"name": "t", "version": "0"},
            },
        }
    ).encode()
    req = urllib.request.Request(
        url,
        data=body,
        method="POST",
        headers={"content-type": "application/json", "accept": "application/json, text/event-stream", **headers},
    )
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


@pytest.fixture
def keys(tmp_path):
    good = rsa_key()
    (tmp_path / "jwks.json").write_text(json.dumps({"keys": [jwk_of(good, "k1")]}))
    return good, tmp_path / "jwks.json"


def auth_gateway(procs, jwks_file, upstream=None, **auth_extra):
    gw = procs.gateway(
        {
            "upstreams": {"fx": upstream or fixture_stdio()},
            "auth": {
                "api_keys": [
                    {
                        "id": "ci-bot",
                        "sha256": hashlib.sha256(API_KEY.encode()).hexdigest(),
                        "groups": ["automation"],
                    }
                ],
                "jwt": {"jwks_file": str(jwks_file), "issuer": ISSUER, "audience": AUDIENCE},
                **auth_extra,
            },
        }
    )
    gw.wait_up("fx")
    return gw


def test_jwt_accepted_and_refused(procs, keys):
    good, jwks = keys
    gw = auth_gateway(procs, jwks)

    async def call(tok):
        async with mcp_session(gw.url, {"Authorization": f"Bearer {tok}"}) as s:
            return await s.call_tool("fx__echo", {"message": "hi"})

    assert run(call(token(good))).content[0].text == "hi"

    now = int(time.time())
    cases = {
        "token expired": token(good, exp=now - 120, iat=now - 700),
        "wrong audience": token(good, aud="someone-else"),
        "wrong issuer": token(good, iss="https://evil.test"),
        "bad signature": token(rsa_key()),
        "not valid yet": token(good, nbf=now + 600),
    }
    for reason, tok in cases.items():
        status, headers, body = post_initialize(gw.url, {"Authorization": f"Bearer {tok}"})
        assert status == 401, (reason, status, body)
        challenge = headers.get("www-authenticate") or headers.get("WWW-Authenticate")
        assert 'error="invalid_token"' in challenge and "resource_metadata=" in challenge, challenge
        assert reason in json.loads(body)["error_description"], (reason, body)


def test_api_key_good_and_bad(procs, keys):
    _, jwks = keys
    gw = auth_gateway(procs, jwks)

    async def call(headers):
        async with mcp_session(gw.url, headers) as s:
            return await s.call_tool("fx__echo", {"message": "ok"})

    assert run(call({"Authorization": f"Bearer {API_KEY}"})).content[0].text == "ok"
    assert run(call({"X-API-Key": API_KEY})).content[0].text == "ok"
    status, _, body = post_initialize(gw.url, {"Authorization": "Bearer pk-wrong"})
    assert status == 401 and b"unknown API key" in body


def test_missing_credentials_get_the_oauth_challenge_and_metadata(procs, keys):
    _, jwks = keys
    gw = auth_gateway(procs, jwks)
    status, headers, _ = post_initialize(gw.url, {})
    assert status == 401
    challenge = headers.get("www-authenticate") or headers.get("WWW-Authenticate")
    expected = f'{gw.base}/.well-known/oauth-protected-resource/mcp'
    assert challenge == f'Bearer resource_metadata="{expected}"', challenge

    status, body = http_get(expected)
    assert status == 200
    meta = json.loads(body)
    assert meta["resource"] == f"{gw.base}/mcp"
    assert meta["authorization_servers"] == [ISSUER]
    assert meta["bearer_methods_supported"] == ["header"]
    # Health endpoints stay open for probes.
    assert http_get(f"{gw.base}/healthz")[0] == 200


def test_insufficient_scope_is_403(procs, keys):
    good, jwks = keys
    gw = auth_gateway(procs, jwks, required_scopes=["mcp:admin"])
    status, headers, body = post_initialize(gw.url, {"Authorization": f"Bearer {token(good)}"})
    assert status == 403, body
    challenge = headers.get("www-authenticate") or headers.get("WWW-Authenticate")
    assert 'error="insufficient_scope"' in challenge and 'scope="mcp:admin"' in challenge
    ok = token(good, scope="mcp:tools mcp:admin")
    assert post_initialize(gw.url, {"Authorization": f"Bearer {ok}"})[0] == 200


def test_jwks_from_url_with_rotation(procs, tmp_path):
    first, second = rsa_key(), rsa_key()
    served = {"keys": [jwk_of(first, "k1")]}
    fetches = []

    class Jwks(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 - http.server API
            fetches.append(self.path)
            body = json.dumps(served).encode()
            self.send_response(200)
            self.send_header("content-type", "application/json")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Jwks)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/jwks.json"
        gw = procs.gateway(
            {
                "upstreams": {"fx": fixture_stdio()},
                "auth": {
                    "jwt": {"jwks_url": url, "issuer": ISSUER, "audience": AUDIENCE, "jwks_refetch_min": "0s"}
                },
            }
        )
        gw.wait_up("fx")
        assert post_initialize(gw.url, {"Authorization": f"Bearer {token(first)}"})[0] == 200
        assert post_initialize(gw.url, {"Authorization": f"Bearer {token(first)}"})[0] == 200
        assert len(fetches) == 1, "the JWKS is cached"
        # The IdP rotates to a new key id: an unknown kid triggers a refetch.
        served["keys"].append(jwk_of(second, "k2"))
        assert post_initialize(gw.url, {"Authorization": f"Bearer {token(second, kid='k2')}"})[0] == 200
        assert len(fetches) == 2
        # A kid the IdP does not publish is refused after one more fetch.
        assert post_initialize(gw.url, {"Authorization": f"Bearer {token(rsa_key(), kid='k9')}"})[0] == 401
    finally:
        server.shutdown()


def test_client_token_never_reaches_the_upstream_and_sessions_are_bound(procs, keys):
    good, jwks = keys
    fixture_url = procs.fixture_http()
    gw = auth_gateway(
        procs,
        jwks,
        upstream={"http": {"url": fixture_url, "headers": {"X-Upstream-Credential": "from-config"}}},
    )
    tok = token(good)

    async def go():
        async with mcp_session(gw.url, {"Authorization": f"Bearer {tok}", "X-API-Key": "leak"}) as s:
            result = await s.call_tool("fx__headers", {})
            return json.loads(result.content[0].text)

    seen = run(go())
    assert seen.get("x-upstream-credential") == "from-config"
    assert "authorization" not in seen and "x-api-key" not in seen, seen
    assert tok not in json.dumps(seen)

    # A session opened by alice cannot be used with bob's credentials.
    status, headers, _ = post_initialize(gw.url, {"Authorization": f"Bearer {tok}"})
    assert status == 200
    session = headers.get("mcp-session-id") or headers.get("Mcp-Session-Id")
    import urllib.request

    req = urllib.request.Request(
        gw.url,
        data=json.dumps({"jsonrpc": "2.0", "id": 2, "method": "tools/list"}).encode(),
        method="POST",
        headers={
            "content-type": "application/json",
            "accept": "application/json, text/event-stream",
            "mcp-session-id": session,
            "mcp-protocol-version": "2025-06-18",
            "Authorization": f"Bearer {API_KEY}",
        },
    )
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            code = r.status
    except urllib.error.HTTPError as e:
        code = e.code
    assert code == 403
