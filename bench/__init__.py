"""Benchmarks of crm-sink against bare aiosmtpd (see docs/PERFORMANCE.md).

``python -m bench.run`` is the one command; the other modules are its parts:
``corpus`` builds the mail, ``driver`` is the LMTP load generator (its own process), ``bare`` is
the no-op aiosmtpd LMTP server, ``servers`` starts and stops the servers under test, ``procstat``
reads CPU and memory from /proc.
"""
