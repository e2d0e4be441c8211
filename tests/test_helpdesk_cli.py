"""Issue 11 through the real `sink` command: check/ingest/show with tickets and admin rules,
`spam add|remove|list|mark`, `replay --reprocess [--dry-run]`, configuration errors."""

from __future__ import annotations

import json

import pytest

from tests.support import DIRECTORY, make_mail
from tests.test_cli import lines, sink

CONFIG = '''
[database]
url = "{url}"

[[boxes]]
address = "crm@firma.cz"
support_addresses = ["help@firma.cz"]
owner = "carol@firma.cz"

[[boxes.rules]]
name = "ticket-replies"
conditions = [{{ field = "subject", op = "regex", value = 'Ticket Id: (\\d+)' }}]
action = "update_ticket"

[[boxes.rules]]
name = "newsletters"
match = "any"
conditions = [
  {{ field = "from", op = "ends_with", value = "@news.example" }},
  {{ field = "subject", op = "starts_with", value = "Newsletter" }},
]
action = "do_nothing"
'''


@pytest.fixture
def setup(tmp_path, db_url):
    config = tmp_path / "sink.toml"
    config.write_text(CONFIG.format(url=db_url))
    (tmp_path / "directory.json").write_text(json.dumps(DIRECTORY))
    sink(config, "db", "upgrade", check=True)
    sink(config, "directory", "import", tmp_path / "directory.json", check=True)
    mails = {
        "new.eml": make_mail(to=("help@firma.cz",), subject="Printer down",
                             message_id="<p1@acme.cz>"),
        "reply.eml": make_mail(to=("help@firma.cz",), subject="Re: Printer down",
                               headers={"In-Reply-To": "<p1@acme.cz>"}),
        "admin.eml": make_mail(sender="eva@globex.com", subject="Re: Ticket Id: 1"),
        "news.eml": make_mail(sender="info@news.example", subject="Hi"),
        "ooo.eml": make_mail(to=("help@firma.cz",), subject="Automatic reply: Printer down",
                             headers={"X-Auto-Response-Suppress": "All"}),
    }
    for name, raw in mails.items():
        (tmp_path / name).write_bytes(raw)
    return config, tmp_path


def test_tickets_rules_spam_and_reprocess_from_the_command_line(setup):
    config, d = setup
    checked = lines(sink(config, "check", d / "new.eml", check=True))[0]
    assert checked["verdict"] == "PROCESSED"
    assert checked["tickets"] == [{"action": "created", "number": None, "title": "Printer down",
                                   "contact": "jan@acme.cz", "company": "ACME",
                                   "rule": "support-address"}]
    names = ["new.eml", "reply.eml", "admin.eml", "news.eml", "ooo.eml"]
    out = {name: lines(sink(config, "ingest", d / name, check=True))[0] for name in names}
    assert out["new.eml"]["tickets"][0]["number"] == "1"
    assert out["new.eml"]["activities"][0]["ticket"] == "1"
    assert out["reply.eml"]["tickets"][0] == {**out["new.eml"]["tickets"][0],
                                              "action": "updated", "title": "Re: Printer down",
                                              "rule": "follow-up"}
    assert (out["admin.eml"]["tickets"][0]["action"], out["admin.eml"]["tickets"][0]["rule"]) \
        == ("updated", "admin:ticket-replies")
    assert {"rule": "admin:ticket-replies", "outcome": "hit", "detail": "update_ticket #1"} \
        in out["admin.eml"]["trace"]
    assert out["news.eml"]["verdict"] == "RULE_IGNORED"
    assert out["ooo.eml"]["verdict"] == "AUTO_REPLY" and out["ooo.eml"]["tickets"] == []
    shown = sink(config, "show", out["reply.eml"]["id"], check=True).stdout.decode()
    assert "tickets: 1\n  updated #1 title='Printer down'" in shown  # its current title
    assert "thread" in shown and "follows #" in shown

    added = lines(sink(config, "spam", "add", "Bad@Spam.biz", "x@y.cz", check=True))[0]
    assert added == {"box": "crm@firma.cz", "added": ["bad@spam.biz", "x@y.cz"],
                     "already_listed": []}
    sink(config, "spam", "remove", "x@y.cz", check=True)
    assert [r["email"] for r in lines(sink(config, "spam", "list", check=True))] == \
        ["bad@spam.biz"]
    marked = lines(sink(config, "spam", "mark", out["admin.eml"]["id"], check=True))[0]
    assert marked["email"] == "eva@globex.com" and marked["tickets_deleted"] == []
    assert sink(config, "spam", "mark", 9999).returncode == 2

    dry = lines(sink(config, "replay", "--reprocess", out["new.eml"]["id"], "--dry-run",
                     check=True))[0]
    assert dry["before"]["tickets"][0]["number"] == "1"
    assert dry["after"]["verdict"] == "PROCESSED"          # never its own duplicate
    assert sink(config, "replay", "--reprocess").returncode == 2
    assert sink(config, "replay", "--dry-run", out["new.eml"]["id"]).returncode == 2
    done = lines(sink(config, "replay", "--reprocess", out["news.eml"]["id"], check=True))[0]
    assert done["after"]["verdict"] == "RULE_IGNORED"


@pytest.mark.parametrize("rule, message", [
    ('{ name = "bad", conditions = [{ field = "subject", op = "regex", value = "(x" }], '
     'action = "create_ticket" }', "rule bad"),
    ('{ name = "odd", conditions = [{ field = "cc", op = "contains", value = "x" }], '
     'action = "create_ticket" }', "unknown field"),
])
def test_a_bad_rule_is_a_configuration_error_naming_it(tmp_path, rule, message):
    config = tmp_path / "sink.toml"
    config.write_text(f'[[boxes]]\naddress = "crm@firma.cz"\nrules = [{rule}]\n')
    result = sink(config, "check", tmp_path / "none.eml")
    assert result.returncode == 2
    assert message in result.stderr.decode() and len(result.stderr.decode().splitlines()) == 1


def test_update_ticket_for_a_number_not_yet_known_creates_that_ticket_once(setup):
    """SPEC 5: update_ticket "updated, or created when it does not exist". Found in review:
    it was created with the next number instead, so every mail naming 'Ticket Id: 2' made a
    new ticket. The counter then passes over the number taken."""
    config, d = setup
    for name, subject in (("a.eml", "Re: Ticket Id: 2 status"),
                          ("b.eml", "Re: Ticket Id: 2 another update"),
                          ("other.eml", "Printer on fire")):
        to = ("help@firma.cz",) if name == "other.eml" else ("alice@firma.cz",)
        (d / name).write_bytes(make_mail(sender="eva@globex.com", to=to, subject=subject))
    out = {name: lines(sink(config, "ingest", d / name, check=True))[0]["tickets"]
           for name in ("a.eml", "b.eml", "new.eml", "other.eml")}
    assert [(t["action"], t["number"]) for t in out["a.eml"]] == [("created", "2")]
    assert [(t["action"], t["number"]) for t in out["b.eml"]] == [("updated", "2")]
    assert [(t["action"], t["number"]) for t in out["new.eml"]] == [("created", "1")]
    assert [(t["action"], t["number"]) for t in out["other.eml"]] == [("created", "3")]
