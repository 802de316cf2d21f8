"""One structured log line per event: ``event=NAME key=value …`` (logfmt).

The hub, the agent and the runtimes all log through :func:`kv` (or
:func:`logfmt` for fields without an event), so every line of gu quotes the
same way and a ``grep``/``awk`` or a log shipper reads them all alike:

- ``None`` values are left out (an absent field, not the word "None");
- a value that is empty or holds whitespace, ``"`` or ``=`` is written as a
  JSON string, so a message with spaces or a newline stays on one line and
  parses back unambiguously.

Never pass a token or a key: log lines are meant to be shared.
"""

from __future__ import annotations

import json


def _value(value: object) -> str:
    text = str(value)
    if not text or any(c.isspace() or c in '"=' for c in text):
        return json.dumps(text)
    return text


def logfmt(**fields: object) -> str:
    """``key=value`` pairs in the order given, ``None`` values left out."""
    return " ".join(f"{key}={_value(value)}" for key, value in fields.items() if value is not None)


def kv(event: str, **fields: object) -> str:
    """One log line: ``event=EVENT`` then ``fields`` (see the module docstring)."""
    return logfmt(event=event, **fields)


__all__ = ["kv", "logfmt"]
