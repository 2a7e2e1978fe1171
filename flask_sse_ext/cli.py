"""``flask sse ...`` commands: publish an event or a job's progress, issue a token, show counters."""

from __future__ import annotations

import json
import sys
import time
from typing import Dict, Optional, Tuple

import click
from flask import current_app
from flask.cli import AppGroup

from .auth import issue_token
from .brokers.base import BrokerError
from .jobs import Job
from .state import SHARE_INTERVAL, get_state

__all__ = ["cli"]

cli = AppGroup("sse", help="Server-Sent Events: publish, issue tokens, show counters.")


@cli.command("publish")
@click.argument("channel")
@click.argument("data")
@click.option("--event", help="Event name (the browser's addEventListener type).")
@click.option("--id", "event_id", help="Event id (default: generated).")
@click.option("--retry", type=click.IntRange(min=0), help="Reconnection delay in milliseconds.")
@click.option("--json", "as_json", is_flag=True, help="DATA is JSON: send it as a value.")
@click.option("--conflate", help="Conflation key: a client behind gets only the newest event per key.")
def publish(
    channel: str,
    data: str,
    event: Optional[str],
    event_id: Optional[str],
    retry: Optional[int],
    as_json: bool,
    conflate: Optional[str] = None,
) -> None:
    """Publish DATA to CHANNEL and print the event id."""
    value = _value(data, as_json)
    state = get_state()
    try:
        click.echo(state.publish(value, event, event_id, retry, channel, conflate=conflate))
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    except BrokerError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(1)
    if not state.broker.shared:
        click.echo(
            "warning: SSE_REDIS_URL is not set, so this event stayed in this command's own "
            "process and reached no stream.",
            err=True,
        )


@cli.command("token")
@click.argument("identity")
@click.option("--channel", "channels", multiple=True, help="Limit the token to this channel (repeatable).")
@click.option(
    "--expires",
    type=click.FloatRange(min=0, min_open=True),
    default=3600.0,
    show_default=True,
    help="Lifetime in seconds.",
)
def token(identity: str, channels: Tuple[str, ...], expires: float) -> None:
    """Print a signed stream token for IDENTITY."""
    try:
        get_state()
        click.echo(issue_token(current_app, identity, channels or None, expires))
    except (ValueError, RuntimeError) as exc:
        raise click.UsageError(str(exc)) from None


@cli.command("presence")
@click.argument("channel")
def presence(channel: str) -> None:
    """Print how many streams are open on CHANNEL over every worker and host."""
    try:
        click.echo(get_state().presence(channel))
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    except BrokerError as exc:
        raise click.ClickException(str(exc)) from None


@cli.command("stats")
def stats() -> None:
    """Print the counters of every server process as JSON: summed, and per process.

    With Redis, each server process shares its counters every few seconds; those shared
    within the last three intervals count. With the in-process broker the counters live in
    the server process alone, so there is nothing this command can read.
    """
    state = get_state()
    if not state.broker.shared:
        click.echo(
            "The in-process broker keeps its counters in the server process: this command "
            "runs in a process of its own and cannot see them. Read sse.stats() in the app, "
            "serve SSE_METRICS_PATH, or set SSE_REDIS_URL so that every server shares them.",
            err=True,
        )
        sys.exit(1)
    try:
        shared = state.broker.shared_stats()
    except BrokerError as exc:
        raise click.ClickException(str(exc)) from None
    fresh = time.time() - 3 * SHARE_INTERVAL
    processes: Dict[str, Dict[str, int]] = {}
    for name, raw in sorted(shared.items()):
        snapshot = json.loads(raw)
        if snapshot.pop("at", 0) >= fresh:
            processes[name] = snapshot
    totals = {key: sum(p.get(key, 0) for p in processes.values()) for key in state.counters()}
    click.echo(json.dumps({**totals, "processes": len(processes), "per_process": processes}, indent=2))


@cli.command("job")
@click.argument("job_id")
@click.argument("data", required=False, default="")
@click.option("--event", help="Event name (e.g. progress).")
@click.option("--json", "as_json", is_flag=True, help="DATA is JSON: send it as a value.")
@click.option("--end", "end", is_flag=True, help="End the job's stream (sse.end, with DATA).")
@click.option("--fail", "fail", is_flag=True, help="End the job's stream with sse.error (DATA: the error).")
def job(job_id: str, data: str, event: Optional[str], as_json: bool, end: bool, fail: bool) -> None:
    """Publish DATA to the progress stream of JOB_ID (made if new) and print the event id."""
    value = _value(data, as_json)
    if end and fail:
        raise click.UsageError("Give --end or --fail, not both")
    state = get_state()
    settings = state.settings
    try:
        stream = Job(
            state.broker, job_id, ttl=settings.resumable_ttl, max_event_bytes=settings.max_event_bytes
        )
        click.echo(stream.end(value) if end else stream.fail(data) if fail else stream.publish(value, event))
    except (ValueError, RuntimeError) as exc:  # a bad id or field; a job that has ended
        raise click.UsageError(str(exc)) from None
    except BrokerError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(1)
    if not state.broker.shared:
        click.echo("warning: SSE_REDIS_URL is not set, so no stream of the app can read this job.", err=True)


def _value(data: str, as_json: bool) -> object:
    """DATA as given, or the value of its JSON with ``--json``."""
    if not as_json:
        return data
    try:
        return json.loads(data)
    except ValueError as exc:
        raise click.BadParameter(f"not JSON: {exc}", param_hint="DATA") from None
