"""The frames between the protocol process and a storage worker (:mod:`sink.storage.pool`
and :mod:`sink.storage.worker`), one format both ways.

A frame is ``!II`` (length of a pickled header, length of a raw payload), the header, the
payload. To the worker: first ``("init", config, number of workers)``, then ``(job_id, envelope, box addresses,
started)`` with the message as payload. From the worker: ``("ready", pid)`` or ``("failed",
reason)``, then ``("done", [(job_id, [result per box]), ...])`` where a result is ``("stored",
message_id, status, already_stored, verdict, error, [(id, status, already_stored, verdict,
error) of each carried message])`` or ``("error", reason, transient, no_space)``.

Pickle is safe here: both ends are our own processes on a socket pair nobody else holds.
"""

from __future__ import annotations

import pickle
import select
import socket
import struct

HEADER = struct.Struct("!II")


def frame_head(header, payload_length: int = 0) -> bytes:
    """A frame without its payload: the payload follows as it is (no copy of a big message)."""
    meta = pickle.dumps(header, protocol=pickle.HIGHEST_PROTOCOL)
    return HEADER.pack(len(meta), payload_length) + meta


def frame(header, payload: bytes = b"") -> bytes:
    return frame_head(header, len(payload)) + payload


class Inbox:
    """Frames from a blocking socket, each field read with exactly its length: a payload is
    received straight into the bytes object the worker then uses (``recv(n, MSG_WAITALL)``:
    one allocation, no copy - a 40 MB message costs 40 MB here, not 80).

    ``next(block=False)`` answers None when nothing is waiting (once a frame has begun it is
    read to its end), and :data:`EOF` once the other end is closed."""

    EOF = object()

    def __init__(self, sock: socket.socket):
        self.sock = sock

    def readable(self, timeout: float) -> bool:
        """Whether a frame (or the end) is waiting, after at most ``timeout`` seconds."""
        return bool(select.select([self.sock], [], [], timeout)[0])

    def next(self, *, block: bool = True):
        if not block and not self.readable(0):
            return None
        head = self._exact(HEADER.size, at_start=True)
        if head is None:
            return self.EOF
        meta_len, payload_len = HEADER.unpack(head)
        header = pickle.loads(self._exact(meta_len))
        return header, self._exact(payload_len)

    def _exact(self, length: int, at_start: bool = False) -> bytes | None:
        if length == 0:
            return b""
        data = self.sock.recv(length, socket.MSG_WAITALL)
        if len(data) == length:
            return data
        parts = [data]                  # interrupted, or the other end closed
        have = len(data)
        while have < length:
            more = self.sock.recv(length - have, socket.MSG_WAITALL)
            if not more:
                if at_start and have == 0:
                    return None         # closed between frames: the normal end
                raise EOFError("the protocol process went away inside a frame")
            parts.append(more)
            have += len(more)
        return b"".join(parts)
