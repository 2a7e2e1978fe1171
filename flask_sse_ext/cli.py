"""``flask sse ...`` commands: publish an event, issue a token, show counters."""

from __future__ import annotations

import json
import sys
from typing import TYPE_CHECKING, Dict, Optional, Tuple

import click
from flask import current_app
from flask.cli import AppGroup

from .brokers.base import BrokerError
from .brokers.memory import MemoryBroker

if TYPE_CHECKING:
    from .extension import SSE

__all__ = ["cli"]

cli = AppGroup("sse", help="Server-Sent Events: publish, issue tokens, show counters.")


def _sse() -> SSE:
    return current_app.extensions["sse"].sse  # type: ignore[no-any-return]


@cli.command("publish")
@click.argument("channel")
@click.argument("data")
@click.option("--event", help="Event name (the browser's addEventListener type).")
@click.option("--id", "event_id", help="Event id (default: generated).")
@click.option("--retry", type=click.IntRange(min=0), help="Reconnection delay in milliseconds.")
@click.option("--json", "as_json", is_flag=True, help="DATA is JSON: send it as a value.")
def publish(
    channel: str, data: str, event: Optional[str], event_id: Optional[str], retry: Optional[int],
    as_json: bool,
) -> None:  # fmt: skip
    """Publish DATA to CHANNEL and print the event id."""
    value: object = data
    if as_json:
        try:
            value = json.loads(data)
        except ValueError as exc:
            raise click.BadParameter(f"not JSON: {exc}", param_hint="DATA") from None
    try:
        click.echo(_sse().publish(value, event=event, id=event_id, retry=retry, channel=channel))
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    except BrokerError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(1)
    if isinstance(current_app.extensions["sse"].broker, MemoryBroker):
        click.echo(
            "warning: SSE_REDIS_URL is not set, so this event stayed in this command's own "
            "process and reached no stream.",
            err=True,
        )


@cli.command("token")
@click.argument("identity")
@click.option("--channel", "channels", multiple=True, help="Limit the token to this channel (repeatable).")
@click.option("--expires", type=click.FloatRange(min=0, min_open=True), default=3600.0,
              show_default=True, help="Lifetime in seconds.")  # fmt: skip
def token(identity: str, channels: Tuple[str, ...], expires: float) -> None:
    """Print a signed stream token for IDENTITY."""
    try:
        click.echo(_sse().issue_token(identity, channels=channels or None, expires_in=expires))
    except (ValueError, RuntimeError) as exc:
        raise click.UsageError(str(exc)) from None


@cli.command("stats")
def stats() -> None:
    """Print this process's counters as JSON (with Redis: and the worker processes connected)."""
    out: Dict[str, object] = dict(_sse().stats())
    broker = current_app.extensions["sse"].broker
    if not isinstance(broker, MemoryBroker):
        try:
            names = {c.get("name", "") for c in broker.client.client_list()}
        except Exception as exc:
            raise click.ClickException(f"Redis did not answer: {exc}") from None
        prefix = current_app.config["SSE_REDIS_PREFIX"] + ":"
        out["redis_processes"] = len({n for n in names if n.startswith(prefix)})
    click.echo(json.dumps(out, indent=2))
