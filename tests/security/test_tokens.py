"""Tokens end to end: a real DB-API on loopback, real keys and JWTs, a real isolated DBSession.

Every bad token is a 401 and leaves the database unchanged; keys rotate by ``kid`` without a
restart (PEM key directory, JWKS file, JWKS URL on a loopback HTTP server); a transaction spans
a token refresh; the client refuses shared token files and keeps its token out of child
processes, logs, reprs and error messages; the trusted side's CLI mints and publishes keys.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import http.server
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import jwt
import orjson
import pytest
import sqlalchemy as sa
from click.testing import CliRunner
from cryptography.hazmat.primitives.serialization import load_pem_private_key
from jwt.algorithms import OKPAlgorithm
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

import dbsession
from dbapi_server import JWTAuthenticator, KeyFiles, RemoteJWKS, TokenFileRefresher, create_app, mint_token
from dbapi_server.app import ConfigError
from dbapi_server.auth import Principal, Unauthenticated, authenticator_from_env
from dbapi_server.cli import main as server_cli
from dbapi_server.keys import generate_keypair
from dbapi_server.keyset import jwks_document, public_jwk, thumbprint
from dbapi_server.minting import write_token_file
from dbsession import AuthenticationError, ConfigurationError, DBSession, guard
from dbsession.auth import TokenSource
from tests.dbapi_server._support import statements_reaching
from tests.servers import RunningServer, running_dbapi

LEEWAY = 5.0
MAX_LIFETIME = 3600.0


class Base(DeclarativeBase):
    metadata = sa.MetaData()


class Note(Base):
    __tablename__ = "notes"
    id: Mapped[int] = mapped_column(primary_key=True)
    body: Mapped[str] = mapped_column(sa.String(200))


# -- keys and servers -----------------------------------------------------------------------------
class Keys:
    """A key directory the server watches, and the private keys the trusted side keeps elsewhere."""

    def __init__(self, directory: Path, private_dir: Path) -> None:
        self.directory, self.private_dir = directory, private_dir
        self.private: dict[str, bytes] = {}
        self.public: dict[str, bytes] = {}

    def add(self, name: str, key_type: str = "ed25519") -> str:
        private, public = generate_keypair(key_type)
        kid = public_jwk(public)["kid"]
        self.private[name], self.public[name] = private, public
        (self.directory / f"{name}.pub").write_bytes(public)
        return kid

    def remove(self, name: str) -> None:
        (self.directory / f"{name}.pub").unlink()

    def kid(self, name: str) -> str:
        return str(public_jwk(self.public[name])["kid"])

    def mint(self, name: str = "ed", subject: str = "task:etl.extract", **kw: Any) -> str:
        return mint_token(self.private[name], subject=subject, **kw)


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[sa.Engine]:
    engine = guard.exempt(sa.create_engine(f"sqlite:///{tmp_path_factory.mktemp('tokens') / 'db.sqlite'}"))
    Base.metadata.create_all(engine)
    yield engine
    engine.dispose()


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Keys:
    keys = Keys(tmp_path_factory.mktemp("server-keys"), tmp_path_factory.mktemp("trusted-side"))
    keys.add("ed", "ed25519")
    keys.add("rsa", "rsa")
    return keys


@pytest.fixture(scope="module")
def server(engine: sa.Engine, keys: Keys) -> Iterator[RunningServer]:
    auth = JWTAuthenticator(KeyFiles([keys.directory], check_interval=0.0), leeway=LEEWAY,
                            max_lifetime=MAX_LIFETIME)
    with running_dbapi(engine, Base.metadata, authenticator=auth) as server:
        yield server


@pytest.fixture(autouse=True)
def _clean(engine: sa.Engine) -> Iterator[None]:
    guard.uninstall()
    dbsession.reset_configuration()
    with engine.begin() as conn:
        conn.execute(sa.delete(Note.__table__))
    yield
    guard.uninstall()
    dbsession.reset_configuration()


def notes_in(engine: sa.Engine) -> list[str]:
    with engine.connect() as conn:
        return list(conn.scalars(sa.select(Note.body).order_by(Note.id)))


def isolated(server: RunningServer, **kw: Any) -> DBSession:
    return DBSession(database_access_isolation=True, database_api_host=server.url, **kw)


def write_attempt(server: RunningServer, token: str) -> AuthenticationError:
    """An isolated session tries to insert a row with *token*; returns the refusal."""
    with isolated(server, token=token) as s:
        s.add(Note(body="written with a bad token"))
        with pytest.raises(AuthenticationError) as caught:
            s.commit()
        s.rollback()
    return caught.value


# -- crafted tokens -------------------------------------------------------------------------------
def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def claims(**override: Any) -> dict[str, Any]:
    now = int(time.time())
    base = {"sub": "task:etl.extract", "iss": "dbsession-trusted", "aud": "dbsession", "iat": now,
            "nbf": now, "exp": now + 600, "jti": "jti-1"}
    base.update(override)
    return {k: v for k, v in base.items() if v is not None}


def signed(keys: Keys, payload: dict[str, Any], name: str = "ed", **header: Any) -> str:
    algorithm = "RS256" if name == "rsa" else "EdDSA"
    return jwt.encode(payload, keys.private[name], algorithm=algorithm, headers={"kid": keys.kid(name), **header})


def unsigned(keys: Keys, alg: str) -> str:
    header = _b64(orjson.dumps({"alg": alg, "typ": "JWT", "kid": keys.kid("ed")}))
    return f"{header}.{_b64(orjson.dumps(claims()))}."


def hs256_with(secret: bytes, kid: str) -> str:
    """HS256 "signed" with *secret* - the key-confusion attack when *secret* is a public key."""
    signing_input = f"{_b64(orjson.dumps({'alg': 'HS256', 'typ': 'JWT', 'kid': kid}))}.{_b64(orjson.dumps(claims()))}"
    return f"{signing_input}.{_b64(hmac.new(secret, signing_input.encode(), hashlib.sha256).digest())}"


def forged(keys: Keys) -> str:
    """Signed by an attacker's own key, claiming the server key's kid."""
    attacker = generate_keypair()[0]
    return jwt.encode(claims(), attacker, algorithm="EdDSA", headers={"kid": keys.kid("ed")})


def tampered(keys: Keys) -> str:
    """A genuine token whose payload was changed afterwards (another subject, a role)."""
    header, _, signature = keys.mint().split(".")
    return f"{header}.{_b64(orjson.dumps(claims(sub='scheduler', role='admin')))}.{signature}"


def without(claim: str) -> Callable[[Keys], str]:
    return lambda keys: signed(keys, claims(**{claim: None}))


future = int(time.time()) + 3600
BAD_TOKENS: dict[str, Callable[[Keys], str]] = {
    "forged-signature": forged,
    "tampered-payload": tampered,
    "expired": lambda keys: keys.mint(ttl=-100),
    "expired-rsa": lambda keys: keys.mint("rsa", ttl=-100),
    "not-yet-valid-nbf": lambda keys: signed(keys, claims(nbf=int(time.time()) + 600)),
    "not-yet-valid-iat": lambda keys: signed(keys, claims(iat=int(time.time()) + 600, nbf=None)),
    "issued-in-the-future": lambda keys: keys.mint(now=time.time() + 600),
    "wrong-audience": lambda keys: keys.mint(audience="another-service"),
    "wrong-issuer": lambda keys: keys.mint(issuer="someone-else"),
    "alg-none": lambda keys: unsigned(keys, "none"),
    "alg-None": lambda keys: unsigned(keys, "None"),
    "hs256-with-ed25519-public-pem": lambda keys: hs256_with(keys.public["ed"], keys.kid("ed")),
    "hs256-with-rsa-public-pem": lambda keys: hs256_with(keys.public["rsa"], keys.kid("rsa")),
    "hs256-with-public-jwk-json": lambda keys: hs256_with(json.dumps(public_jwk(keys.public["ed"])).encode(),
                                                          keys.kid("ed")),
    "rs256-header-on-ed25519-kid": lambda keys: jwt.encode(claims(), keys.private["rsa"], algorithm="RS256",
                                                           headers={"kid": keys.kid("ed")}),
    "unknown-kid": lambda keys: keys.mint(kid="no-such-key"),
    "no-kid": lambda keys: jwt.encode(claims(), keys.private["ed"], algorithm="EdDSA"),
    "missing-sub": without("sub"),
    "empty-sub": lambda keys: signed(keys, claims(sub="")),
    "missing-iss": without("iss"),
    "missing-aud": without("aud"),
    "missing-exp": without("exp"),
    "missing-iat": without("iat"),
    "missing-jti": without("jti"),
    "lifetime-over-max": lambda keys: keys.mint(ttl=MAX_LIFETIME + 60),
    "garbage": lambda keys: "not.a.jwt",
}


@pytest.mark.parametrize("make", BAD_TOKENS.values(), ids=BAD_TOKENS.keys())
def test_bad_token_is_401_and_nothing_is_written(server: RunningServer, engine: sa.Engine, keys: Keys,
                                                 make: Callable[[Keys], str]) -> None:
    token = make(keys)
    with statements_reaching(server.state.engine) as statements:
        refusal = write_attempt(server, token)
    assert statements == []  # not a single statement: the token is checked before anything runs
    assert refusal.status == 401 and refusal.code in ("unauthenticated", "token_expired")
    signature = token.split(".")[-1]
    assert token not in str(refusal) and (not signature or signature not in str(refusal))
    assert notes_in(engine) == []
    assert server.state.transactions.open_count == 0


def test_the_same_key_material_with_good_claims_works(server: RunningServer, engine: sa.Engine,
                                                      keys: Keys) -> None:
    """The bad-token cases fail for their one defect: the crafting helpers make good tokens too."""
    for token in (signed(keys, claims()), signed(keys, claims(), name="rsa"), keys.mint(), keys.mint("rsa")):
        with statements_reaching(server.state.engine) as statements, isolated(server, token=token) as s:
            s.add(Note(body="ok"))
            s.commit()
        assert [sql.split(" (")[0] for sql in statements] == ["INSERT INTO notes"]  # what the bad ones never ran
    assert notes_in(engine) == ["ok"] * 4


@pytest.mark.parametrize(("make", "words"), [
    (lambda keys: keys.mint(kid="no-such-key"), ["'no-such-key'", "verification keys"]),
    (lambda keys: keys.mint(ttl=-100), ["expired"]),
    (lambda keys: keys.mint(issuer="someone-else"), ["issuer"]),
    (lambda keys: keys.mint(audience="another-service"), ["udience"]),
    (lambda keys: unsigned(keys, "none"), ["'none'", "EdDSA, RS256"]),
    (lambda keys: keys.mint(ttl=MAX_LIFETIME + 60), ["longer than", "refresh"]),
    (lambda keys: jwt.encode(claims(), keys.private["ed"], algorithm="EdDSA"), ["kid"]),
], ids=["unknown-kid", "expired", "issuer", "audience", "alg-none", "lifetime", "no-kid"])
def test_refusals_say_why(server: RunningServer, keys: Keys, make: Callable[[Keys], str],
                          words: list[str]) -> None:
    message = str(write_attempt(server, make(keys)))
    for word in words:
        assert word in message


def test_expired_token_has_its_own_code(server: RunningServer, keys: Keys) -> None:
    assert write_attempt(server, keys.mint(ttl=-100)).code == "token_expired"
    assert write_attempt(server, keys.mint(kid="nope")).code == "unauthenticated"


def test_clock_skew_is_allowed_within_the_leeway(server: RunningServer, engine: sa.Engine, keys: Keys) -> None:
    for token in (keys.mint(ttl=-2), keys.mint(now=time.time() + 2)):  # expired / issued 2 s "ago" and "ahead"
        with isolated(server, token=token) as s:
            s.add(Note(body="skewed"))
            s.commit()
    assert notes_in(engine) == ["skewed", "skewed"]


def test_hs256_stays_refused_even_when_allowed_next_to_asymmetric_keys(engine: sa.Engine, keys: Keys) -> None:
    """Key confusion: with HS256 in the allowlist, a public key still verifies only its own algorithm."""
    auth = JWTAuthenticator(KeyFiles([keys.directory]), algorithms=["EdDSA", "RS256", "HS256"])
    with running_dbapi(engine, Base.metadata, authenticator=auth) as server:
        for name in ("ed", "rsa"):
            refusal = write_attempt(server, hs256_with(keys.public[name], keys.kid(name)))
            assert "does not match the key's algorithm" in str(refusal)
        with isolated(server, token=keys.mint()) as s:  # the real key still works
            s.add(Note(body="genuine"))
            s.commit()
    assert notes_in(engine) == ["genuine"]


# -- roles, scopes, claims ------------------------------------------------------------------------
def test_role_scopes_and_policy_claims_reach_the_principal(keys: Keys) -> None:
    auth = JWTAuthenticator(KeyFiles([keys.directory]))
    token = keys.mint(subject="ti:etl/extract/run1/-1", role="task", scopes=["read:dag", "write:ti"],
                      dag_id="etl", run_id="run1", map_index=-1)
    principal = auth.authenticate(f"Bearer {token}")
    assert principal.subject == "ti:etl/extract/run1/-1"
    assert principal.role == "task"
    assert principal.scopes == {"read:dag", "write:ti"}
    assert (principal.claims["dag_id"], principal.claims["run_id"], principal.claims["map_index"]) == ("etl", "run1", -1)
    assert principal.claims["jti"] != jwt.decode(keys.mint(), options={"verify_signature": False})["jti"]
    assert Principal("s", {"scope": ["a", "b", 3]}).scopes == {"a", "b"}
    assert Principal("s", {}).role is None and Principal("s", {}).scopes == frozenset()


def test_mint_token_refuses_to_override_registered_claims(keys: Keys) -> None:
    with pytest.raises(ValueError, match="exp, iss cannot be passed"):
        keys.mint(exp=1, iss="x")
    with pytest.raises(ValueError, match="non-empty subject"):
        keys.mint(subject="")
    with pytest.raises(TypeError, match="Ed25519 or RSA"):
        mint_token(object(), subject="s")


def test_mint_token_defaults(keys: Keys) -> None:
    token = keys.mint()
    header = jwt.get_unverified_header(token)
    payload = jwt.decode(token, options={"verify_signature": False})
    assert header == {"alg": "EdDSA", "kid": keys.kid("ed"), "typ": "JWT"}
    assert payload["exp"] - payload["iat"] == 600 and payload["nbf"] == payload["iat"]
    assert (payload["iss"], payload["aud"]) == ("dbsession-trusted", "dbsession")
    assert len(payload["jti"]) >= 16
    assert jwt.get_unverified_header(keys.mint("rsa"))["alg"] == "RS256"


# -- rotation -------------------------------------------------------------------------------------
def test_rotation_without_downtime_in_a_key_directory(engine: sa.Engine, keys: Keys, tmp_path: Path) -> None:
    """Two keys active at once; removing the old one ends its tokens, cached ones included."""
    rotating = Keys(tmp_path / "keys", tmp_path)
    rotating.directory.mkdir()
    rotating.add("old")
    auth = JWTAuthenticator(KeyFiles([rotating.directory], check_interval=0.0))
    with running_dbapi(engine, Base.metadata, authenticator=auth) as server:
        old_token = rotating.mint("old")
        with isolated(server, token=old_token) as s:
            s.add(Note(body="old key"))
            s.commit()  # verified: now in the server's token cache

        rotating.add("new")  # step 1: publish the new public key - the server picks it up live
        with isolated(server, token=rotating.mint("new")) as s:
            s.add(Note(body="new key"))
            s.commit()
        with isolated(server, token=old_token) as s:  # both keys are active
            s.add(Note(body="old key again"))
            s.commit()

        rotating.remove("old")  # step 3: retire the old key
        refusal = write_attempt(server, old_token)
        assert rotating.kid("old") in str(refusal)
        with isolated(server, token=rotating.mint("new")) as s:
            s.add(Note(body="new key again"))
            s.commit()
    assert notes_in(engine) == ["old key", "new key", "old key again", "new key again"]


def test_a_broken_key_file_added_later_does_not_lock_everyone_out(engine: sa.Engine, tmp_path: Path,
                                                                  caplog: pytest.LogCaptureFixture) -> None:
    rotating = Keys(tmp_path / "keys", tmp_path)
    rotating.directory.mkdir()
    rotating.add("k1")
    key_files = KeyFiles([rotating.directory], check_interval=0.0)
    (rotating.directory / "half-copied.pub").write_text("-----BEGIN PUBLIC KEY-----\nMCow")
    assert key_files.kids == [rotating.kid("k1")]
    assert "half-copied.pub" in caplog.text


@pytest.mark.parametrize(("name", "content"), [
    ("half-copied.pub", "-----BEGIN PUBLIC KEY-----\nMCow"),
    ("truncated.json", '{"keys": [{"kty": "OKP", '),
    ("no-keys.jwks", '{"keys": "none"}'),
], ids=["pem", "json", "jwks"])
def test_a_broken_key_file_at_startup_is_an_error(engine: sa.Engine, tmp_path: Path, name: str, content: str,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """Unlike a file dropped in later (logged and skipped), a broken file at startup stops the
    server, naming the file - even next to a good key."""
    rotating = Keys(tmp_path / "keys", tmp_path)
    rotating.directory.mkdir()
    rotating.add("good")
    (rotating.directory / name).write_text(content)
    with pytest.raises(ValueError, match=re.escape(str(rotating.directory / name))):
        KeyFiles([rotating.directory])
    monkeypatch.setenv("DBAPI_JWT_KEY_FILE", str(rotating.directory))
    with pytest.raises(ConfigError, match=re.escape(name)):
        create_app(engine=engine, metadata=Base.metadata)
    (rotating.directory / name).unlink()  # the same directory without it starts
    state = create_app(engine=engine, metadata=Base.metadata).extensions["dbapi_server"]
    state.transactions.close()  # its reaper thread; the engine is the module's
    assert state.auth.keys.kids == [rotating.kid("good")]


def test_key_files_refuse_private_and_secret_keys(tmp_path: Path) -> None:
    private, _ = generate_keypair()
    (tmp_path / "oops.pem").write_bytes(private)
    with pytest.raises(ValueError, match="PRIVATE key"):
        KeyFiles([tmp_path])
    (tmp_path / "oops.pem").unlink()
    (tmp_path / "secret.json").write_text(json.dumps({"keys": [{"kty": "oct", "k": "c2VjcmV0", "kid": "s"}]}))
    with pytest.raises(ValueError, match="shared-secret"):
        KeyFiles([tmp_path])
    (tmp_path / "secret.json").unlink()
    with pytest.raises(ValueError, match="No verification keys"):
        KeyFiles([tmp_path])
    with pytest.raises(ValueError, match="PRIVATE"):
        JWTAuthenticator(private)


def test_rotation_in_a_jwks_file_made_by_keygen(engine: sa.Engine, tmp_path: Path) -> None:
    jwks_file = tmp_path / "jwks.json"
    runner = CliRunner()
    kids = []
    for name in ("k1", "k2"):
        result = runner.invoke(server_cli, ["keygen", "--out", str(tmp_path), "--name", name, "--jwks", str(jwks_file)])
        assert result.exit_code == 0, result.output
        kids.append(result.output.split()[1])
    document = json.loads(jwks_file.read_text())
    assert [k["kid"] for k in document["keys"]] == kids
    assert oct(jwks_file.stat().st_mode & 0o777) == "0o644"

    auth = JWTAuthenticator(KeyFiles([jwks_file], check_interval=0.0))
    with running_dbapi(engine, Base.metadata, authenticator=auth) as server:
        t1 = mint_token((tmp_path / "k1.key").read_bytes(), subject="w")
        t2 = mint_token((tmp_path / "k2.key").read_bytes(), subject="w")
        for token in (t1, t2):
            with isolated(server, token=token) as s:
                s.add(Note(body="jwks"))
                s.commit()
        write_token_file(jwks_file, json.dumps({"keys": document["keys"][1:]}))  # retire k1
        assert kids[0] in str(write_attempt(server, t1))
        with isolated(server, token=t2) as s:
            assert s.scalars(sa.select(Note.body)).all() == ["jwks", "jwks"]


# -- JWKS URL -------------------------------------------------------------------------------------
class JWKSServer:
    """A tiny real HTTP server on loopback publishing a JWKS document; counts fetches."""

    def __init__(self) -> None:
        self.document: dict[str, Any] = {"keys": []}
        self.fetches = 0
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                outer.fetches += 1
                body = json.dumps(outer.document).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/.well-known/jwks.json"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def publish(self, *public_keys: bytes) -> None:
        self.document = jwks_document(public_jwk(k) for k in public_keys)

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join()


@pytest.fixture
def jwks_server() -> Iterator[JWKSServer]:
    published = JWKSServer()
    yield published
    published.close()


def test_jwks_url_rotation(engine: sa.Engine, tmp_path: Path, jwks_server: JWKSServer) -> None:
    rotating = Keys(tmp_path, tmp_path)
    rotating.add("k1")
    jwks_server.publish(rotating.public["k1"])
    remote = RemoteJWKS(jwks_server.url, lifespan=0.5, cooldown=0.0)
    with running_dbapi(engine, Base.metadata, authenticator=JWTAuthenticator(remote)) as server:
        t1 = rotating.mint("k1")
        with isolated(server, token=t1) as s:
            s.add(Note(body="k1"))
            s.commit()
        rotating.add("k2")
        jwks_server.publish(rotating.public["k1"], rotating.public["k2"])
        t2 = rotating.mint("k2")  # unknown to the cached document: one re-fetch finds it
        with isolated(server, token=t2) as s:
            s.add(Note(body="k2"))
            s.commit()
        jwks_server.publish(rotating.public["k2"])  # retire k1: effective once the cache lapses
        time.sleep(0.6)
        assert rotating.kid("k1") in str(write_attempt(server, t1))
        with isolated(server, token=t2) as s:
            assert s.scalars(sa.select(Note.body)).all() == ["k1", "k2"]


def test_jwks_url_unknown_kids_cannot_hammer_the_key_service(engine: sa.Engine, keys: Keys,
                                                             jwks_server: JWKSServer) -> None:
    jwks_server.publish(keys.public["ed"])
    remote = RemoteJWKS(jwks_server.url, lifespan=300, cooldown=60)
    with running_dbapi(engine, Base.metadata, authenticator=JWTAuthenticator(remote)) as server:
        with isolated(server, token=keys.mint()) as s:
            assert s.scalars(sa.select(Note)).all() == []
        assert jwks_server.fetches == 1
        for n in range(5):
            assert f"'forged-{n}'" in str(write_attempt(server, keys.mint(kid=f"forged-{n}")))
        assert jwks_server.fetches == 1  # within the cooldown: no re-fetch at all
    assert notes_in(engine) == []


def test_jwks_url_publishing_private_or_secret_keys_verifies_nothing(engine: sa.Engine, keys: Keys,
                                                                      jwks_server: JWKSServer) -> None:
    """A misconfigured key service that leaks private keys or shared secrets is not trusted."""
    private = OKPAlgorithm.to_jwk(load_pem_private_key(keys.private["ed"], password=None), as_dict=True)
    secret = {"kty": "oct", "k": _b64(b"a-long-shared-secret-of-32-bytes!"), "kid": "shared", "alg": "HS256"}
    jwks_server.document = {"keys": [{**private, "kid": "leaked"}, secret]}
    auth = JWTAuthenticator(RemoteJWKS(jwks_server.url), algorithms=["EdDSA", "HS256"])
    with running_dbapi(engine, Base.metadata, authenticator=auth) as server:
        assert "'leaked'" in str(write_attempt(server, keys.mint(kid="leaked")))
        hs_token = mint_token("a-long-shared-secret-of-32-bytes!", subject="w", algorithm="HS256", kid="shared")
        assert "'shared'" in str(write_attempt(server, hs_token))
    assert notes_in(engine) == []


def test_jwks_url_unreachable_is_a_retryable_503(engine: sa.Engine, keys: Keys, jwks_server: JWKSServer) -> None:
    url = jwks_server.url
    jwks_server.close()
    jwks_server.close = lambda: None  # type: ignore[method-assign]
    with running_dbapi(engine, Base.metadata, authenticator=JWTAuthenticator(RemoteJWKS(url, timeout=2))) as server:
        with isolated(server, token=keys.mint()) as s:
            s.add(Note(body="x"))
            with pytest.raises(dbsession.ServerError, match="cannot be checked now") as caught:
                s.commit()
            s.rollback()
    assert caught.value.code == "key_service_unavailable"
    assert notes_in(engine) == []


def test_jwks_url_down_keeps_verified_tokens_working(engine: sa.Engine, tmp_path: Path,
                                                    jwks_server: JWKSServer) -> None:
    """The key service goes away and the cached document lapses: a token verified before still
    works (until it expires), a token never seen gets the retryable 503."""
    rotating = Keys(tmp_path, tmp_path)
    rotating.add("k1")
    jwks_server.publish(rotating.public["k1"])
    remote = RemoteJWKS(jwks_server.url, lifespan=0.3, cooldown=0.0, timeout=2)
    with running_dbapi(engine, Base.metadata, authenticator=JWTAuthenticator(remote)) as server:
        verified = rotating.mint("k1")
        with isolated(server, token=verified) as s:
            s.add(Note(body="before"))
            s.commit()
        fetches = jwks_server.fetches
        jwks_server.close()
        jwks_server.close = lambda: None  # type: ignore[method-assign]
        time.sleep(0.5)  # past the document's lifespan: every key lookup now tries the dead URL
        with isolated(server, token=verified) as s:
            s.add(Note(body="while the key service is down"))
            s.commit()
        with isolated(server, token=rotating.mint("k1")) as s:  # same key, but never verified
            s.add(Note(body="refused"))
            with pytest.raises(dbsession.ServerError, match="cannot be checked now") as caught:
                s.commit()
            s.rollback()
        assert (caught.value.code, caught.value.status) == ("key_service_unavailable", 503)
    assert fetches >= 1
    assert notes_in(engine) == ["before", "while the key service is down"]


# -- refresh --------------------------------------------------------------------------------------
@pytest.fixture
def strict_server(engine: sa.Engine, keys: Keys) -> Iterator[RunningServer]:
    """No clock skew allowed, so short-lived tokens really expire during a test."""
    auth = JWTAuthenticator(KeyFiles([keys.directory]), leeway=0.0)
    with running_dbapi(engine, Base.metadata, authenticator=auth) as server:
        yield server


def test_transaction_spans_token_refreshes(strict_server: RunningServer, engine: sa.Engine, keys: Keys,
                                           tmp_path: Path) -> None:
    """The trusted side rewrites the file every second; one transaction outlives its first token."""
    path = tmp_path / "task.token"
    with TokenFileRefresher(path, lambda: keys.mint(ttl=4), refresh_at=0.25) as refresher:
        first_expiry = jwt.decode(path.read_text(), options={"verify_signature": False})["exp"]
        assert oct(path.stat().st_mode & 0o777) == "0o600"
        with isolated(strict_server, token_file=str(path)) as s:
            for n in range(4):
                s.add(Note(body=f"step {n}"))
                s.flush()
                assert notes_in(engine) == []  # not committed: one open server transaction
                time.sleep(1.5)
            assert time.time() > first_expiry + 0.5  # the token the transaction began with is dead
            s.commit()
        assert refresher.refreshes >= 4
    assert notes_in(engine) == [f"step {n}" for n in range(4)]


def test_401_token_expired_makes_the_client_re_read_the_file_and_retry(strict_server: RunningServer,
                                                                       engine: sa.Engine, keys: Keys,
                                                                       tmp_path: Path) -> None:
    """The file changed in a way ``stat`` cannot see: the 401 itself triggers the re-read."""
    path = tmp_path / "task.token"
    first = keys.mint(ttl=2)
    write_token_file(path, first)
    with isolated(strict_server, token_file=str(path)) as s:
        s.add(Note(body="before expiry"))
        s.flush()
        expiry = jwt.decode(first, options={"verify_signature": False})["exp"]
        time.sleep(max(0.0, expiry - time.time()) + 0.2)  # the token has expired; the transaction has not
        before = path.stat()
        fresh = keys.mint(ttl=600)
        assert len(fresh) == before.st_size
        with path.open("r+") as handle:  # same inode, size and mtime: invisible to the stat check
            handle.write(fresh)
        os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
        s.add(Note(body="after refresh"))
        s.commit()
    assert notes_in(engine) == ["before expiry", "after refresh"]


def test_a_refreshed_token_for_another_subject_cannot_continue_the_transaction(
        strict_server: RunningServer, engine: sa.Engine, keys: Keys, tmp_path: Path) -> None:
    path = tmp_path / "task.token"
    write_token_file(path, keys.mint(subject="task:a"))
    with isolated(strict_server, token_file=str(path)) as s:
        s.add(Note(body="by a"))
        s.flush()
        write_token_file(path, keys.mint(subject="task:b"))
        with pytest.raises(dbsession.DBAPIRequestError, match="another caller|not yours|belongs") as caught:
            s.commit()
        assert caught.value.status == 403
        s.rollback()
    assert notes_in(engine) == []


def test_without_a_new_token_a_401_is_not_retried(strict_server: RunningServer, keys: Keys, tmp_path: Path) -> None:
    path = tmp_path / "task.token"
    write_token_file(path, keys.mint(ttl=-100))
    with isolated(strict_server, token_file=str(path)) as s:
        with pytest.raises(AuthenticationError, match="expired"):
            s.scalars(sa.select(Note)).all()


# -- the client's token sources -------------------------------------------------------------------
@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o620, 0o660])
def test_token_file_others_can_access_is_refused_at_startup(server: RunningServer, keys: Keys, tmp_path: Path,
                                                            mode: int) -> None:
    path = tmp_path / "task.token"
    path.write_text(keys.mint())
    path.chmod(mode)
    expected = f"{path} has mode {mode:04o}.*chmod 600 {path}"
    with pytest.raises(ConfigurationError, match=expected):
        isolated(server, token_file=str(path))
    with pytest.raises(ConfigurationError, match=expected):
        TokenSource(token_file=str(path))


def test_token_file_from_the_environment_is_checked_too(server: RunningServer, keys: Keys, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "task.token"
    path.write_text(keys.mint())
    path.chmod(0o644)
    monkeypatch.setenv("DATABASE_ACCESS_ISOLATION", "true")
    monkeypatch.setenv("DATABASE_API_HOST", server.url)
    monkeypatch.setenv("DATABASE_API_TOKEN_FILE", str(path))
    with pytest.raises(ConfigurationError, match="chmod 600"):
        DBSession()
    path.chmod(0o600)
    with DBSession() as s:
        assert s.scalars(sa.select(Note)).all() == []


def test_token_file_made_readable_later_is_refused_on_the_next_request(server: RunningServer, keys: Keys,
                                                                       tmp_path: Path) -> None:
    path = write_token_file(tmp_path / "task.token", keys.mint())
    with isolated(server, token_file=str(path)) as s:
        assert s.scalars(sa.select(Note)).all() == []
        s.rollback()
        path.chmod(0o644)
        with pytest.raises(ConfigurationError, match="chmod 600"):
            s.scalars(sa.select(Note)).all()


def test_environment_token_is_not_inherited_by_child_processes(server: RunningServer, keys: Keys,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    token = keys.mint()
    monkeypatch.setenv("DATABASE_API_TOKEN", token)
    settings = dbsession.get_settings()
    assert settings.token == token
    assert "DATABASE_API_TOKEN" not in os.environ
    child = subprocess.run([sys.executable, "-c", "import os; print(os.environ.get('DATABASE_API_TOKEN'))"],
                           capture_output=True, text=True, check=True)
    assert child.stdout.strip() == "None"
    with isolated(server) as s:  # the session still has it
        assert s.scalars(sa.select(Note)).all() == []


def test_importing_dbsession_takes_the_token_out_of_the_environment(keys: Keys) -> None:
    """A fresh process: the token is usable in it, and its children do not see it."""
    token = keys.mint()
    program = (
        "import os, subprocess, sys\n"
        "import dbsession\n"
        "child = subprocess.run([sys.executable, '-c', \"import os; print(os.environ.get('DATABASE_API_TOKEN'))\"],"
        " capture_output=True, text=True, check=True)\n"
        "print(child.stdout.strip())\n"
        "print(dbsession.get_settings().token == os.environ.get('EXPECTED'))\n"
    )
    env = {**os.environ, "DATABASE_API_TOKEN": token, "EXPECTED": token}
    done = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, env=env, check=True,
                          cwd=Path(__file__).resolve().parents[2])
    assert done.stdout.split() == ["None", "True"]


def test_token_never_in_logs_reprs_or_errors(server: RunningServer, keys: Keys, tmp_path: Path,
                                            caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    good, expired = keys.mint(), keys.mint(ttl=-100)
    seen: list[str] = []
    with isolated(server, token=good) as s:
        s.add(Note(body="logged?"))
        s.commit()
        seen += [repr(s), repr(s.get_bind()), repr(s.get_bind().url), repr(dbsession.get_settings(token=good))]
    error = write_attempt(server, expired)
    seen += [str(error), repr(error), repr(error.args)]
    path = write_token_file(tmp_path / "t", good)
    source = TokenSource(token_file=str(path))
    seen += [repr(source), repr(TokenSource(token=good))]
    for bad_mode in (0o644,):
        path.chmod(bad_mode)
        with pytest.raises(ConfigurationError) as caught:
            TokenSource(token_file=str(path))
        seen.append(str(caught.value))
    text = "\n".join([*seen, caplog.text])
    for token in (good, expired):
        assert token not in text
        assert token.split(".")[2] not in text  # not even the signature part


# -- trusted-side CLI -----------------------------------------------------------------------------
def test_cli_keygen_prints_the_kid_and_mint_token_makes_a_working_token(server: RunningServer, keys: Keys,
                                                                       tmp_path: Path) -> None:
    runner = CliRunner()
    result = runner.invoke(server_cli, ["keygen", "--out", str(tmp_path), "--name", "task-signer"])
    assert result.exit_code == 0, result.output
    kid = result.output.split()[1]
    private, public = tmp_path / "task-signer.key", tmp_path / "task-signer.pub"
    assert kid == public_jwk(public.read_bytes())["kid"] == thumbprint(public_jwk(public.read_bytes()))
    assert oct(private.stat().st_mode & 0o777) == "0o600"
    shutil.copy(public, keys.directory / "task-signer.pub")  # deploy the public key to the server
    try:
        out = tmp_path / "task.token"
        result = runner.invoke(server_cli, [
            "mint-token", "--key", str(private), "--sub", "ti:etl/extract", "--role", "task", "--scope", "read",
            "--scope", "write", "--claim", "dag_id=etl", "--ttl", "120", "--out", str(out)])
        assert result.exit_code == 0, result.output
        assert oct(out.stat().st_mode & 0o777) == "0o600"
        token = out.read_text()
        header = jwt.get_unverified_header(token)
        assert (header["kid"], header["alg"]) == (kid, "EdDSA")
        principal = server.state.auth.authenticate(f"Bearer {token}")
        assert (principal.subject, principal.role, principal.scopes, principal.claims["dag_id"]) == (
            "ti:etl/extract", "task", {"read", "write"}, "etl")
        assert principal.claims["exp"] - principal.claims["iat"] == 120
        with isolated(server, token_file=str(out)) as s:
            assert s.scalars(sa.select(Note)).all() == []
    finally:
        (keys.directory / "task-signer.pub").unlink()


def test_cli_mint_token_to_stdout_with_rsa_and_explicit_kid(tmp_path: Path) -> None:
    runner = CliRunner()
    assert runner.invoke(server_cli, ["keygen", "--out", str(tmp_path), "--type", "rsa"]).exit_code == 0
    result = runner.invoke(server_cli, ["mint-token", "--key", str(tmp_path / "dbapi.key"), "--subject", "s",
                                        "--kid", "rsa-2026", "--issuer", "me", "--audience", "them"])
    assert result.exit_code == 0, result.output
    token = result.output.strip()
    assert jwt.get_unverified_header(token) == {"alg": "RS256", "kid": "rsa-2026", "typ": "JWT"}
    payload = jwt.decode(token, (tmp_path / "dbapi.pub").read_bytes(), algorithms=["RS256"], audience="them",
                         issuer="me")
    assert payload["sub"] == "s"


def test_cli_mint_token_refuses_bad_claims(tmp_path: Path) -> None:
    runner = CliRunner()
    assert runner.invoke(server_cli, ["keygen", "--out", str(tmp_path)]).exit_code == 0
    key = str(tmp_path / "dbapi.key")
    for claim, words in (("novalue", "NAME=VALUE"), ("exp=1", "own option"), ("role=admin", "own option")):
        result = runner.invoke(server_cli, ["mint-token", "--key", key, "--sub", "s", "--claim", claim])
        assert result.exit_code != 0 and words in result.output, result.output
    result = runner.invoke(server_cli, ["mint-token", "--key", str(tmp_path / "dbapi.pub"), "--sub", "s"])
    assert result.exit_code != 0 and "Cannot mint a token" in result.output


def test_cli_jwks_builds_a_document_the_server_accepts(tmp_path: Path) -> None:
    runner = CliRunner()
    for name in ("a", "b"):
        assert runner.invoke(server_cli, ["keygen", "--out", str(tmp_path), "--name", name]).exit_code == 0
    result = runner.invoke(server_cli, ["jwks", str(tmp_path / "a.pub"), str(tmp_path / "b.pub")])
    assert result.exit_code == 0, result.output
    (tmp_path / "published.json").write_text(result.output)
    key_files = KeyFiles([tmp_path / "published.json"])
    assert key_files.kids == sorted(public_jwk((tmp_path / f"{n}.pub").read_bytes())["kid"] for n in "ab")
    result = runner.invoke(server_cli, ["jwks", str(tmp_path / "a.key")])
    assert result.exit_code == 0  # a private key gives its public half, never the private members
    assert "\"d\"" not in result.output


# -- server configuration from the environment ----------------------------------------------------
def test_authenticator_from_env(keys: Keys, tmp_path: Path) -> None:
    auth = authenticator_from_env({"DBAPI_JWT_KEY_FILE": os.pathsep.join([str(keys.directory), str(tmp_path)]),
                                   "DBAPI_JWT_ISSUER": "orchestrator", "DBAPI_JWT_MAX_LIFETIME": "60"})
    assert isinstance(auth, JWTAuthenticator)
    assert (auth.issuer, auth.audience, auth.max_lifetime) == ("orchestrator", "dbsession", 60.0)
    assert auth.authenticate(f"Bearer {keys.mint(issuer='orchestrator', ttl=60)}").subject == "task:etl.extract"
    with pytest.raises(Unauthenticated, match="issuer"):
        auth.authenticate(f"Bearer {keys.mint(ttl=60)}")
    with pytest.raises(ValueError, match="DBAPI_JWT_ALGORITHMS=HS256"):
        authenticator_from_env({"DBAPI_JWT_SECRET": "s3cret"})
    with pytest.raises(ValueError, match="DBAPI_JWT_KEY_FILE"):
        authenticator_from_env({})
    with pytest.raises(ValueError, match="Cannot read the key file"):
        authenticator_from_env({"DBAPI_JWT_KEY_FILE": str(tmp_path / "missing.pub")})


def test_hs256_only_when_configured_explicitly() -> None:
    auth = authenticator_from_env({"DBAPI_JWT_SECRET": "a-long-shared-secret-of-32-bytes!", "DBAPI_JWT_ALGORITHMS": "HS256"})
    token = mint_token("a-long-shared-secret-of-32-bytes!", subject="w", algorithm="HS256")
    assert auth.authenticate(f"Bearer {token}").subject == "w"
    asymmetric = JWTAuthenticator(generate_keypair()[1])
    with pytest.raises(Unauthenticated, match="accepts EdDSA, RS256 only"):
        asymmetric.authenticate(f"Bearer {token}")
