"""Blobs and outputs: ``gu blob push|ls|get|pin|unpin`` and ``gu outputs SESSION``.

A blob is data a Session reads (``spec.workload.inputs``): a file, or a folder packed
as a reproducible tar. Outputs are what a placement left under
``spec.workload.outputs.path``, packed by its agent; ``gu outputs`` fetches every
placement's, checks each against its hash and unpacks it into ``DIR/<placement>/``.
"""

from __future__ import annotations

import os
import tarfile
import tempfile
from pathlib import Path
from typing import Any

import click

from controller.cli.errors import BadInputError, HubError
from controller.cli.images import progress_bar, upload
from controller.cli.output import dump_json, format_table, human_bytes
from controller.cli.state import CliState, pass_state
from controller.client import Client, error_from
from specs.images import Hasher, PackError, pack_tar


@click.group("blob", short_help="Data for Sessions: push, list, get, pin.")
def blob_group() -> None:
    """Blobs: the data Sessions read (spec.workload.inputs) and the outputs they leave."""


@blob_group.command("push")
@click.argument("path", type=click.Path(exists=True, path_type=Path))
@click.option("--app", metavar="NAME", help="Admin only: the app that owns the blob.")
@pass_state
def blob_push(state: CliState, path: Path, app: str | None) -> None:
    """Upload a FILE, or a DIR packed as a reproducible tar (use it with extract: true);
    print its hash for spec.workload.inputs."""
    client = state.client()
    params = {"app": app} if app else {}
    if path.is_dir():
        with tempfile.TemporaryDirectory(prefix="gu-blob-") as tmp:
            packed = Path(tmp) / f"{path.name or 'folder'}.tar"
            try:
                pack_tar(path, packed)
            except PackError as exc:
                raise BadInputError(str(exc)) from None
            answer = upload(client, packed, "/v1/blobs", f"push {path.name}/", params)
    else:
        answer = upload(client, path, "/v1/blobs", f"push {path.name}", params)
    click.echo(answer["hash"])


@blob_group.command("ls")
@click.option("-o", "--output", type=click.Choice(["table", "json"]), default="table")
@pass_state
def blob_ls(state: CliState, output: str) -> None:
    """The blobs you may read (an app: its own, pushed or produced; the admin: all)."""
    items = state.client().call("GET", "/v1/blobs")["items"]
    if output == "json":
        click.echo(dump_json({"items": items}))
        return
    click.echo(format_table(["HASH", "SIZE"], [[i["hash"], human_bytes(i["size"])] for i in items]))


@blob_group.command("get")
@click.argument("blob")
@click.option(
    "-o",
    "--output",
    "out",
    type=click.Path(path_type=Path),
    required=True,
    help="File to write (checked against the hash before it gets its name).",
)
@pass_state
def blob_get(state: CliState, blob: str, out: Path) -> None:
    """Download BLOB (a sha3-256:… hash) to a file, verified."""
    download(state.client(), blob, out)
    click.echo(f"{out}: {blob}", err=True)


@blob_group.command("pin")
@click.argument("blob")
@pass_state
def blob_pin(state: CliState, blob: str) -> None:
    """Keep BLOB on the hub even after the Session that produced it is deleted."""
    state.client().call("PUT", f"/v1/blobs/{blob}/pin", params={"pinned": "true"})
    click.echo(f"{blob} pinned")


@blob_group.command("unpin")
@click.argument("blob")
@pass_state
def blob_unpin(state: CliState, blob: str) -> None:
    """Let BLOB go with the Session that produced it."""
    state.client().call("PUT", f"/v1/blobs/{blob}/pin", params={"pinned": "false"})
    click.echo(f"{blob} unpinned")


def download(client: Client, blob: str, out: Path, label: str | None = None) -> None:
    """Stream ``GET /v1/blobs/{blob}`` to ``out`` with a progress bar, hashing it; the file
    gets its name only once the bytes match the hash (HubError otherwise)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    part = out.with_name(f".{out.name}.part")
    hasher = Hasher()
    headers = {"Authorization": f"Bearer {client.token()}"}
    try:
        with client.http.stream("GET", f"/v1/blobs/{blob}", headers=headers, timeout=None) as resp:
            if resp.status_code >= 400:
                resp.read()
                raise error_from(resp)
            total = int(resp.headers.get("content-length") or 0) or None
            with progress_bar() as progress, open(part, "wb") as fh:
                task = progress.add_task(label or f"get {blob[:20]}…", total=total)
                for chunk in resp.iter_bytes(1 << 20):
                    hasher.update(chunk)
                    fh.write(chunk)
                    progress.update(task, advance=len(chunk))
        if hasher.hash != blob:
            raise HubError(f"the hub sent bytes hashing to {hasher.hash}, not {blob}; try again")
        os.replace(part, out)
    finally:
        part.unlink(missing_ok=True)


@click.command("outputs")
@click.argument("session")
@click.option(
    "-o",
    "--output",
    "out",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Folder to unpack into (default: ./<session>-outputs).",
)
@click.option("--node", metavar="NODE", help="Only the placements on this provider (id or name).")
@click.option("--json", "as_json", is_flag=True, help="Only list them, as JSON.")
@pass_state
def outputs_command(
    state: CliState, session: str, out: Path | None, node: str | None, as_json: bool
) -> None:
    """Download every placement's outputs of SESSION, verified, into DIR/<placement>/."""
    client = state.client()
    items: list[dict[str, Any]] = client.call("GET", f"/v1/sessions/{session}/outputs")["items"]
    if node:
        names = {node}
        for p in client.call("GET", "/peers"):
            if node in (p["nodeId"], p["name"]):
                names.add(p["nodeId"])
        items = [i for i in items if i["node"] in names or i["node"].startswith(node)]
    if as_json:
        click.echo(dump_json({"items": items}))
        return
    if not items:
        raise HubError(f"session {session} has no outputs yet (its placements record them "
                       f"when they end: `gu get session {session}`)")  # fmt: skip
    target = out or Path(f"{session}-outputs")
    for item in items:
        dest = target / item["placement"]
        with tempfile.TemporaryDirectory(prefix="gu-outputs-") as tmp:
            packed = Path(tmp) / "outputs.tar"
            download(client, item["hash"], packed, f"{item['placement']}")
            if dest.exists():
                raise BadInputError(f"{dest} exists already; remove it or use another -o")
            dest.mkdir(parents=True)
            with tarfile.open(packed) as tar:
                tar.extractall(dest, filter="data")
        click.echo(f"{dest}/  {item['files']} files, {human_bytes(item['size'])}  {item['hash']}")
