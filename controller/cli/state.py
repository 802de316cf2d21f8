"""The state every command shares: which client config and context, and one client.

The group stores a ``CliState`` in click's context object; a command that talks
to the hub asks it for ``client()``. The client is made on first use — so
``gu config``, ``gu schema`` and ``--help`` never read a key — and closed when
the command ends.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import click

from controller.client import Client


@dataclass
class CliState:
    """Global options (``--config``, ``--context``) and the lazily made API client."""

    config: str | None = None
    context: str | None = None
    _client: Client | None = field(default=None, repr=False)

    def client(self) -> Client:
        """The API client of the chosen context (logged in on its first request)."""
        if self._client is None:
            self._client = Client.from_config(self.config, self.context)
        return self._client

    def close(self) -> None:
        """Close the client's connections, if one was made."""
        if self._client is not None:
            self._client.close()
            self._client = None


pass_state = click.make_pass_decorator(CliState, ensure=True)
