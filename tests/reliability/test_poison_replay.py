"""10. Poison message: a rule that raises on one message leaves it ``failed`` with its error and
its raw bytes; every other message flows; ``sink replay ID`` processes it once the rule is
fixed - exactly once, also when two replays run at the same time."""

from __future__ import annotations

import json
import threading
import time

from sqlalchemy import func, select

from sink.cli import main
from sink.db import schema as t
from sink.intake import Intake
from sink.intake.replay import ReplayError, replay
from sink.pipeline import evaluate
from tests.support import MailClient, free_port, make_mail, write_config


def poisoned_rules(msg, box, directory, seen, records=None):
    if "poison" in msg.subject:
        raise ZeroDivisionError("a rule divided by zero")
    return evaluate(msg, box, directory, seen, records)


def rows(engine):
    counts = (select(t.activities.c.message_id, func.count().label("n"))
              .group_by(t.activities.c.message_id).subquery())
    with engine.connect() as conn:
        return {r.message_id: r for r in conn.execute(
            select(t.messages.c.id, t.messages.c.message_id, t.messages.c.status,
                   t.messages.c.verdict, t.messages.c.error, t.messages.c.trace,
                   t.raw_messages.c.content, func.coalesce(counts.c.n, 0).label("activities"))
            .join(t.raw_messages, t.raw_messages.c.message_id == t.messages.c.id)
            .outerjoin(counts, counts.c.message_id == t.messages.c.id))}


def store_poison(engine, start_server, count=30, poison=(3, 11, 27)):
    server = start_server(Intake(engine, rules=poisoned_rules))
    messages = {f"<p{i}@test>": make_mail(message_id=f"<p{i}@test>",
                                          subject=("poison pill " if i in poison else "mail ")
                                          + str(i)) for i in range(count)}
    replies = {}

    def session(keys):
        client = MailClient(server.lmtp_port)
        client.hello()
        for key in keys:
            replies[key] = client.send(messages[key])[-1]
        client.close()
    keys = list(messages)
    threads = [threading.Thread(target=session, args=(keys[k::5],)) for k in range(5)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(60)
    return messages, replies, {f"<p{i}@test>" for i in poison}


def cli(tmp_path, engine, *args):
    import structlog
    config = tmp_path / "sink.toml"
    write_config(config, engine.url.render_as_string(hide_password=False), free_port())
    saved = structlog.get_config()
    try:
        return main(["--config", str(config), *args])
    finally:
        structlog.configure(**saved)    # main() pointed the log at this test's captured stderr


def test_poison_message_is_kept_failed_and_the_others_flow(engine, start_server):
    messages, replies, poison = store_poison(engine, start_server)
    assert len(replies) == len(messages) and {c for c, _ in replies.values()} == {250}
    assert all("rules failed, kept for replay" in replies[k][1] for k in poison)
    stored = rows(engine)
    assert set(stored) == set(messages)
    for key, raw in messages.items():
        row = stored[key]
        assert bytes(row.content) == raw                    # the bytes are kept, always
        if key in poison:
            assert row.status == "failed" and "ZeroDivisionError" in row.error
            assert row.activities == 0
        else:
            assert (row.status, row.verdict, row.activities) == ("processed", "PROCESSED", 1)


def test_replay_processes_the_fixed_message_exactly_once(engine, start_server, tmp_path,
                                                         capsys, figures):
    messages, _, poison = store_poison(engine, start_server)
    stored = rows(engine)
    first = stored[sorted(poison)[0]]
    # the rule is fixed (the CLI runs the real rules): replay one by its ID
    assert cli(tmp_path, engine, "replay", str(first.id)) == 0
    [line] = capsys.readouterr().out.splitlines()
    out = json.loads(line)
    assert (out["id"], out["status"], out["verdict"], out["replayed"]) == (
        first.id, "processed", "PROCESSED", True)
    assert len(out["activities"]) == 1 and out["trace"]
    after = rows(engine)[first.message_id]
    assert (after.id, after.status, after.verdict, after.error, after.activities) == (
        first.id, "processed", "PROCESSED", None, 1)
    assert after.trace and bytes(after.content) == messages[first.message_id]
    # again: refused, clearly, and nothing changes
    assert cli(tmp_path, engine, "replay", str(first.id)) == 2
    err = capsys.readouterr().err
    assert "status is processed" in err and len(err.strip().splitlines()) == 1
    assert rows(engine)[first.message_id].activities == 1
    # the rest at once; then nothing is left to replay
    assert cli(tmp_path, engine, "replay", "--all-failed") == 0
    replayed = [json.loads(l) for l in capsys.readouterr().out.splitlines()]
    assert sorted(r["id"] for r in replayed) == sorted(stored[k].id for k in poison - {
        first.message_id})
    assert cli(tmp_path, engine, "replay", "--all-failed") == 0
    assert capsys.readouterr().out == ""
    final = rows(engine)
    assert {r.status for r in final.values()} == {"processed"}
    assert all(r.activities == 1 for r in final.values())
    figures(messages=len(messages), poison=len(poison), replayed=1 + len(replayed),
            records_per_message=sorted({r.activities for r in final.values()}))


def test_replay_refuses_unknown_ids_and_bad_arguments(engine, tmp_path, capsys):
    assert cli(tmp_path, engine, "replay", "999999") == 2
    assert "not found" in capsys.readouterr().err
    assert cli(tmp_path, engine, "replay") == 2
    assert cli(tmp_path, engine, "replay", "1", "--all-failed") == 2


def test_a_rule_still_failing_on_replay_keeps_the_message_failed(engine, start_server):
    messages, _, poison = store_poison(engine, start_server, count=4, poison=(1,))
    [key] = poison
    before = rows(engine)[key]
    box = load_config_boxes()
    delivery = replay(Intake(engine, rules=poisoned_rules), before.id, box)
    assert delivery.status == "failed" and "ZeroDivisionError" in delivery.error
    after = rows(engine)[key]
    assert (after.status, after.activities) == ("failed", 0)


def load_config_boxes():
    from sink.config import parse_config
    return parse_config({"boxes": [{"address": "crm@firma.cz"}]}).boxes


def test_concurrent_replays_create_records_once(engine, start_server, figures):
    messages, _, poison = store_poison(engine, start_server, count=12, poison=(0, 4, 8))
    boxes = load_config_boxes()

    def slow_fixed_rules(msg, box, directory, seen, records=None):
        time.sleep(0.3)            # both replays are inside the window at the same time
        return evaluate(msg, box, directory, seen, records)
    outcomes = []
    for key in sorted(poison):
        message_id = rows(engine)[key].id
        barrier = threading.Barrier(3)

        def replay_once():
            barrier.wait()
            try:
                outcomes.append(replay(Intake(engine, rules=slow_fixed_rules), message_id, boxes)
                                .status)
            except ReplayError as exc:
                outcomes.append(f"refused: {exc}")
        threads = [threading.Thread(target=replay_once) for _ in range(3)]
        for th in threads:
            th.start()
        for th in threads:
            th.join(60)
    final = rows(engine)
    figures(messages=len(poison), concurrent_replays=3 * len(poison),
            processed=outcomes.count("processed"),
            refused=sum(o.startswith("refused") for o in outcomes))
    assert outcomes.count("processed") == len(poison), outcomes
    assert all("status is processed" in o for o in outcomes if o != "processed")
    for key in poison:
        assert (final[key].status, final[key].activities) == ("processed", 1)
