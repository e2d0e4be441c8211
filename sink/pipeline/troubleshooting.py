"""SPEC 5 step 2 (seed 000 15.2): mails of the "Troubleshooting" application become tasks.

A subject starting with a troubleshooting prefix marks such a mail. Its HTML body names four
things: the contract number (after "Contract:"), the problem ID (the number after ``id=`` in a
link containing ``&id=``), and the status and subject (table rows whose first cell is "Status"
/ "Subject"). With all four the task keyed by the problem ID is created or updated; without
them nothing is recorded (``INVALID_TASK``). The HTML is read with a real parser (lexbor), so
attribute order, nesting, entities, ``&amp;`` in hrefs, ``th`` or ``td`` do not matter.
"""

from __future__ import annotations

import html as htmllib
import re
from dataclasses import dataclass

from selectolax.lexbor import LexborHTMLParser

from sink.pipeline.context import Context
from sink.pipeline.decision import TaskAction, Verdict
from sink.pipeline.result import PASS, Result, hit
from sink.mail.textnorm import fold

ORIGIN = "troubleshooting"
_CONTRACT = re.compile(r"\bcontract\s*:\s*([^\s<>,;]+)", re.IGNORECASE)
_PROBLEM_ID = re.compile(r"&\s*id\s*=\s*(\d{1,100})(?!\d)", re.IGNORECASE)
# Elements that end a line of text: text on either side of them is not one word.
_BLOCKS = ("address, article, aside, blockquote, br, dd, div, dl, dt, footer, h1, h2, h3, h4, h5, "
           "h6, header, hr, li, ol, p, pre, section, table, tbody, td, tfoot, th, thead, tr, ul")
_LABELS = {"status": "status", "subject": "subject"}
MAX_VALUE = 2000


@dataclass(frozen=True)
class Problem:
    contract: str | None = None
    problem_id: str | None = None
    status: str | None = None
    subject: str | None = None

    @property
    def missing(self) -> tuple[str, ...]:
        return tuple(name for name in ("contract", "problem_id", "status", "subject")
                     if not getattr(self, name))


def _words(text: str) -> str:
    return " ".join(text.replace("\x00", "").split())[:MAX_VALUE]


def _problem_id(tree: LexborHTMLParser) -> str | None:
    for link in tree.css("a[href]"):
        href = link.attributes.get("href") or ""
        for _ in range(3):              # "&amp;amp;id=" from a doubly escaped template
            if "&amp;" not in href.lower():
                break
            href = htmllib.unescape(href)
        if match := _PROBLEM_ID.search(href):
            return match.group(1)
    return None


def _table_values(tree: LexborHTMLParser) -> dict[str, str]:
    """Rows whose first cell (th or td) is a known label: label -> the next cell's text."""
    found: dict[str, str] = {}
    for row in tree.css("tr"):
        cells = [c for c in row.iter() if c.tag in ("td", "th")]
        if len(cells) < 2:
            continue
        label = fold(cells[0].text(deep=True, separator="")).strip().rstrip(":").strip()
        name = _LABELS.get(label)
        if name and name not in found:
            value = _words(cells[1].text(deep=True, separator=""))
            if value:
                found[name] = value
    return found


def _contract(tree: LexborHTMLParser) -> str | None:
    root = tree.body or tree.root
    if root is None:
        return None
    match = _CONTRACT.search(root.text(deep=True, separator=""))
    if not match:
        return None
    return _words(match.group(1)).rstrip(".:")[:100] or None


def read_problem(html: str) -> Problem:
    """The four attributes of a troubleshooting mail's HTML body; missing ones are None."""
    if not html:
        return Problem()
    try:
        tree = LexborHTMLParser(html)
        tree.strip_tags(["script", "style", "head", "template"])
        problem_id = _problem_id(tree)
        for node in tree.css(_BLOCKS):
            node.insert_before(" ")
            node.insert_after(" ")
        values = _table_values(tree)
        status = values.get("status")
        return Problem(_contract(tree), problem_id, status and status[:200],
                       values.get("subject"))
    except Exception:  # a parser failure is a mail without the attributes, never a crash
        return Problem()


def troubleshooting(ctx: Context) -> Result:
    prefix = next((p for p in ctx.folded_list("troubleshooting_prefixes")
                   if ctx.subject.startswith(p)), None)
    if prefix is None:
        return PASS
    problem = read_problem(ctx.msg.html or "")
    if problem.missing:
        return hit(Verdict.INVALID_TASK, "not found in the HTML body: " + ", ".join(
            m.replace("_", " ") for m in problem.missing))
    exists = ctx.records.task(problem.problem_id) is not None
    action = "updated" if exists else "created"
    task = TaskAction(action=action, number=problem.problem_id, subject=problem.subject,
                      status=problem.status, origin=ORIGIN, contract=problem.contract)
    return Result("hit", Verdict.TASK_UPDATED if exists else Verdict.TASK_CREATED,
                  detail=f"task {problem.problem_id} {action} (contract {problem.contract})",
                  tasks=(task,))
