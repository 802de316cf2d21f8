"""Client configuration: contexts that say which hub to talk to, with which key.

The file (``--config FILE``, ``$GU_CONFIG``, default ``~/.config/gu/config.yaml``)::

    current-context: admin@127.0.0.1:61622
    contexts:
      - name: admin@127.0.0.1:61622
        hub: http://127.0.0.1:61622
        key: /home/me/.local/share/gu/hub/admin.key
        principal: admin

Only key *paths* live here, never key material or tokens, so the file can be
shared or printed safely.
"""

from __future__ import annotations

import io
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ruamel.yaml import YAML

from specs.fileio import write_atomic

DEFAULT_CONFIG = Path("~/.config/gu/config.yaml")


class ConfigError(Exception):
    """The client configuration is missing or wrong; the message says what to do."""


@dataclass
class Context:
    name: str
    hub: str
    key: str
    principal: str = "admin"


@dataclass
class ClientConfig:
    path: Path
    current: str | None = None
    contexts: list[Context] = field(default_factory=list)

    def context(self, name: str | None = None) -> Context:
        """The named context, or the current one."""
        want = name or self.current
        if want is None:
            raise ConfigError(
                f"no current context in {self.path}; start a hub (`gu hub`) or log in "
                "(`gu login --app NAME --key FILE --hub URL`)"
            )
        for ctx in self.contexts:
            if ctx.name == want:
                return ctx
        known = ", ".join(c.name for c in self.contexts) or "none"
        raise ConfigError(f"context {want!r} is not in {self.path} (known: {known})")

    def upsert(self, ctx: Context, make_current: bool = True) -> None:
        """Add or replace a context by name."""
        self.contexts = [c for c in self.contexts if c.name != ctx.name] + [ctx]
        if make_current:
            self.current = ctx.name

    def save(self) -> None:
        """Write the file atomically (0600: it names key paths)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        data: dict[str, Any] = {
            "current-context": self.current,
            "contexts": [asdict(c) for c in self.contexts],
        }
        text = io.StringIO()
        YAML().dump(data, text)
        write_atomic(self.path, text.getvalue().encode(), 0o600)


def config_path(explicit: str | Path | None = None) -> Path:
    """``explicit``, else ``$GU_CONFIG``, else ``~/.config/gu/config.yaml``."""
    raw = explicit or os.environ.get("GU_CONFIG") or DEFAULT_CONFIG
    return Path(raw).expanduser()


def load_config(explicit: str | Path | None = None, *, missing_ok: bool = False) -> ClientConfig:
    """Read the client configuration (an empty one if absent and ``missing_ok``)."""
    path = config_path(explicit)
    if not path.exists():
        if missing_ok:
            return ClientConfig(path=path)
        raise ConfigError(
            f"no client config at {path}; start a hub with `gu hub` (it writes one) "
            "or pass --config FILE / set GU_CONFIG"
        )
    try:
        data = YAML(typ="safe").load(path.read_text()) or {}
        contexts = [Context(**c) for c in data.get("contexts") or []]
    except Exception as exc:
        raise ConfigError(f"{path}: not a valid gu client config: {exc}") from None
    return ClientConfig(path=path, current=data.get("current-context"), contexts=contexts)
