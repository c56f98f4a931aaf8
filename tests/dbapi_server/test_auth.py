"""Bearer-token verification with real EdDSA JWTs: every forged, stale or missing token is a 401."""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from collections.abc import Callable
from typing import Any

import jwt
import orjson
import pytest
import sqlalchemy as sa

from dbapi_server import mint_token
from dbapi_server.keys import generate_keypair
from dbapi_server.keyset import public_jwk
from tests.servers import _PRIVATE, _PUBLIC, RunningServer

from ._support import RawApi, count_rows, statements_reaching

metadata = sa.MetaData()
notes = sa.Table(
    "notes", metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("body", sa.String(100), nullable=False),
)



@pytest.fixture
def api_secrets(engine: sa.Engine, server: RunningServer) -> list[str]:
    return [str(engine.url), server.token, _PUBLIC.decode().splitlines()[1]]


# -- forged tokens --------------------------------------------------------------------------------
def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


_KID = public_jwk(_PUBLIC)["kid"]


def _claims(**override: Any) -> dict[str, Any]:
    now = int(time.time())
    return {"sub": "test-worker", "aud": "dbsession", "iss": "dbsession-trusted", "iat": now, "nbf": now,
            "exp": now + 600, "jti": "j1", **override}


def _signed(claims: dict[str, Any]) -> str:
    """Signed by the server's key with its kid: only the claims make it good or bad."""
    return jwt.encode(claims, _PRIVATE, algorithm="EdDSA", headers={"kid": _KID})


def _unsigned(alg: str = "none") -> str:
    header = _b64(orjson.dumps({"alg": alg, "typ": "JWT", "kid": _KID}))
    return f"{header}.{_b64(orjson.dumps(_claims()))}."


def _hs256_with(secret: bytes) -> str:
    """HS256 signed with *secret*: the classic key-confusion attack when *secret* is the public key."""
    signing_input = f"{_b64(orjson.dumps({'alg': 'HS256', 'typ': 'JWT', 'kid': _KID}))}.{_b64(orjson.dumps(_claims()))}"
    signature = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{_b64(signature)}"


def _tampered() -> str:
    """A genuine token whose payload was changed afterwards (a different subject)."""
    header, _, signature = mint_token(_PRIVATE, subject="test-worker").split(".")
    return f"{header}.{_b64(orjson.dumps(_claims(sub='scheduler')))}.{signature}"


BAD_AUTHORIZATION: dict[str, Callable[[], str | None]] = {
    "missing": lambda: None,
    "empty-bearer": lambda: "Bearer ",
    "basic-scheme": lambda: "Basic dGVzdDp0ZXN0",
    "lowercase-scheme-garbage": lambda: "bearer x.y.z",
    "garbage": lambda: "Bearer garbage",
    "three-garbage-parts": lambda: "Bearer aaa.bbb.ccc",
    "expired": lambda: "Bearer " + mint_token(_PRIVATE, subject="test-worker", ttl=-100),
    "other-key": lambda: "Bearer " + mint_token(generate_keypair()[0], subject="test-worker"),
    "alg-none": lambda: "Bearer " + _unsigned("none"),
    "alg-None": lambda: "Bearer " + _unsigned("None"),
    "hs256-with-public-key": lambda: "Bearer " + _hs256_with(_PUBLIC),
    "hs256-with-empty-secret": lambda: "Bearer " + _hs256_with(b""),
    "wrong-audience": lambda: "Bearer " + mint_token(_PRIVATE, subject="test-worker", audience="other"),
    "not-yet-valid": lambda: "Bearer " + _signed(_claims(nbf=int(time.time()) + 3600)),
    "no-expiry": lambda: "Bearer " + _signed({k: v for k, v in _claims().items() if k != "exp"}),
    "no-audience": lambda: "Bearer " + _signed({k: v for k, v in _claims().items() if k != "aud"}),
    "no-kid": lambda: "Bearer " + jwt.encode(_claims(), _PRIVATE, algorithm="EdDSA"),
    "tampered-payload": _tampered,
}


@pytest.mark.parametrize("make", BAD_AUTHORIZATION.values(), ids=BAD_AUTHORIZATION.keys())
def test_bad_token_is_refused_and_nothing_runs(api: RawApi, engine: sa.Engine, server: RunningServer,
                                               make: Callable[[], str | None]) -> None:
    authorization = make()
    headers = {"Authorization": authorization} if authorization is not None else {}
    txn = api.transaction(token=None)
    body = txn.next_payload(sa.insert(notes).values(body="forged"))
    with statements_reaching(server.state.engine) as statements:
        reply = api.post("/execute", body, token=None, headers=headers)
        commit = api.post(f"/transactions/{txn.id}/commit", {"seq": 2}, token=None, headers=headers)
    assert statements == []  # nothing reached the database, not even a read
    assert reply.status == 401, reply.body
    assert reply.error["code"] in ("unauthenticated", "token_expired")
    assert reply.error["retryable"] is False
    assert server.state.transactions.open_count == 0
    assert count_rows(engine, notes) == 0
    assert commit.status == 401


def test_reads_need_a_token_too(api: RawApi) -> None:
    reply = api.execute(sa.select(notes), token=None)
    assert (reply.status, reply.error["code"]) == (401, "unauthenticated")
    assert "Authorization: Bearer" in reply.error["message"]


def test_expired_token_says_so(api: RawApi) -> None:
    reply = api.execute(sa.select(notes), token=mint_token(_PRIVATE, subject="w", ttl=-100))
    assert (reply.status, reply.error["code"]) == (401, "token_expired")
    assert "expired" in reply.error["message"]


def test_valid_tokens_work(api: RawApi, server: RunningServer) -> None:
    other = server.mint("another-worker", ttl=60)
    with statements_reaching(server.state.engine) as statements:
        assert api.execute(sa.select(notes)).status == 200
        assert api.execute(sa.select(notes), token=other).status == 200
    assert len(statements) == 2  # the counter the bad-token test relies on sees real requests


def test_token_within_clock_skew_still_works(api: RawApi) -> None:
    """Expired by less than the verifier's leeway: accepted, as PyJWT's leeway promises."""
    assert api.execute(sa.select(notes), token=mint_token(_PRIVATE, subject="w", ttl=-2)).status == 200


def test_a_verified_token_is_not_accepted_after_it_expires(api: RawApi, server: RunningServer) -> None:
    """The verifier caches good tokens; the cache must not outlive the token (plus leeway)."""
    token = mint_token(_PRIVATE, subject="w", ttl=-9)  # expired, but within the 10s leeway
    assert api.execute(sa.select(notes), token=token).status == 200
    authenticator = server.state.auth
    original = authenticator.leeway
    authenticator.leeway = 0.0  # the clock moves on past the leeway
    try:
        reply = api.execute(sa.select(notes), token=token)
    finally:
        authenticator.leeway = original
    assert reply.status == 401


def test_info_and_health_need_no_token(api: RawApi) -> None:
    assert api.get("/info", token=None).status == 200
    assert api.get("/health", token="garbage").status == 200
