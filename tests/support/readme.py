"""The README's docker compose walkthrough, read as a user reads it: its sections, code blocks and command lines."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
WALKTHROUGH_HEADING = "## Quick start with docker compose"
COMPOSE_CONSOLE_CONSUMER = "docker compose exec kafka /opt/kafka/bin/kafka-console-consumer.sh"
# A line of scripts/read-predictions: LABEL SCORE URL.
PRETTY_LINE = re.compile(r"^(?P<label>\S+)\s+(?P<score>[01]\.\d{3})\s+(?P<url>\S+)$")


def walkthrough() -> str:
    """The quick-start section of README.md."""
    text = (ROOT / "README.md").read_text()
    assert WALKTHROUGH_HEADING in text, f"no README section {WALKTHROUGH_HEADING!r}"
    start = text.index(WALKTHROUGH_HEADING)
    end = text.find("\n## ", start + 1)
    return text[start:end if end != -1 else None]


def code_blocks(text: str, language: str) -> list[str]:
    return re.findall(rf"^```{language}\n(.*?)^```", text, flags=re.MULTILINE | re.DOTALL)


def commands(prefix: str) -> list[str]:
    """The walkthrough's shell lines that start with prefix."""
    found = [line.strip() for block in code_blocks(walkthrough(), "sh") for line in block.splitlines()
             if line.strip().startswith(prefix)]
    assert found, f"the walkthrough shows no command starting with {prefix!r}"
    return found
