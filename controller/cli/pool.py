"""The pool: providers (``gu peers``, ``gu peer``, ``gu label provider``), workload
output (``gu logs``), and agent join tokens (``gu hub token create/ls/revoke``).

``gu peers``/``gu peer`` print what the Provider Information API serves
(``/peers`` and ``/peers/{nodeId}/inf/*``); ``-o json`` prints it unchanged.
"""

from __future__ import annotations

import time
from typing import Any

import click

from controller.cli.output import age, dump_json, format_table
from controller.cli.state import CliState, pass_state
from specs.meta import parse_labels


def _find_peer(peers: list[dict[str, Any]], node: str) -> str:
    """Accept a full node id, a unique prefix of it, or a provider name."""
    exact = [p["nodeId"] for p in peers if node in (p["nodeId"], p["name"])]
    if exact:
        return str(exact[0])
    prefixed = [p["nodeId"] for p in peers if p["nodeId"].startswith(node)]
    if len(prefixed) == 1:
        return str(prefixed[0])
    return node  # let the hub answer 404 with its message


@click.command("peers")
@click.option("-o", "--output", type=click.Choice(["table", "json"]), default="table")
@pass_state
def peers_command(state: CliState, output: str) -> None:
    """List providers: node id, name, readiness, last heartbeat, sessions."""
    peers = state.client().call("GET", "/peers")
    if output == "json":
        click.echo(dump_json(peers))
        return
    rows = [
        [
            p["nodeId"],
            p["name"],
            "True" if p["ready"] else "False",
            age(p["lastSeen"]) if p["lastSeen"] else "never",
            str(p["sessions"]),
            ",".join(f"{k}={v}" for k, v in sorted(p["labels"].items())) or "<none>",
        ]
        for p in peers
    ]
    click.echo(format_table(["NODE", "NAME", "READY", "LAST-SEEN", "SESSIONS", "LABELS"], rows))


def runtimes_line(inventory: dict[str, Any]) -> str:
    """``native, docker, vm (tcg)``: each offered runtime, a VM runtime with its accel."""
    accel = {r["name"]: r.get("accel") for r in inventory.get("runtimeInfo") or []}
    return ", ".join(
        f"{name} ({accel[name]})" if accel.get(name) else name
        for name in inventory.get("runtimes") or []
    )


@click.command("peer")
@click.argument("node")
@click.option("-o", "--output", type=click.Choice(["table", "json"]), default="table")
@pass_state
def peer_command(state: CliState, node: str, output: str) -> None:
    """Show one provider: inventory, usage and the /inf views (NODE: id, prefix or name)."""
    client = state.client()
    node_id = _find_peer(client.call("GET", "/peers"), node)
    peer = client.call("GET", f"/peers/{node_id}")
    inf = {}
    if peer.get("inventory"):
        for view in ("storage", "cpu", "mem", "os"):
            inf[view] = client.call("GET", f"/peers/{node_id}/inf/{view}")
    if output == "json":
        click.echo(dump_json({**peer, "inf": inf}))
        return
    usage = peer.get("usage") or {}
    lines = [
        ["Node", peer["nodeId"]],
        ["Name", peer["name"]],
        ["Ready", str(peer["ready"])],
        ["Last seen", age(peer["lastSeen"]) + " ago" if peer["lastSeen"] else "never"],
        ["Sessions", str(peer["sessions"])],
        ["Labels", ", ".join(f"{k}={v}" for k, v in sorted(peer["labels"].items())) or "<none>"],
    ]
    if inf:
        cpu, mem, disk, os_ = inf["cpu"], inf["mem"], inf["storage"], inf["os"]
        lines += [
            ["OS", f"{os_['name']} {os_['version']}"],
            [
                "CPU",
                f"{cpu['architecture']} {'/'.join(map(str, cpu['bit']))}-bit, "
                f"{cpu['cores']} cores, {cpu['threads']} threads, {cpu['usage']}% used",
            ],
            ["Memory", f"{mem['gib']} GiB available of {mem['total']} GiB"],
            ["Storage", f"{disk['gib']} GiB free of {disk['totalGib']} GiB"],
            ["Workloads", str(usage.get("workloads", 0))],
            ["Runtimes", runtimes_line(peer["inventory"]) or "<none>"],
        ]
    else:
        lines.append(["Inventory", "not reported yet"])
    for net, c in sorted((usage.get("networks") or {}).items()):
        paths = ", ".join(
            f"{node[:10]} {p.get('path')}" + (f" {p['endpoint']}" if p.get("endpoint") else "")
            for node, p in sorted((c.get("peers") or {}).items())
        )
        dropped = ", ".join(f"{k} {v}" for k, v in sorted((c.get("dropped") or {}).items()))
        lines.append([
            f"Network {net}",
            f"out {c.get('framesOut', 0)} frames/{c.get('bytesOut', 0)} B, in "
            f"{c.get('framesIn', 0)}/{c.get('bytesIn', 0)} B; dropped: {dropped or 'none'}; "
            f"peers: {paths or 'none'}",
        ])  # fmt: skip
    click.echo(format_table(["FIELD", "VALUE"], lines))


@click.command("logs")
@click.argument("session")
@click.option("--node", metavar="NODE", help="Only the placement on this node (id or name).")
@click.option(
    "--previous", is_flag=True, help="The run before the last restart in place (OnFailure/Always)."
)
@pass_state
def logs_command(state: CliState, session: str, node: str | None, previous: bool) -> None:
    """Print the output of a session's workloads (the latest tail the agents uploaded)."""
    params: dict[str, str] = {"node": node} if node else {}
    if previous:
        params["previous"] = "true"
    resp = state.client().request("GET", f"/v1/sessions/{session}/logs", params=params)
    click.echo(resp.text, nl=False)


@click.group("token")
def token_group() -> None:
    """Join tokens that let new agents enrol."""


@token_group.command("create")
@click.option(
    "--ttl",
    default="24h",
    show_default=True,
    metavar="DURATION",
    help="How long the token stays valid (e.g. 30m, 24h, 7d).",
)
@click.option(
    "--label",
    "labels",
    multiple=True,
    metavar="KEY=VALUE",
    help="A trusted label every provider enrolled with it gets (repeatable); "
    "ImagePolicy selectors match these.",
)
@click.option("--uses", type=click.IntRange(1, 100_000), help="Enrol at most this many agents.")
@pass_state
def token_create_command(
    state: CliState, ttl: str, labels: tuple[str, ...], uses: int | None
) -> None:
    """Print a new join token: `gu agent --hub URL --join-token TOKEN` uses it."""
    seconds = parse_duration(ttl)
    body: dict[str, Any] = {"ttl": seconds, "labels": _labels(labels, "--label")}
    if uses is not None:
        body["uses"] = uses
    answer = state.client().call("POST", "/v1/jointokens", json=body)
    click.echo(answer["token"])


@token_group.command("ls")
@pass_state
def token_ls_command(state: CliState) -> None:
    """List the live join tokens by id: expiry, uses left, labels (never the tokens)."""
    items = state.client().call("GET", "/v1/jointokens")["items"]
    now = time.time()
    rows = [
        [
            t["id"],
            f"in {_duration(t['expires'] - now)}",
            "unlimited" if t["uses"] is None else str(t["uses"]),
            ",".join(f"{k}={v}" for k, v in sorted(t["labels"].items())) or "-",
        ]
        for t in items
    ]
    click.echo(format_table(["ID", "EXPIRES", "USES-LEFT", "LABELS"], rows))


@token_group.command("revoke")
@click.argument("token_id", metavar="ID")
@pass_state
def token_revoke_command(state: CliState, token_id: str) -> None:
    """Revoke a join token by the id `gu hub token ls` shows: it enrols nothing any more."""
    state.client().call("DELETE", f"/v1/jointokens/{token_id}")
    click.echo(f"jointoken/{token_id} revoked")


@click.group("label")
def label_group() -> None:
    """Set trusted labels (admin)."""


@label_group.command("provider")
@click.argument("node")
@click.argument("changes", nargs=-1, required=True, metavar="KEY=VALUE|KEY-...")
@pass_state
def label_provider_command(state: CliState, node: str, changes: tuple[str, ...]) -> None:
    """Set (KEY=VALUE) or remove (KEY-) a provider's trusted labels, the ones ImagePolicy
    selectors match: `gu label provider NODE pool=a gpu-`."""
    patch: dict[str, str | None] = {}
    for item in changes:
        if item.endswith("-") and "=" not in item:
            patch[item[:-1]] = None
        else:
            patch.update(_labels((item,), "gu label provider NODE"))
    client = state.client()
    nid = _find_peer(client.call("GET", "/peers"), node)
    result = client.call("PUT", f"/v1/providers/{nid}/labels", json={"labels": patch})
    shown = ",".join(f"{k}={v}" for k, v in sorted(result["metadata"]["labels"].items()))
    click.echo(f"provider/{nid} labeled: {shown or '(no labels)'}")


def _labels(items: tuple[str, ...], option: str) -> dict[str, str]:
    try:
        return parse_labels(items, option)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None


def _duration(seconds: float) -> str:
    seconds = max(0, int(seconds))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def parse_duration(text: str) -> int:
    """``90``, ``30s``, ``15m``, ``24h``, ``7d`` → seconds."""
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    raw = text.strip().lower()
    try:
        if raw and raw[-1] in units:
            return int(float(raw[:-1]) * units[raw[-1]])
        return int(raw)
    except ValueError:
        raise click.BadParameter(f"{text!r} is not a duration like 30m, 24h or 7d") from None
