"""Credentials, channel authorization, CORS and connection caps, at the HTTP edge."""

from __future__ import annotations

import time
from typing import Dict, Optional

import pytest
from flask import Flask, request
from flask_login import LoginManager, login_user
from werkzeug.test import TestResponse

from flask_sse_ext import SSE, AuthError, Identity, private_channel
from support.app import create_app
from support.client import RawStream
from support.client import request as http
from support.redis import RedisServer
from support.server import Server, StartServer
from support.waiting import wait_until


def get(app: Flask, path: str, **headers: str) -> TestResponse:
    return app.test_client().get(path, headers=headers, buffered=False)


def first_chunk(response: TestResponse) -> bytes:
    chunk = next(response.iter_encoded())
    response.close()
    return chunk


# -- who is asking ---------------------------------------------------------------------------


def test_anonymous_is_401_when_auth_is_required() -> None:
    app = create_app({"SSE_REQUIRE_AUTH": True})
    SSE(app)
    response = get(app, "/stream?channel=news")
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"] == 'Bearer realm="sse"'
    assert b"Authentication required" in response.get_data()


@pytest.mark.parametrize("how", ["bearer", "query"])
def test_token_accepted_from_bearer_and_query(how: str) -> None:
    app = create_app({"SSE_REQUIRE_AUTH": True})
    sse = SSE(app)
    with app.app_context():
        token = sse.issue_token("alice")
    if how == "bearer":
        response = get(app, "/stream?channel=news", Authorization=f"Bearer {token}")
    else:
        response = get(app, f"/stream?channel=news&token={token}")
    assert response.status_code == 200
    assert first_chunk(response) == b"retry: 3000\n"


def test_bearer_wins_over_query_token() -> None:
    app = create_app()
    sse = SSE(app)
    with app.app_context():
        alice, bob = sse.issue_token("alice"), sse.issue_token("bob")
    path = f"/stream?channel={private_channel('alice')}&token={bob}"
    assert get(app, path, Authorization=f"Bearer {alice}").status_code == 200
    assert get(app, path, Authorization=f"Bearer {bob}").status_code == 403


def _tamper(token: str) -> str:
    return token[:-2] + ("A" if token[-2] != "A" else "B") + token[-1]


@pytest.mark.parametrize(
    "credential",
    ["garbage", "tampered", "truncated", "other-secret", "empty-bearer", "huge"],
)
def test_bad_tokens_are_401_never_5xx(credential: str) -> None:
    app = create_app()
    sse = SSE(app)
    with app.app_context():
        token = sse.issue_token("alice")
    other = create_app({"SECRET_KEY": "a different secret"})
    other_sse = SSE(other)
    with other.app_context():
        foreign = other_sse.issue_token("alice")
    headers = {
        "garbage": {"Authorization": "Bearer not.a.token"},
        "tampered": {"Authorization": f"Bearer {_tamper(token)}"},
        "truncated": {"Authorization": f"Bearer {token[:-5]}"},
        "other-secret": {"Authorization": f"Bearer {foreign}"},
        "empty-bearer": {"Authorization": "Bearer "},
        "huge": {"Authorization": "Bearer " + "x" * 10000},
    }[credential]
    response = get(app, "/stream?channel=news", **headers)
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"].startswith('Bearer realm="sse", error="invalid_token"')
    assert b"Invalid credentials" in response.get_data()


def test_other_authorization_schemes_are_not_ours() -> None:
    """Regression: Basic auth in front of a staging site made every stream 401."""
    app = create_app()
    SSE(app)
    response = get(app, "/stream?channel=news", Authorization="Basic YWxpY2U6cHc=")
    assert response.status_code == 200
    response.close()
    strict = create_app({"SSE_REQUIRE_AUTH": True})
    SSE(strict)
    refused = get(strict, "/stream?channel=news", Authorization="Basic YWxpY2U6cHc=")
    assert refused.status_code == 401 and b"Authentication required" in refused.get_data()


def test_expired_token_is_401() -> None:
    app = create_app()
    sse = SSE(app)
    with app.app_context():
        token = sse.issue_token("alice", expires_in=1)
    path = f"/stream?channel=news&token={token}"

    def refused() -> Optional[TestResponse]:
        response = get(app, path)
        if response.status_code == 200:
            response.close()
            return None
        return response

    fresh = get(app, path)
    assert fresh.status_code == 200
    fresh.close()
    response = wait_until(refused, timeout=3, message="the token is still accepted", interval=0.05)
    assert response.status_code == 401 and b"token expired" in response.get_data()


def test_issue_token_validates() -> None:
    app = create_app()
    sse = SSE(app)
    with app.app_context():
        with pytest.raises(ValueError, match="expires_in"):
            sse.issue_token("alice", expires_in=0)
        with pytest.raises(ValueError, match="Invalid SSE channel name"):
            sse.issue_token("alice", channels=["bad name"])


def test_token_channels_must_be_a_collection_not_a_str() -> None:
    """Regression: ``issue_token("alice", channels="news")`` made a token for the channels
    n, e, w and s."""
    app = create_app()
    sse = SSE(app)
    with app.app_context():
        with pytest.raises(ValueError, match="collection of channel names.*not a str"):
            sse.issue_token("alice", channels="news")
        token = sse.issue_token("alice", channels=("news",))
    assert get(app, f"/stream?channel=news&token={token}").status_code == 200


@pytest.mark.parametrize("identity", ["", "   "])
def test_token_for_an_empty_identity_is_refused(identity: str) -> None:
    """Regression: ``issue_token("")`` (and ``flask sse token ''``) signed a token for nobody."""
    app = create_app()
    sse = SSE(app)
    with app.app_context(), pytest.raises(ValueError, match="identity must not be empty"):
        sse.issue_token(identity)
    result = app.test_cli_runner().invoke(args=["sse", "token", identity])
    assert result.exit_code == 2 and "identity must not be empty" in result.output


def test_token_with_another_identitys_private_channel_is_refused_at_issue() -> None:
    """Regression: a token for ``private:bob`` issued to alice was accepted, and every stream
    opened with it answered 403."""
    app = create_app()
    sse = SSE(app)
    with app.app_context():
        with pytest.raises(ValueError, match="'private:bob' is another identity's private channel"):
            sse.issue_token("alice", channels=["news", private_channel("bob")])
        own = sse.issue_token("alice", channels=["news", private_channel("alice")])
    assert get(app, f"/stream?channel=private:alice&token={own}").status_code == 200
    result = app.test_cli_runner().invoke(args=["sse", "token", "alice", "--channel", "private:bob"])
    assert result.exit_code == 2 and "another identity's private channel" in result.output


def test_app_token_loader_replaces_signed_tokens() -> None:
    app = create_app({"SSE_REQUIRE_AUTH": True})
    sse = SSE(app)

    @sse.token_loader
    def load(token: str) -> Identity:
        if token != "let-me-in":
            raise AuthError("unknown token")
        return Identity("carol", claims={"role": "ops"})

    @sse.authorize
    def may_read(identity: Optional[Identity], channel: str) -> bool:
        return identity is not None and identity.claims.get("role") == "ops"

    assert get(app, "/stream?channel=ops", Authorization="Bearer let-me-in").status_code == 200
    response = get(app, "/stream?channel=ops", Authorization="Bearer nope")
    assert response.status_code == 401 and b"unknown token" in response.get_data()


class User:
    """What Flask-Login needs of a user (its ``UserMixin``, which has no type information)."""

    is_authenticated = True
    is_active = True
    is_anonymous = False

    def __init__(self, id: str) -> None:
        self.id = id

    def get_id(self) -> str:
        return self.id


def test_flask_login_session_cookie_identifies_the_user() -> None:
    app = create_app({"SSE_REQUIRE_AUTH": True})
    LoginManager(app).user_loader(User)
    SSE(app)

    @app.post("/login")
    def login() -> str:
        login_user(User(request.form["user"]))
        return "ok"

    client = app.test_client()
    assert client.get("/stream?channel=x").status_code == 401
    client.post("/login", data={"user": "alice"})
    own = client.get(f"/stream?channel={private_channel('alice')}", buffered=False)
    assert own.status_code == 200
    own.close()
    assert client.get(f"/stream?channel={private_channel('bob')}").status_code == 403


# -- what they may read ----------------------------------------------------------------------


def test_token_channels_limit_the_stream() -> None:
    app = create_app()
    sse = SSE(app)
    with app.app_context():
        token = sse.issue_token("alice", channels=["news"])
    assert get(app, f"/stream?channel=news&token={token}").status_code == 200
    response = get(app, f"/stream?channel=news&channel=sports&token={token}")
    assert response.status_code == 403 and b"'sports'" in response.get_data()


def test_private_channel_of_another_user_is_403_and_never_leaks() -> None:
    app = create_app()
    sse = SSE(app)
    with app.app_context():
        secret_id = sse.publish("alice's secret", channel=private_channel("alice"))
        bob = sse.issue_token("bob")
    for headers in ({}, {"Last-Event-ID": "0-0"}, {"Last-Event-ID": secret_id}):
        response = get(app, f"/stream?channel=private:alice&token={bob}", **headers)
        assert response.status_code == 403
        assert b"secret" not in response.get_data()
    anonymous = get(app, "/stream?channel=private:alice&last_event_id=0-0")
    assert anonymous.status_code == 401 and b"secret" not in anonymous.get_data()


def test_authorize_hook_runs_per_channel_and_again_on_replay() -> None:
    app = create_app()
    calls = []

    def hook(identity: Optional[Identity], channel: str) -> bool:
        calls.append((identity.id if identity else None, channel))
        return channel != "closed"

    sse = SSE(app, authorize=hook)
    with app.app_context():
        first = sse.publish("one", channel="open")
        sse.publish("two", channel="open")
        token = sse.issue_token("dave")
    response = get(app, f"/stream?channel=open&token={token}", **{"Last-Event-ID": first})
    assert response.status_code == 200
    assert b"data: two" in first_chunk(response)
    # Once before the stream opened, once more before its history was replayed.
    assert calls == [("dave", "open"), ("dave", "open")]
    assert get(app, "/stream?channel=open&channel=closed").status_code == 401
    assert get(app, f"/stream?channel=open&channel=closed&token={token}").status_code == 403


def test_authorization_withdrawn_between_check_and_replay_sends_no_history() -> None:
    """Regression guard: the replay asks the hook again instead of trusting the first answer."""
    app = create_app()
    answers = iter([True, False])
    sse = SSE(app, authorize=lambda identity, channel: next(answers))
    with app.app_context():
        first = sse.publish("one", channel="c")
        sse.publish("private detail", channel="c")
    response = get(app, "/stream?channel=c", **{"Last-Event-ID": first})
    assert first_chunk(response) == b"retry: 3000\n"


# -- CORS ------------------------------------------------------------------------------------

ORIGIN = "https://app.example.com"


def test_allowed_origin_gets_credentialed_cors_headers() -> None:
    app = create_app({"SSE_CORS_ORIGINS": [ORIGIN]})
    SSE(app)
    response = get(app, "/stream?channel=x", Origin=ORIGIN)
    assert response.status_code == 200
    assert response.headers["Access-Control-Allow-Origin"] == ORIGIN
    assert response.headers["Access-Control-Allow-Credentials"] == "true"
    assert "Origin" in response.headers["Vary"]
    response.close()


def test_preflight_answers_the_headers_eventsource_clients_send() -> None:
    app = create_app({"SSE_CORS_ORIGINS": [ORIGIN]})
    SSE(app)
    preflight = {
        "Origin": ORIGIN,
        "Access-Control-Request-Method": "GET",
        "Access-Control-Request-Headers": "authorization,last-event-id",
    }
    response = app.test_client().options("/stream?channel=x", headers=preflight)
    assert response.status_code == 204
    allowed = {h.strip().lower() for h in response.headers["Access-Control-Allow-Headers"].split(",")}
    assert {"authorization", "last-event-id", "cache-control"} <= allowed
    assert response.headers["Access-Control-Allow-Origin"] == ORIGIN


def test_disallowed_origin_is_403_before_streaming_and_never_star() -> None:
    app = create_app({"SSE_CORS_ORIGINS": [ORIGIN]})
    SSE(app)
    response = get(app, "/stream?channel=x", Origin="https://evil.example")
    assert response.status_code == 403
    assert "Access-Control-Allow-Origin" not in response.headers
    assert b"not allowed" in response.get_data()
    same = get(app, "/stream?channel=x", Origin="http://localhost")
    assert same.status_code == 200 and "Access-Control-Allow-Origin" not in same.headers
    same.close()


@pytest.mark.parametrize("bad", ["*", ["*"], ["https://ok.example/path"], "https://one.example"])
def test_cors_config_is_validated(bad: object) -> None:
    with pytest.raises(ValueError, match="SSE_CORS_ORIGINS"):
        SSE(create_app({"SSE_CORS_ORIGINS": bad}))


# -- caps ------------------------------------------------------------------------------------


def test_per_client_and_per_user_caps_answer_429() -> None:
    app = create_app({"SSE_MAX_CONNECTIONS_PER_CLIENT": 3, "SSE_MAX_CONNECTIONS_PER_USER": 2})
    sse = SSE(app)
    with app.app_context():
        token = sse.issue_token("erin")
    open_ = [get(app, f"/stream?token={token}") for _ in range(2)]
    assert all(r.status_code == 200 for r in open_)
    refused = get(app, f"/stream?token={token}")
    assert refused.status_code == 429 and refused.headers["Retry-After"]
    anonymous = get(app, "/stream")
    assert anonymous.status_code == 200  # the address has one slot left
    assert get(app, "/stream").status_code == 429
    open_[0].close()
    again = get(app, f"/stream?token={token}")
    assert again.status_code == 200
    for response in (again, anonymous, open_[1]):
        response.close()
    with app.app_context():
        assert sse.stats()["streams"] == 0


# -- against a real server -------------------------------------------------------------------


def test_stream_ends_when_its_token_expires(server: Server) -> None:
    _, token = http(server.port, "GET", "/token?identity=frank&expires=1.5")
    stream = RawStream(server.port, f"/stream?channel=news&token={token.decode()}")
    assert stream.status == 200
    started = time.monotonic()
    stream.opening()
    stream.idle(4)
    assert stream.ended
    assert 1.0 < time.monotonic() - started < 3


@pytest.mark.parametrize(
    "path,headers,status",
    [
        ("/stream?channel=a%0D%0ASet-Cookie:x=1", {}, 400),
        ("/stream?channel=admin&token=%00%0A", {}, 401),
        ("/stream?channel=admin", {"Authorization": "Bearer \u00e9t\u00e9"}, 401),
        ("/stream?channel=admin", {}, 401),
        ("/stream?channel=x", {"Last-Event-ID": "x" * 7000}, 200),
        ("/stream?channel=x", {"X-Big": "y" * 20000}, 431),  # gunicorn's own header limit
    ],
)
def test_hostile_requests_get_4xx_and_the_worker_survives(
    server: Server, path: str, headers: Dict[str, str], status: int
) -> None:
    pid = server.stats()["pid"]
    stream = RawStream(server.port, path, headers=headers)
    assert stream.status == status
    if status == 401:
        assert stream.headers["www-authenticate"].startswith('Bearer realm="sse"')
    stream.close()
    # The same worker still answers (nothing crashed), and it let go of the stream.
    assert server.stats()["pid"] == pid
    wait_until(lambda: server.stats()["streams"] == 0, message=lambda: f"{server.stats()}")
    assert "Traceback" not in server.log()


def test_caps_hold_across_workers_with_redis(
    start_server: StartServer, redis_server: RedisServer, prefix: str
) -> None:
    config = {
        "SSE_REDIS_URL": redis_server.url,
        "SSE_REDIS_PREFIX": prefix,
        "SSE_MAX_CONNECTIONS_PER_CLIENT": 4,
    }
    server = start_server(config=config, workers=2)
    streams = []
    for _ in range(4):
        stream = RawStream(server.port, "/stream?channel=capped")
        assert stream.status == 200
        stream.opening()
        streams.append(stream)
    refused = RawStream(server.port, "/stream?channel=capped")
    assert refused.status == 429
    streams.pop().close()

    def admitted() -> Optional[RawStream]:
        again = RawStream(server.port, "/stream?channel=capped")
        if again.status == 200:
            return again
        again.close()
        return None

    wait_until(admitted, message="the closed stream's slot was not given back", interval=0.1)
