"""The flags of `tfs-bridge redrive`: run's Kafka and operations settings (REDRIVE_SETTINGS), plus its own."""

from __future__ import annotations

import argparse
from dataclasses import dataclass

from bridge.errors import ConfigError
from bridge.redrive.selection import Selection, parse_time

# Settings fields redrive takes from run's flags and TFS_BRIDGE_* variables; the others keep their defaults (a
# redrive neither fetches nor predicts). Not transactional_id: that is a bridge instance's, and a redrive using it
# would fence the bridge.
REDRIVE_SETTINGS = ("bootstrap_servers", "input_topic", "output_topic", "dead_letter_topic", "group_id",
                    "instance_name", "static_membership", "group_protocol", "kafka_config", "transaction_timeout_ms",
                    "kafka_timeout_ms", "log_level", "log_format", "progress_interval_ms")
STAGES = ("parse", "fetch", "preprocess", "predict", "output", "record")  # every RecordError's stage
TYPES_SEEN = "InvalidRecord, FetchError, blocked, ImageError, PredictionRejected, OutputError, UnexpectedRecordError"

SUMMARY = "send dead letters back to the input topic, exactly once"
DESCRIPTION = f"""{SUMMARY}.

Reads the dead-letter topic (read_committed) up to its end as of the start, and produces each chosen dead letter's
original record (value, key and headers) to the input topic with the header tfs-bridge.redrive.count one higher.
Each transaction holds the records sent and the redrive group's offsets, so a redrive interrupted at any point and
run again sends each dead letter once. Chosen: every dead letter matching all the filters given (a filter given
several values, repeated or comma-separated, matches any of them), redriven fewer than --max-redrives times. Not
sent, and counted: one whose value was cut (over 64 KiB) or whose headers were lost, and one that is not a dead
letter. The redrive group's offsets move past every dead letter read, sent or skipped: the next redrive in the
group reads only newer ones; to choose again among older ones, give another --redrive-group-id (it starts at the
beginning, and may send again what another group sent). Prints a summary line; exit 0 at the end, 1 at the
deadline or on a Kafka failure (run it again: it goes on where it stopped), 2 for a bad flag, 130 when
interrupted."""


@dataclass(frozen=True)
class RedriveOptions:
    selection: Selection
    dry_run: bool = False
    group_id: str | None = None  # the redrive's consumer group; None: <--group-id>-redrive
    transaction_records: int = 500
    deadline_ms: int = 600_000

    def group(self, bridge_group: str) -> str:
        return self.group_id or f"{bridge_group}-redrive"


def add_redrive_arguments(parser: argparse.ArgumentParser) -> None:
    """redrive's own flags, in their own group."""
    group = parser.add_argument_group("choosing and sending dead letters")
    group.add_argument("--stage", action="append", metavar="STAGE[,STAGE...]",
                       help=f"only dead letters that failed at one of these stages ({', '.join(STAGES)}); "
                            "repeatable")
    group.add_argument("--type", action="append", metavar="TYPE[,TYPE...]", dest="error_type",
                       help=f"only dead letters with one of these error types (e.g. {TYPES_SEEN}); repeatable")
    group.add_argument("--since", metavar="TIME",
                       help="only dead letters written at or after TIME: ISO-8601 (2025-01-31T12:00:00Z; no offset: "
                            "UTC) or epoch milliseconds, compared with the dead letter's Kafka timestamp")
    group.add_argument("--until", metavar="TIME", help="only dead letters written before TIME (as --since)")
    group.add_argument("--max-redrives", metavar="N", default="3",
                       help="skip (and count) a dead letter whose record was redriven N times already [default 3]")
    group.add_argument("--dry-run", action="store_true",
                       help="count what would be sent, sending nothing and moving no offsets")
    group.add_argument("--redrive-group-id", metavar="GROUP",
                       help="consumer group whose offsets on the dead-letter topic remember what was redriven "
                            "[default: the --group-id followed by -redrive]")
    group.add_argument("--transaction-records", metavar="N", default="500",
                       help="dead letters per transaction at most [default 500]")
    group.add_argument("--deadline-ms", metavar="MS", default="600000",
                       help="stop (exit 1, what is committed stays) if the end is not reached by then [default "
                            "600000]")


def redrive_options(args: argparse.Namespace) -> RedriveOptions:
    """The options from parsed flags; ConfigError naming the flag if one is invalid."""
    stages = _names(args.stage)
    unknown = sorted(stages - set(STAGES))
    if unknown:
        raise ConfigError(f"--stage must be one of {', '.join(STAGES)}, got {unknown[0]!r}")
    since, until = _time("--since", args.since), _time("--until", args.until)
    if since is not None and until is not None and since >= until:
        raise ConfigError(f"--since must be earlier than --until, got {args.since!r} and {args.until!r}")
    selection = Selection(stages, _names(args.error_type), since, until,
                          _integer("--max-redrives", args.max_redrives, minimum=0))
    group = args.redrive_group_id.strip() if args.redrive_group_id is not None else None
    if group == "":
        raise ConfigError("--redrive-group-id must not be empty")
    return RedriveOptions(selection, args.dry_run, group,
                          _integer("--transaction-records", args.transaction_records, minimum=1),
                          _integer("--deadline-ms", args.deadline_ms, minimum=1))


def _names(values: list[str] | None) -> frozenset[str]:
    """Repeated and comma-separated values as one set."""
    return frozenset(name.strip() for value in values or () for name in value.split(",") if name.strip())


def _time(flag: str, text: str | None) -> int | None:
    if text is None:
        return None
    try:
        return parse_time(text)
    except (ValueError, OverflowError):
        raise ConfigError(f"{flag} must be an ISO-8601 time (2025-01-31T12:00:00Z) or epoch milliseconds, "
                          f"got {text!r}") from None


def _integer(flag: str, text: str, minimum: int) -> int:
    try:
        value = int(text.strip())
    except ValueError:
        value = minimum - 1
    if value < minimum:
        kind = "a positive integer" if minimum == 1 else "a non-negative integer"
        raise ConfigError(f"{flag} must be {kind}, got {text!r}")
    return value
