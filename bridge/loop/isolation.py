"""The failure boundary between one record and the bridge as a whole.

A step of handling one record either returns its value or becomes that record's dead letter: a RecordError keeps
its own stage and type, and any other Exception becomes an UnexpectedRecordError at the step's stage. Only a
SystemFailure (and BaseExceptions such as KeyboardInterrupt) goes up, to pause or stop the loop.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TypeVar

from bridge.errors import RecordError, SystemFailure, UnexpectedRecordError
from bridge.records import DeadLetter, Record

log = logging.getLogger(__name__)
T = TypeVar("T")


def isolate(stage: str, record: Record, step: Callable[[], T]) -> T | DeadLetter:
    """step()'s value, or the record's dead letter if it raised anything but a SystemFailure."""
    try:
        return step()
    except SystemFailure:
        raise
    except RecordError as error:
        return DeadLetter.from_error(record, error)
    except Exception as exc:  # noqa: BLE001 - this is the boundary: nothing about one record may stop the loop
        log.warning("unexpected %s at stage %s for %s[%d]@%d; dead-lettered", type(exc).__name__, stage,
                    record.topic, record.partition, record.offset, exc_info=log.isEnabledFor(logging.DEBUG))
        return DeadLetter.from_error(record, UnexpectedRecordError(stage, exc))
