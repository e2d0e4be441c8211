"""Where mail comes in. Every source hands what it receives to the storage's one promise
(:mod:`sink.storage`) and takes it off its origin only after the commit.

- :mod:`sink.sources.listeners`: the LMTP/SMTP listeners, built from
  :mod:`sink.sources.smtp_protocol` (the one module touching aiosmtpd's privates),
  :mod:`sink.sources.smtp_handler` (the hooks) and :mod:`sink.sources.replies` (the reply table).
"""
