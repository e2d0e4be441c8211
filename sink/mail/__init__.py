"""Bytes to facts, pure: nothing here writes anywhere or raises for content.

- :mod:`~sink.mail.parse`: ``parse_message(raw) -> ParsedMessage``, defensively;
- :mod:`~sink.mail.window`, :mod:`~sink.mail.opaque`, :mod:`~sink.mail.html`: what keeps the
  parse bounded on hostile input;
- :mod:`~sink.mail.unwrap`: the messages a journal report, wrapper or PEC envelope carries;
- :mod:`~sink.mail.textnorm`: the comparison form of text and addresses.
"""
