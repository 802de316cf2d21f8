"""The web UI's providers page at 1,000 providers, in headless Chromium.

Run: ``python tests/bench/bench_ui.py [--agents 1000] [--runs 5] [--beats 20]
[--cpu-seconds 20] [--pages 5]``. Prints one JSON line per figure.

1,000 simulated agents (``pool_agents.py``, as ``bench_pool.py`` uses them) enrol
through the real API and heartbeat every 5 s; 1,000 Sessions place one task each on
them. Then:

1. First render: a new browser context opens a ``gu ui`` link; the time from the
   navigation until the first page of provider rows is in the DOM (p50/p99 over
   ``--runs``).
2. Heartbeat to row: a probe agent of our own (named to sort first) sends a beat with
   a CPU figure it never sent before; the time until its row shows that figure
   (p50/p99 over ``--beats``). The page polls every second; the hub builds the rows
   at most every 0.5 s.
3. The hub's CPU, % of one core, over ``--cpu-seconds`` with no page open and again
   with ``--pages`` pages open on the providers page: the difference is what the
   open pages cost.

Goal (issue 10): first render ≤ 1 s, heartbeat to row ≤ 2 s, ≤ 5 % of one core extra.
All traffic goes to a hub this script starts on 127.0.0.1; it stops it at the end.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import psutil

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests" / "bench"))

from bench_pool import Agents, pct, policy_objects, schedule, start_hub  # noqa: E402

from controller.client import Client  # noqa: E402
from specs.identity import generate_key  # noqa: E402
from tests.test_security_matrix import HEARTBEAT, enroll_agent  # noqa: E402
from tests.test_ui import CHROMIUM_ARGS  # noqa: E402

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"


def emit(figure: str, value: float, unit: str, **extra: Any) -> None:
    line = {"bench": "ui", "figure": figure, "value": round(value, 3), "unit": unit, **extra}
    print(json.dumps(line), flush=True)


def link(client: Client) -> str:
    return str(client.call("POST", "/v1/ui/links")["url"])


def hub_cpu(proc: psutil.Process, seconds: float) -> float:
    proc.cpu_percent(None)
    time.sleep(seconds)
    return float(proc.cpu_percent(None))


def open_page(browser: Any, client: Client) -> tuple[Any, Any, float]:
    """A new context logged in on the providers page; (context, page, seconds to rows)."""
    context = browser.new_context(viewport={"width": 1400, "height": 900})
    page = context.new_page()
    t = time.perf_counter()
    page.goto(link(client))
    page.locator("tbody tr[data-node]").nth(99).wait_for(state="attached", timeout=30_000)
    return context, page, time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--agents", type=int, default=1000)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--beats", type=int, default=20)
    ap.add_argument("--cpu-seconds", type=float, default=20.0)
    ap.add_argument("--pages", type=int, default=5)
    ap.add_argument("--procs", type=int, default=2)
    args = ap.parse_args()
    from playwright.sync_api import sync_playwright

    with tempfile.TemporaryDirectory(prefix="gu-bench-ui-") as tmp:
        proc, url, config = start_hub(Path(tmp))
        agents: Agents | None = None
        try:
            client = Client.from_config(config)
            client.apply(policy_objects())
            join = client.call("POST", "/v1/jointokens", json={"ttl": 3600})["token"]
            agents = Agents(url, join, args.agents, args.procs, watch=False)
            agents.ready()
            probe = enroll_agent(url, generate_key(), join, "aaa-probe")
            http = httpx.Client(
                base_url=url, headers={"Authorization": f"Bearer {probe['token']}"}, timeout=10
            )
            http.post("/v1/agents/heartbeat", json=HEARTBEAT).raise_for_status()
            schedule(client, args.agents, 1, "ui-", args.agents + 1)
            hub = psutil.Process(proc.pid)
            idle = hub_cpu(hub, args.cpu_seconds)
            emit("hub_cpu_no_page", idle, "% of one core", providers=args.agents + 1)

            with sync_playwright() as p:
                browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
                firsts = []
                for _ in range(args.runs):
                    context, _page, took = open_page(browser, client)
                    firsts.append(took)
                    context.close()
                emit(
                    "first_render_p50", pct(firsts, 50) * 1000, "ms",
                    p99_ms=round(pct(firsts, 99) * 1000, 1), runs=args.runs,
                    rows_drawn=100, providers=args.agents + 1, goal_ms=1000,
                )  # fmt: skip

                context, page, _ = open_page(browser, client)
                row = page.locator(f'tr[data-node="{probe["nodeId"]}"] td.cpu')
                updates = []
                for i in range(args.beats):
                    cpu = 11 + (i * 37) % 88  # a figure not shown just before
                    beat = {**HEARTBEAT, "usage": {**HEARTBEAT["usage"], "cpuPercent": cpu}}
                    t = time.perf_counter()
                    http.post("/v1/agents/heartbeat", json=beat).raise_for_status()
                    row.filter(has_text=f"{cpu} %").wait_for(timeout=10_000)
                    updates.append(time.perf_counter() - t)
                    time.sleep(0.3)
                emit(
                    "heartbeat_to_row_p50", pct(updates, 50) * 1000, "ms",
                    p99_ms=round(pct(updates, 99) * 1000, 1), beats=args.beats, goal_ms=2000,
                )  # fmt: skip
                contexts = [context] + [
                    open_page(browser, client)[0] for _ in range(args.pages - 1)
                ]
                time.sleep(2)
                busy = hub_cpu(hub, args.cpu_seconds)
                emit(
                    "hub_cpu_pages_open", busy, "% of one core", pages=len(contexts),
                    baseline_no_page=round(idle, 1), extra=round(busy - idle, 1), goal_extra=5,
                )  # fmt: skip
                for c in contexts:
                    c.close()
                browser.close()
        finally:
            if agents is not None:
                agents.stop()
            proc.terminate()
            proc.wait(timeout=30)


if __name__ == "__main__":
    main()
