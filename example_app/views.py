"""The pages and the small JSON endpoints they post to."""

from __future__ import annotations

import time
import uuid
from typing import Any, Dict, List

from flask import Blueprint, abort, current_app, jsonify, redirect, render_template, request, url_for
from flask_login import current_user, login_required, login_user, logout_user

from flask_sse_ext import private_channel

from . import demo
from .extensions import DEMO_USERS, User, sse

bp = Blueprint("demo", __name__)

BROADCAST = "sse"


def _payload() -> Dict[str, Any]:
    """The fields of a JSON body or of a form."""
    return request.get_json(silent=True) or request.form.to_dict()


@bp.app_context_processor
def page_context() -> Dict[str, Any]:
    # Every page opens one stream (browsers allow six connections per host over HTTP/1.1),
    # on the broadcast and metrics channels and, once signed in, the user's private channel.
    channels: List[str] = [BROADCAST, demo.METRICS]
    if current_user.is_authenticated:
        channels.append(private_channel(current_user.id))
    return {"stream_url": url_for("sse.stream", channel=channels), "users": DEMO_USERS}


@bp.get("/")
def dashboard() -> str:
    return render_template("dashboard.html")


@bp.post("/publish")
def publish() -> Any:
    """Broadcast ``{message}`` on ``channel`` (default ``sse``); JSON or form fields."""
    payload = _payload()
    message = str(payload.get("message", ""))
    channel = str(payload.get("channel", BROADCAST))
    try:
        event_id = sse.publish({"message": message}, event="message", channel=channel)
    except ValueError as exc:
        return jsonify(error=str(exc)), 400
    return jsonify(id=event_id)


@bp.get("/notifications")
@login_required
def notifications() -> str:
    return render_template("notifications.html")


@bp.post("/notify")
@login_required
def notify() -> Any:
    """Send ``{to, text}`` to one user's private channel: only their pages receive it."""
    payload = _payload()
    to, text = str(payload.get("to", "")), str(payload.get("text", "")).strip()
    if to not in DEMO_USERS or not 0 < len(text) <= 500:
        return jsonify(error="choose a user and write 1 to 500 characters"), 400
    note = {
        "id": uuid.uuid4().hex,  # the page drops a note it already has (another tab's)
        "from": current_user.id,
        "text": text,
        "at": int(time.time() * 1000),
    }
    event_id = sse.publish(note, event="notification", channel=private_channel(to))
    return jsonify(id=event_id)


@bp.get("/jobs")
def jobs() -> str:
    return render_template("jobs.html")


@bp.post("/jobs")
def start_job() -> Any:
    app = current_app._get_current_object()  # type: ignore[attr-defined]
    channel, first_id = demo.start_job(app)
    stream = url_for("sse.stream", channel=channel, last_event_id=first_id)
    return jsonify(job=channel, stream=stream)


@bp.get("/chat")
def chat_page() -> str:
    return render_template("chat.html")


@bp.post("/chat")
def chat() -> Any:
    """Answer ``{prompt}`` with a stream of ``token`` events, then ``sse.end``. The answer is
    resumable: it goes on when the page reloads, and a reconnection does not run it again."""
    prompt = str(_payload().get("prompt", "")).strip()
    if not 0 < len(prompt) <= 500:
        return jsonify(error="write a prompt of 1 to 500 characters"), 400
    return sse.response(demo.chat_reply(prompt), resumable=True)


@bp.route("/login", methods=["GET", "POST"])
def login() -> Any:
    """DEMO ONLY: sign in as any demo user, with no password."""
    if request.method == "POST":
        user_id = request.form.get("user", "")
        if user_id not in DEMO_USERS:
            abort(400)
        login_user(User(user_id))
        target = request.args.get("next", "")
        # Only paths of this site: "//host" or "/\\host" would leave it.
        if not target.startswith("/") or target.startswith(("//", "/\\")):
            target = url_for("demo.dashboard")
        return redirect(target)
    return render_template("login.html")


@bp.post("/logout")
def logout() -> Any:
    logout_user()
    return redirect(url_for("demo.dashboard"))
