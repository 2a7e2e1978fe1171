"""Stream tickets: short-lived, single-use, bound to identity and channels, good only for
opening a stream; the ticket endpoint; cookie streams and the origin they come from.

Against a real gunicorn gevent worker. Tickets with precise lifetimes are made in-process with
the served app's ``SECRET_KEY`` (``support.app``), as an app's own view would make them.
"""

from __future__ import annotations

import json
import secrets
import time
from datetime import datetime
from typing import Any, Dict, Iterator, List, Optional, Tuple

import pytest
from flask import Flask

from flask_sse_ext import SSE, AuthError, Identity
from flask_sse_ext.gunicorn import redact
from support.app import create_app
from support.client import RawStream
from support.client import request as http
from support.parser import SSEParser
from support.paths import ROOT
from support.redis import RedisServer
from support.server import Server, StartServer, start_gunicorn
from support.waiting import wait_until

ALLOWED = "http://allowed.example"
CONFIG = {
    "SSE_TICKET_ENDPOINT": True,
    "SSE_RETRY": 100,
    "SSE_HEARTBEAT_INTERVAL": 1,
    "SSE_CORS_ORIGINS": [ALLOWED],
}


@pytest.fixture(scope="module")
def ticketing() -> Iterator[Server]:
    """One server with the ticket endpoint on, for the tests that need no settings of their own."""
    srv = start_gunicorn(config=CONFIG, args=["-c", str(ROOT / "gunicorn.conf.py")])
    yield srv
    srv.stop()
    assert "Traceback" not in srv.log(), srv.log()


def mint(identity: str, channels: List[str], expires_in: float = 30, **config: Any) -> str:
    """A ticket made in-process, as ``sse.issue_ticket`` in an app's own view makes it."""
    app = create_app(config)
    sse = SSE(app)
    with app.app_context():
        return sse.issue_ticket(identity, channels, expires_in)


def token(server: Server, identity: str, expires: float = 3600) -> str:
    status, body = http(server.port, "GET", f"/token?identity={identity}&expires={expires}")
    assert status == 200, body
    return str(body.decode())


def ask_ticket(server: Server, query: str, headers: Optional[Dict[str, str]] = None) -> RawStream:
    return RawStream(server.port, f"/stream/ticket?{query}", headers=headers, method="POST")


def refusal(stream: RawStream) -> Tuple[int, str]:
    body = stream.body().decode()
    stream.close()
    return stream.status, body.strip()


def login(server: Server, user: str) -> str:
    """A Flask-Login session cookie for ``user`` (``name=value``)."""
    answer = RawStream(server.port, f"/login?user={user}", method="POST")
    assert answer.status == 200
    cookie = answer.headers["set-cookie"].split(";", 1)[0]
    answer.close()
    return cookie


# -- a ticket opens one stream ---------------------------------------------------------------


def test_bearer_token_traded_for_a_ticket_that_opens_one_stream_once(ticketing: Server) -> None:
    answer = ask_ticket(ticketing, "channel=secret", {"Authorization": f"Bearer {token(ticketing, 'alice')}"})
    assert answer.status == 200, answer.body()
    assert answer.headers["cache-control"] == "no-store"
    granted = answer.json()
    assert granted["expires_in"] == 30.0
    ticket = granted["ticket"]

    stream = RawStream(ticketing.port, f"/stream?channel=secret&ticket={ticket}")
    assert stream.status == 200
    stream.opening(retry=100)
    event_id = ticketing.publish(data="for alice", channel="secret")
    [event] = stream.events(1)
    assert (event.data, event.last_event_id) == ("for alice", event_id)

    again = RawStream(ticketing.port, f"/stream?channel=secret&ticket={ticket}")
    assert again.headers["www-authenticate"] == 'Bearer realm="sse", error="invalid_token"'
    assert refusal(again) == (401, "Invalid ticket: ticket already used")
    assert ticketing.stats()["streams"] == 1


def test_session_cookie_traded_for_a_ticket_json_body(ticketing: Server) -> None:
    cookie = login(ticketing, "carol")
    body = json.dumps({"channels": ["private:carol", "news"]}).encode()
    headers = {"Cookie": cookie, "Content-Type": "application/json", "Content-Length": str(len(body))}
    answer = RawStream(ticketing.port, "/stream/ticket", headers=headers, method="POST", body=body)
    assert answer.status == 200, answer.body()
    ticket = answer.json()["ticket"]
    # A plain EventSource sends no header: the ticket alone opens the stream, as carol.
    stream = RawStream(ticketing.port, f"/stream?channel=private:carol&channel=news&ticket={ticket}")
    assert stream.status == 200
    stream.opening(retry=100)


@pytest.mark.parametrize(
    "case, status, message",
    [
        ("expired", 401, "Invalid ticket: ticket expired"),
        ("another channel", 403, "Ticket refused: the ticket does not cover channel 'sports'"),
        ("another identity", 403, "Ticket refused: the ticket was issued to another identity"),
        ("another identity's session", 403, "Ticket refused: the ticket was issued to another identity"),
        ("tampered", 401, "Invalid ticket: invalid ticket"),
        ("another app's secret", 401, "Invalid ticket: invalid ticket"),
        ("a token is not a ticket", 401, "Invalid ticket: invalid ticket"),
    ],
)
def test_ticket_refusals_are_precise(ticketing: Server, case: str, status: int, message: str) -> None:
    headers: Dict[str, str] = {}
    channel = "news"
    ticket = mint("bob", ["news"])
    if case == "expired":
        ticket = mint("bob", ["news"], expires_in=0.3)
        made = time.time()
        wait_until(lambda: time.time() > made + 0.35)
    elif case == "another channel":
        channel = "sports"
    elif case == "another identity":
        headers["Authorization"] = f"Bearer {token(ticketing, 'alice')}"
    elif case == "another identity's session":
        headers["Cookie"] = login(ticketing, "alice")
    elif case == "tampered":
        ticket = ticket[:-2] + ("AA" if not ticket.endswith("AA") else "BB")
    elif case == "another app's secret":
        ticket = mint("bob", ["news"], SECRET_KEY="another secret")
    elif case == "a token is not a ticket":
        ticket = token(ticketing, "bob")
    stream = RawStream(ticketing.port, f"/stream?channel={channel}&ticket={ticket}", headers=headers)
    assert refusal(stream) == (status, message)
    if status == 401:
        assert stream.headers["www-authenticate"] == 'Bearer realm="sse", error="invalid_token"'
    if case in ("another channel", "another identity", "another identity's session"):
        # Refused before it was spent: the ticket still opens its own stream, once.
        good = RawStream(ticketing.port, f"/stream?channel=news&ticket={ticket}")
        assert good.status == 200
        good.opening(retry=100)


def test_ticket_opens_a_subset_of_its_channels_and_is_no_token(ticketing: Server) -> None:
    ticket = mint("dora", ["a", "b"])
    as_token = RawStream(ticketing.port, f"/stream?channel=a&token={ticket}")
    assert refusal(as_token) == (401, "Invalid credentials: invalid token")
    as_bearer = RawStream(ticketing.port, "/stream?channel=a", headers={"Authorization": f"Bearer {ticket}"})
    assert refusal(as_bearer) == (401, "Invalid credentials: invalid token")
    stream = RawStream(ticketing.port, f"/stream?channel=a&ticket={ticket}")
    assert stream.status == 200
    stream.opening(retry=100)


def test_ticket_stream_still_obeys_the_authorize_hook(ticketing: Server) -> None:
    """A ticket minted for a channel the hook refuses (the app's own view made it) opens
    nothing: only alice reads "secret"."""
    stream = RawStream(ticketing.port, f"/stream?channel=secret&ticket={mint('bob', ['secret'])}")
    assert refusal(stream) == (403, "Not allowed to read channel 'secret'")


# -- the ticket endpoint ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "query, credential, origin, status, message",
    [
        ("channel=news", None, None, 401, "A ticket needs a Bearer token or a logged-in session"),
        ("channel=news", "bad", None, 401, "Invalid credentials: invalid token"),
        ("channel=secret", "bob", None, 403, "Not allowed to read channel 'secret'"),
        ("channel=private:alice", "bob", None, 403, "Not allowed to read channel 'private:alice'"),
        ("channel=bad!", "bob", None, 400, "Invalid SSE channel name 'bad!'"),
        ("", "bob", None, 400, 'Name the channels: ?channel=<name> (repeated) or {"channels": [...]}'),
        ("channel=news", "bob", "http://evil.example", 403, "Origin 'http://evil.example' is not allowed"),
    ],
)
def test_ticket_endpoint_refusals(
    ticketing: Server,
    query: str,
    credential: Optional[str],
    origin: Optional[str],
    status: int,
    message: str,
) -> None:
    headers = {}
    if credential == "bad":
        headers["Authorization"] = "Bearer not-a-token"
    elif credential is not None:
        headers["Authorization"] = f"Bearer {token(ticketing, credential)}"
    if origin is not None:
        headers["Origin"] = origin
    got_status, body = refusal(ask_ticket(ticketing, query, headers))
    assert got_status == status and body.startswith(message), body


def test_ticket_endpoint_answers_an_allowed_origin_with_cors(ticketing: Server) -> None:
    preflight = RawStream(
        ticketing.port,
        "/stream/ticket",
        headers={"Origin": ALLOWED, "Access-Control-Request-Method": "POST"},
        method="OPTIONS",
    )
    assert preflight.status == 204
    assert preflight.headers["access-control-allow-methods"] == "POST"
    assert "Authorization" in preflight.headers["access-control-allow-headers"]
    preflight.close()
    headers = {"Origin": ALLOWED, "Authorization": f"Bearer {token(ticketing, 'bob')}"}
    answer = ask_ticket(ticketing, "channel=news", headers)
    assert answer.status == 200
    assert answer.headers["access-control-allow-origin"] == ALLOWED
    assert answer.headers["access-control-allow-credentials"] == "true"


def test_ticket_endpoint_is_off_unless_enabled(server: Server) -> None:
    answer = RawStream(server.port, "/stream/ticket?channel=news", method="POST")
    assert answer.status == 404


def test_ticket_traded_for_a_short_token_ends_its_stream_with_the_token(ticketing: Server) -> None:
    """The ticket lasts seconds, the stream as long as the credential it was traded for."""
    short = token(ticketing, "erin", expires=1.5)
    answer = ask_ticket(ticketing, "channel=news", {"Authorization": f"Bearer {short}"})
    started = time.monotonic()
    stream = RawStream(ticketing.port, f"/stream?channel=news&ticket={answer.json()['ticket']}")
    stream.opening(retry=100)
    [reauth] = stream.events(1, timeout=4)
    assert (reauth.type, json.loads(reauth.data)) == ("sse.reauth", {"reason": "credential expired"})
    assert stream.chunk() is None  # the stream ends right after it
    assert 1.0 < time.monotonic() - started < 3


# -- single use over every worker ------------------------------------------------------------


def test_ticket_is_single_use_across_workers_with_redis(
    start_server: StartServer, redis_server: RedisServer, prefix: str
) -> None:
    config = {**CONFIG, "SSE_REDIS_URL": redis_server.url, "SSE_REDIS_PREFIX": prefix}
    server = start_server(config=config, workers=2)
    for _ in range(3):
        ticket = mint("fay", ["news"])
        first = RawStream(server.port, f"/stream?channel=news&ticket={ticket}")
        assert first.status == 200
        first.opening(retry=100)
        first.close()
        spent_on = int(first.headers["x-pid"])

        def elsewhere(ticket: str = ticket, spent_on: int = spent_on) -> Optional[Tuple[int, str]]:
            """The ticket presented again, until the other worker answers (gunicorn hands each
            fresh connection to either one): it is spent there too."""
            again = RawStream(server.port, f"/stream?channel=news&ticket={ticket}")
            answer = refusal(again)
            assert answer == (401, "Invalid ticket: ticket already used")
            return answer if int(again.headers["x-pid"]) != spent_on else None

        wait_until(elsewhere, timeout=10, message="the other worker never answered")
    assert "Traceback" not in server.log()


# -- never in a log --------------------------------------------------------------------------


def test_redact_covers_tickets() -> None:
    assert redact("GET /stream?channel=x&ticket=abc.def HTTP/1.1") == (
        "GET /stream?channel=x&ticket=[redacted] HTTP/1.1"
    )
    assert redact("ticket=abc&channel=x") == "ticket=[redacted]&channel=x"
    assert redact("channel=x&myticket=abc") == "channel=x&myticket=abc"


def test_access_log_never_shows_tickets(ticketing: Server) -> None:
    ticket = mint("gus", ["news"])
    stream = RawStream(ticketing.port, f"/stream?channel=news&ticket={ticket}")
    assert stream.status == 200
    stream.close()
    again = RawStream(ticketing.port, f"/stream?channel=news&ticket={ticket}")
    assert again.status == 401
    again.close()
    wait_until(lambda: ticketing.log().count("ticket=[redacted]") >= 2, message=ticketing.log)
    assert ticket not in ticketing.log()


@pytest.mark.parametrize(
    "path, logged",
    [
        # A view raised and the app let it through (PROPAGATE_EXCEPTIONS, a WSGI middleware):
        # gunicorn logs the request's URI, query and all.
        (
            "/slow?pause=never&ticket={ticket}",
            "Error handling request GET /slow?pause=never&ticket=[redacted]",
        ),
        # A request line gunicorn refuses (a control character): it quotes the line in a warning.
        (
            "/stream?channel=news&ticket={ticket}&bad=\x7f",
            "Invalid HTTP request line: 'GET /stream?channel=news&ticket=[redacted]&bad=",
        ),
    ],
)
def test_error_log_never_shows_tickets(start_server: StartServer, path: str, logged: str) -> None:
    """Regression: ``RedactingLogger`` redacted the access log only, and gunicorn's error log
    kept the ticket of a request that failed."""
    server = start_server(
        config={**CONFIG, "PROPAGATE_EXCEPTIONS": True}, args=["-c", str(ROOT / "gunicorn.conf.py")]
    )
    ticket = mint("gus", ["news"])
    failed = RawStream(server.port, path.format(ticket=ticket))
    assert failed.status in (400, 500)
    failed.close()
    wait_until(lambda: logged in server.log(), message=server.log)
    assert ticket not in server.log()


# -- issue_ticket ----------------------------------------------------------------------------


def test_issue_ticket_validates() -> None:
    app = create_app()
    sse = SSE(app)
    with app.app_context():
        with pytest.raises(ValueError, match="not the str 'news'"):
            sse.issue_ticket("alice", "news")
        with pytest.raises(ValueError, match="non-empty identity"):
            sse.issue_ticket("", ["news"])
        with pytest.raises(ValueError, match="another identity's private channel"):
            sse.issue_ticket("alice", ["private:bob"])
        with pytest.raises(ValueError, match="at least one channel"):
            sse.issue_ticket("alice", [])
        with pytest.raises(ValueError, match="Invalid SSE channel name"):
            sse.issue_ticket("alice", ["bad!"])
        with pytest.raises(ValueError, match="positive number of seconds"):
            sse.issue_ticket("alice", ["news"], expires_in=0)
    with app.test_request_context("/"):
        with pytest.raises(AuthError, match="no identity"):
            sse.issue_ticket(channels=["news"])


def test_issue_ticket_defaults_to_the_requests_identity() -> None:
    """In the app's own view: the ticket is for whoever the request's token names."""
    app = create_app({"SSE_TICKET_TTL": 5})
    sse = SSE(app)
    with app.app_context():
        bearer = sse.issue_token("hana", expires_in=60)
    with app.test_request_context("/", headers={"Authorization": f"Bearer {bearer}"}):
        ticket = sse.issue_ticket(channels=["news"])
    client = app.test_client()
    response = client.get(f"/stream?channel=news&ticket={ticket}", buffered=False)
    assert response.status_code == 200
    response.close()
    again = client.get(f"/stream?channel=news&ticket={ticket}")
    assert (again.status_code, again.get_data()) == (401, b"Invalid ticket: ticket already used\n")


def test_ticket_config_is_validated() -> None:
    for key, bad in (("SSE_TICKET_TTL", 0), ("SSE_TICKET_TTL", "30"), ("SSE_TICKET_ENDPOINT", "yes")):
        with pytest.raises(ValueError, match=key):
            SSE(create_app({key: bad}))


# -- a stream by cookie, and where the request comes from -----------------------------------


#: The refusal of a cookie-bearing request that the browser marks as from another site.
NO_ORIGIN = "A stream authenticated by cookie needs an allowed Origin (SSE_CORS_ORIGINS)"


@pytest.mark.parametrize(
    "headers, status, refused",
    [
        ({"Sec-Fetch-Site": "same-origin", "Sec-Fetch-Mode": "cors"}, 200, None),
        ({}, 200, None),  # not a browser: no fetch metadata
        ({"Origin": ALLOWED, "Sec-Fetch-Site": "cross-site", "Sec-Fetch-Mode": "cors"}, 200, None),
        (
            {"Origin": "http://evil.example", "Sec-Fetch-Site": "cross-site"},
            403,
            "Origin 'http://evil.example' is not allowed (SSE_CORS_ORIGINS)",
        ),
        # An <img> or <script> on another site: no Origin, the browser says cross-site.
        ({"Sec-Fetch-Site": "cross-site", "Sec-Fetch-Mode": "no-cors"}, 403, NO_ORIGIN),
        ({"Sec-Fetch-Site": "same-site", "Sec-Fetch-Mode": "no-cors"}, 403, NO_ORIGIN),
    ],
)
def test_cookie_stream_needs_an_allowed_origin(
    ticketing: Server, headers: Dict[str, str], status: int, refused: Optional[str]
) -> None:
    cookie = login(ticketing, "ivy")
    stream = RawStream(ticketing.port, "/stream?channel=private:ivy", headers={"Cookie": cookie, **headers})
    if refused is None:
        assert stream.status == status, stream.body()
    else:
        assert refusal(stream) == (status, refused)


def test_cross_site_tag_without_a_cookie_or_with_a_token_is_not_refused(ticketing: Server) -> None:
    """The rule is about the ambient credential: a public stream, or one whose credential the
    page put in the URL itself, is no cross-site request forgery."""
    cross = {"Sec-Fetch-Site": "cross-site", "Sec-Fetch-Mode": "no-cors"}
    public = RawStream(ticketing.port, "/stream?channel=news", headers=cross)
    assert public.status == 200
    with_token = RawStream(
        ticketing.port, f"/stream?channel=private:jo&token={token(ticketing, 'jo')}", headers=cross
    )
    assert with_token.status == 200


# -- the end of a credential, and of a connection's age ---------------------------------------


def test_reauth_only_when_the_credential_ends_the_stream(start_server: StartServer) -> None:
    """``SSE_MAX_CONNECTION_AGE`` ends a stream whose token is still good: no ``sse.reauth``
    then, the browser just reconnects; a token that runs out first gets it."""
    server = start_server(config={**CONFIG, "SSE_MAX_CONNECTION_AGE": 1})
    for lifetime, expected_events in ((60, []), (0.5, ["sse.reauth"])):
        stream = RawStream(server.port, f"/stream?channel=news&token={token(server, 'kim', lifetime)}")
        stream.opening(retry=100)
        chunks = stream.idle(3)
        assert stream.ended
        events = SSEParser().feed(b"".join(chunks))
        assert [e.type for e in events] == expected_events


# -- a ticket carries the claims of the credential it was traded for --------------------------

#: The app's own tokens in the claims tests: "<user>:<plan>", the plan being a claim.
CLAIMS_CHANNEL = "premium-feed"


def claims_app(claims_of: Optional[Dict[Any, Any]] = None) -> Tuple[SSE, Flask, List[Dict[str, Any]]]:
    """An app whose token loader puts the token's plan in the claims and whose ``authorize``
    hook reads ``premium-feed`` only with ``{"plan": "premium"}`` and never when suspended."""
    seen: List[Dict[str, Any]] = []

    def loader(text: str) -> Identity:
        user, _, plan = text.partition(":")
        claims: Dict[Any, Any] = {"plan": plan, "suspended": plan == "suspended"}
        return Identity(user, claims=claims if claims_of is None else claims_of)

    def authorize(identity: Optional[Identity], channel: str) -> bool:
        claims = dict(identity.claims) if identity is not None else {}
        seen.append(claims)
        if claims.get("suspended"):
            return False
        return channel != CLAIMS_CHANNEL or claims.get("plan") == "premium"

    sse = SSE(token_loader=loader, authorize=authorize, ticket_endpoint=True)
    return sse, create_app(sse=sse), seen


def test_ticket_keeps_the_claims_a_hook_grants_on() -> None:
    """Regression: a ticket dropped the token loader's claims, so a channel the hook grants
    on a claim got a ticket, then a 403 at the stream (and the ticket was spent)."""
    _, app, seen = claims_app()
    client = app.test_client()
    answer = client.post(
        f"/stream/ticket?channel={CLAIMS_CHANNEL}", headers={"Authorization": "Bearer ann:premium"}
    )
    assert answer.status_code == 200, answer.get_data()
    ticket = answer.get_json()["ticket"]
    response = client.get(f"/stream?channel={CLAIMS_CHANNEL}&ticket={ticket}", buffered=False)
    assert response.status_code == 200, response.get_data()
    response.close()
    # The hook saw the loader's claims at the stream, and that a ticket opened it.
    assert seen[-1] == {"plan": "premium", "suspended": False, "ticket": True}
    refused = client.post(
        f"/stream/ticket?channel={CLAIMS_CHANNEL}", headers={"Authorization": "Bearer ben:free"}
    )
    assert refused.status_code == 403


def test_ticket_keeps_the_claims_a_hook_denies_on() -> None:
    """Regression: the hook denies on a claim, yet a ticket the app's own view made for the
    request's identity (``sse.issue_ticket()``) opened the stream with the claim gone."""
    sse, app, seen = claims_app()
    with app.test_request_context("/", headers={"Authorization": "Bearer cy:suspended"}):
        ticket = sse.issue_ticket(channels=["news"])
    response = app.test_client().get(f"/stream?channel=news&ticket={ticket}", buffered=False)
    response.close()  # before the fix it was an endless stream
    assert response.status_code == 403
    assert seen[-1] == {"plan": "suspended", "suspended": True, "ticket": True}
    # Claims given by hand are carried the same way.
    with app.app_context():
        ticket = sse.issue_ticket("cy", ["news"], claims={"suspended": True})
    response = app.test_client().get(f"/stream?channel=news&ticket={ticket}", buffered=False)
    response.close()
    assert response.status_code == 403


@pytest.mark.parametrize(
    "claims, message",
    [
        ({"at": datetime(2026, 12, 1)}, "they must be JSON"),
        ({"score": float("nan")}, "they must be JSON"),
        ({"roles": ("a", "b")}, "JSON does not carry them unchanged"),
        ({1: "one"}, "JSON does not carry them unchanged"),
        ({"blob": secrets.token_urlsafe(4000)}, "keep the token loader's claims small"),
    ],
)
def test_claims_a_ticket_cannot_carry_are_refused_when_it_is_issued(
    claims: Dict[Any, Any], message: str
) -> None:
    sse, app, _ = claims_app(claims_of=claims)
    with app.app_context():
        with pytest.raises(ValueError, match=message):
            sse.issue_ticket("dee", ["news"], claims=claims)
    answer = app.test_client().post("/stream/ticket?channel=news", headers={"Authorization": "Bearer dee:x"})
    assert answer.status_code == 422
    assert message in answer.get_data(as_text=True)
    assert "open the stream with the credential instead" in answer.get_data(as_text=True)
