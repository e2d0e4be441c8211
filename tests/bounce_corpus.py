"""The labelled bounce corpus (tests/data/bounces, README there): loading it, running the pure
pipeline on every file, and the per-MTA table of hard recall and soft false flags."""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from tests.side_effect_mail import decide

CORPUS = Path(__file__).parent / "data" / "bounces"


@dataclass
class Row:
    hard: int = 0
    hard_ok: int = 0           # flagged, and nothing that is not a hard address of its file
    soft: int = 0
    soft_flagged: int = 0
    other: int = 0             # non-bounces
    other_flagged: int = 0


def labels() -> dict:
    return json.loads((CORPUS / "labels.json").read_text())["files"]


def flagged(decision) -> set[str]:
    data = decision.as_json()
    return {f["email"] for f in data["contact_flags"]} | {f["email"] for f in data["forbidden"]}


def run(directory, files=None) -> dict[str, Row]:
    """{mta: Row} over the corpus (``files``: a subset of names)."""
    table: dict[str, Row] = defaultdict(Row)
    for name, label in sorted(labels().items()):
        if files is not None and name not in files:
            continue
        got = flagged(decide(directory, (CORPUS / name).read_bytes()))
        row = table[label["mta"]]
        if label["kind"] != "bounce":
            row.other += 1
            row.other_flagged += bool(got)
            continue
        hard = {r["email"] for r in label["recipients"] if r["kind"] == "hard"}
        for recipient in label["recipients"]:
            if recipient["kind"] == "hard":
                row.hard += 1
                row.hard_ok += recipient["email"] in got and got <= hard
            else:
                row.soft += 1
                row.soft_flagged += recipient["email"] in got
    return dict(table)


def total(table: dict[str, Row]) -> Row:
    out = Row()
    for row in table.values():
        for key in vars(out):
            setattr(out, key, getattr(out, key) + getattr(row, key))
    return out


def render(table: dict[str, Row]) -> str:
    lines = ["| MTA / dialect | hard | flagged exactly | soft | flagged | non-bounces | flagged |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for mta, r in sorted(table.items()) + [("**all**", total(table))]:
        lines.append(f"| {mta} | {r.hard} | {r.hard_ok} | {r.soft} | {r.soft_flagged} | "
                     f"{r.other} | {r.other_flagged} |")
    return "\n".join(lines)
