"""How every subcommand prints its result: one JSON object with --json, aligned lines otherwise."""

from __future__ import annotations

import json


def emit(summary: dict, as_json: bool, lines: list[tuple[str, str]]) -> None:
    """`lines`: (label, text) pairs for people; the JSON form prints `summary` itself."""
    if as_json:
        print(json.dumps(summary))
        return
    width = max(len(label) for label, _ in lines) + 1
    for label, text in lines:
        print(f"{label:<{width}}{text}")
