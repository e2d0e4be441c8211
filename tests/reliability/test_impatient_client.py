"""4. Impatient clients: a handler slower than the client's patience, and a client that
disconnects right after the final dot, then resends. The commit is never cut in half (it runs
shielded from the session), and the resend is recognised: stored once, never half."""

from __future__ import annotations

import socket
import threading
import time

from sqlalchemy import func, select

from sink.db import schema as t
from sink.intake import Intake
from sink.pipeline import evaluate
from tests.reliability.load import audit
from tests.support import MailClient, dot_stuff, make_mail, wait_for


def count(engine, table) -> int:
    with engine.connect() as conn:
        return conn.execute(select(func.count()).select_from(table)).scalar()


def hang_up_after_the_dot(port: int, raw: bytes) -> None:
    """MAIL, RCPT, DATA, the message and its final dot in one write, then close at once
    without reading the reply (an MTA crashing, a network cut, a client timeout)."""
    client = MailClient(port)
    client.hello()
    client.sock.sendall(b"MAIL FROM:<mta@firma.cz>\r\nRCPT TO:<crm@firma.cz>\r\nDATA\r\n")
    for _ in range(3):
        client.reply()
    client.sock.sendall(dot_stuff(raw) + b".\r\n")
    client.sock.shutdown(socket.SHUT_RDWR)
    client.abort()


def test_many_clients_gone_after_the_dot_then_resending_store_each_once(engine, config,
                                                                       start_server, figures):
    # 40 sessions from one address at once: above the default max_connections_per_client (20)
    from tests.conftest import with_listener_limits
    server = start_server(cfg=with_listener_limits(config, max_connections_per_client=100))
    ids = [f"<gone-{i}@test>" for i in range(40)]
    messages = [make_mail(message_id=mid, subject=f"gone {i}") for i, mid in enumerate(ids)]
    threads = [threading.Thread(target=hang_up_after_the_dot, args=(server.lmtp_port, raw))
               for raw in messages]
    for th in threads:
        th.start()
    for th in threads:
        th.join(30)
    # every client resends at once, as its queue manager would after the lost reply; some
    # resends may arrive while the first copy is still being committed
    replies, deferred = {}, []

    def resend(i):
        client = MailClient(server.lmtp_port)
        client.hello()
        for _ in range(20):               # an MTA keeps a deferred message and tries again
            replies[i] = client.send(messages[i])[-1]
            if replies[i][0] != 451:
                break
            deferred.append(i)
            time.sleep(0.2)
        client.close()
    threads = [threading.Thread(target=resend, args=(i,)) for i in range(len(messages))]
    for th in threads:
        th.start()
    for th in threads:
        th.join(60)
    assert sorted(replies) == list(range(len(messages)))
    assert all(code == 250 for code, _ in replies.values()), replies
    already = sum("already stored" in text for _, text in replies.values())
    result = audit(engine, messages, ids)
    figures(messages=len(messages), resent=len(messages), already_stored_replies=already,
            deferred_resends=len(deferred),
            lost=len(result["lost"]), duplicated=len(result["duplicated"]),
            damaged=len(result["damaged"]))
    assert result["lost"] == [] and result["duplicated"] == [] and result["damaged"] == []
    assert result["unprocessed"] == [] and result["records_not_once"] == []
    # the hang-ups did not stop the first copies: the resends found them stored
    assert already > 0


def test_handler_slower_than_the_clients_patience_is_stored_once(engine, start_server,
                                                                figures):
    def slow_rules(msg, box, directory, seen, records=None):
        time.sleep(1.2)
        return evaluate(msg, box, directory, seen, records)
    server = start_server(Intake(engine, rules=slow_rules))
    raw = make_mail(message_id="<impatient@test>")
    attempts, gave_up, final = 0, 0, None
    deadline = time.monotonic() + 60
    while final is None and time.monotonic() < deadline:
        attempts += 1
        client = MailClient(server.lmtp_port, timeout=0.4)   # patience shorter than the rules
        try:
            client.hello()
            final = client.send(raw)[-1]
            client.close()
        except (OSError, ConnectionError):
            gave_up += 1                                      # no reply: send it again at once
            client.abort()
    figures(attempts=attempts, gave_up=gave_up, final_reply=final and final[0])
    assert final is not None and final[0] == 250, final
    assert gave_up >= 1                      # the client really did lose patience
    assert wait_for(lambda: count(engine, t.messages) == 1, 30.0)
    time.sleep(1.5)                          # any attempt still in flight has ended
    result = audit(engine, [raw], ["<impatient@test>"])
    assert result["duplicated"] == [] and result["damaged"] == [] and result["lost"] == []
    assert result["unprocessed"] == [] and result["records_not_once"] == []
    assert count(engine, t.messages) == 1 and count(engine, t.raw_messages) == 1
