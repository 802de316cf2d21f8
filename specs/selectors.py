"""Label selectors: the one parser and matcher the API, the CLI and policy share.

A selector is ``k=v,k2=v2,k3``: every ``k=v`` must be present with that value,
a bare ``k`` only has to exist (the subset of Kubernetes' equality-based
selectors that gu needs). Parsed, it is a dict whose ``None`` values mean
"exists".
"""

from __future__ import annotations

from collections.abc import Mapping

Selector = dict[str, str | None]


def match_labels(labels: Mapping[str, str], selector: Mapping[str, str | None]) -> bool:
    """True when every key of ``selector`` is in ``labels`` (with its value, unless None)."""
    for key, want in selector.items():
        have = labels.get(key)
        if have is None or (want is not None and have != want):
            return False
    return True


def parse_selector(text: str | None) -> Selector:
    """Parse ``k=v,k2=v2,k3`` into a selector (``k3`` = the label exists)."""
    out: Selector = {}
    if not text:
        return out
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        key, sep, value = part.partition("=")
        out[key.strip()] = value.strip() if sep else None
    return out


def format_selector(selector: Mapping[str, str | None]) -> str:
    """The text form of a selector, keys sorted (``<none>`` when empty)."""
    parts = [k if v is None else f"{k}={v}" for k, v in sorted(selector.items())]
    return ",".join(parts) or "<none>"


__all__ = ["Selector", "format_selector", "match_labels", "parse_selector"]
