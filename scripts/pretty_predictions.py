#!/usr/bin/env python3
"""Turn the bridge's JSON messages (one per line, as kafka-console-consumer prints them) into one line each.

    prediction:   LABEL  SCORE  URL            e.g.  golden_retriever      0.912  https://example.com/dog.jpg
    dead letter:  ! STAGE  ERROR  VALUE        e.g.  ! fetch  HTTPError: 404 Client Error  https://example.com/x.jpg

Any other line is printed unchanged. Standard library only, so it runs with any python3.

    ... kafka-console-consumer ... | python3 scripts/pretty_predictions.py [--top K]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any, TextIO

LABEL_WIDTH = 20


def format_prediction(message: dict[str, Any], top: int = 1) -> str:
    predictions = message.get("predictions") or []
    shown = ", ".join(f"{p['label']:<{LABEL_WIDTH}} {p['score']:.3f}" if top == 1
                      else f"{p['label']} {p['score']:.3f}" for p in predictions[:top])
    return f"{shown}  {message.get('url', '')}".rstrip()


def format_dead_letter(message: dict[str, Any]) -> str:
    error = message.get("error") or {}
    text = " ".join(f"{error.get('type', 'Error')}: {error.get('message', '')}".split())
    return f"! {error.get('stage', '?')}  {text}  {message.get('value', '')}".rstrip()


def format_line(line: str, top: int = 1) -> str:
    try:
        message = json.loads(line)
    except ValueError:
        return line
    if isinstance(message, dict) and isinstance(message.get("predictions"), list):
        return format_prediction(message, top)
    if isinstance(message, dict) and isinstance(message.get("error"), dict):
        return format_dead_letter(message)
    return line


def run(lines: TextIO, out: TextIO, top: int) -> None:
    for line in lines:
        out.write(format_line(line.rstrip("\r\n"), top) + "\n")
        out.flush()  # one line per message, as it arrives


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--top", type=int, default=1, help="classes shown per URL (default 1)")
    args = parser.parse_args(argv)
    if args.top < 1:
        parser.error("--top must be at least 1")
    try:
        run(sys.stdin, sys.stdout, args.top)
    except BrokenPipeError:  # e.g. `| head`: stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    except KeyboardInterrupt:  # Ctrl-C while following the topic
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
