"""Publish an event only once the transaction that made it true has committed."""

from __future__ import annotations

import logging
from typing import Any

from sqlalchemy import event
from sqlalchemy.orm import Session

from flask_sse_ext import SSE, BrokerError

logger = logging.getLogger(__name__)
sse = SSE()


def publish_after_commit(session: Session, data: Any, **fields: Any) -> None:
    """Queue ``sse.publish(data, **fields)`` until ``session`` commits; a rollback drops it."""
    if not session.in_transaction():
        session.begin()  # so that a rollback drops the event even before any SQL ran
    session.info.setdefault("sse_pending", []).append((data, fields))


@event.listens_for(Session, "after_commit")
def _publish_pending(session: Session) -> None:
    for data, fields in session.info.pop("sse_pending", []):
        try:
            sse.publish(data, **fields)
        except BrokerError:
            # The row is committed and cannot be taken back: log, and let clients catch up
            # when they next load the page.
            logger.exception("Committed, but the event for %r was not published", fields)


@event.listens_for(Session, "after_soft_rollback")
def _drop_pending(session: Session, previous_transaction: Any) -> None:
    session.info.pop("sse_pending", None)
