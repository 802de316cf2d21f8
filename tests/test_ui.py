"""The hub's web UI in a real browser (Debian's chromium, headless, driven by Playwright),
against a real hub with two real agents, and ``/metrics`` read by prometheus-client's
own parser.

One module-wide pool (hub, 2 agents, an app with a looping image) serves every test;
each test opens its own browser context (own cookies). Every request a page makes is
recorded, and each test checks that none went to any other host than the hub.
"""

from __future__ import annotations

import contextlib
import json
import re
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from controller.client import Client
from specs.identity import generate_key
from tests.conftest import HubProcess, make_hub
from tests.helpers import GU, wait_for
from tests.test_agent import AgentProcess
from tests.test_agent_e2e import push_script_image, tear_down
from tests.test_security_matrix import app_object

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
MARK = f"gu-ui-{uuid.uuid4().hex[:8]}"
LOOP = f"""#!/bin/sh
# {MARK}: runs until stopped
while true; do echo "tick on $GU_NODE"; sleep 0.5; done
"""

pytestmark = pytest.mark.skipif(
    not Path(CHROMIUM).exists(), reason="chromium is not installed (make system installs it)"
)


@dataclass
class Pool:
    hub: HubProcess
    admin: Client
    agents: list[AgentProcess]
    nodes: list[str]
    image: str
    app_key: Any
    tmp: Path
    sessions: list[str] = field(default_factory=list)

    def session(self, name: str, node: str, app: str = "web") -> None:
        self.admin.apply(
            [
                {
                    "apiVersion": "gu/v1",
                    "kind": "Session",
                    "metadata": {"name": name},
                    "spec": {
                        "app": app,
                        "providers": {"nodes": [node]},
                        "workload": {
                            "runtime": "native",
                            "image": {"hash": self.image},
                            "command": ["./run.sh"],
                            "resources": {"cpu": 0.1, "memoryMiB": 32},
                        },
                    },
                }
            ]
        )
        self.sessions.append(name)


@pytest.fixture(scope="module")
def pool(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pool]:
    tmp = tmp_path_factory.mktemp("ui")
    hub = make_hub(tmp)
    hub.start()
    admin = hub.client()
    agents: list[AgentProcess] = []
    try:
        token = admin.call("POST", "/v1/jointokens", json={"ttl": 600})["token"]
        for i in range(2):
            a = AgentProcess(hub, tmp / f"agent-{i}", tmp / f"agent-{i}.log")
            a.start("--join-token", token, "--name", f"desk-{i}", "--heartbeat", "1")
            agents.append(a)
        image = push_script_image(admin, tmp, "loop", LOOP)
        app_key = generate_key()
        admin.apply(
            [
                app_object("web", app_key),
                app_object("stranger", generate_key()),
                {
                    "apiVersion": "gu/v1",
                    "kind": "ImagePolicy",
                    "metadata": {"name": "web"},
                    "spec": {"apps": ["web", "stranger"], "allowImages": [image]},
                },
            ]
        )
        wait_for(
            lambda: (peers := admin.call("GET", "/peers")) and len(peers) == 2
            and all(p["ready"] for p in peers),
            timeout=30,
            what="2 ready providers",
        )  # fmt: skip
        nodes = [a.node_id for a in agents]
        yield Pool(hub, admin, agents, nodes, image, app_key, tmp)
    finally:
        tear_down(hub, admin, agents, MARK)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            b.close()


@dataclass
class Page:
    context: Any
    page: Any
    requests: list[str]


@pytest.fixture
def web(browser: Any, pool: Pool) -> Iterator[Page]:
    """A fresh browser context (no cookies) whose every request is recorded."""
    context = browser.new_context(color_scheme="dark", viewport={"width": 1400, "height": 900})
    requests: list[str] = []
    context.on("request", lambda r: requests.append(r.url))
    page = context.new_page()
    try:
        yield Page(context, page, requests)
    finally:
        context.close()
        hub = urlsplit(pool.hub.url).netloc
        elsewhere = [u for u in requests if urlsplit(u).netloc != hub]
        assert not elsewhere, f"the page reached another host: {elsewhere}"


def gu_ui_link(pool: Pool) -> str:
    """What `gu ui` prints (the admin's context)."""
    out = subprocess.run(
        [*GU, "ui", "--no-open"], env=pool.hub.env, capture_output=True, text=True, timeout=30
    )
    assert out.returncode == 0, out.stderr
    link = out.stdout.strip()
    assert link.startswith(pool.hub.url + "/ui/login?code="), link
    return link


def log_in(web: Page, pool: Pool) -> str:
    link = gu_ui_link(pool)
    resp = web.page.goto(link)
    assert resp is not None and resp.status == 200
    assert urlsplit(web.page.url).path == "/ui/" and "code" not in web.page.url
    return link


def row(web: Page, node: str) -> Any:
    return web.page.locator(f'tr[data-node="{node}"]')


# --------------------------------------------------------------------- tests


def test_log_in_through_gu_ui_shows_both_providers_with_their_figures(
    web: Page, pool: Pool, tmp_path: Path
) -> None:
    log_in(web, pool)
    page = web.page
    for node in pool.nodes:
        r = row(web, node)
        r.wait_for(timeout=10_000)
        assert re.fullmatch(r"\d+ %", r.locator("td.cpu").inner_text().strip())
        assert re.fullmatch(r"\d+\.\d / \d+\.\d GiB", r.locator("td.mem").inner_text().strip())
        assert re.fullmatch(r"\d+\.\d / \d+\.\d GiB", r.locator("td.disk").inner_text().strip())
        assert "Ready" in r.inner_text() and "native" in r.inner_text()
    # the figures are the hub's: memory and disk totals as the agents reported them
    provider = pool.admin.get("Provider", pool.nodes[0])
    total = provider["status"]["inventory"]["memoryBytes"] / 2**30
    assert f"/ {total:.1f} GiB" in row(web, pool.nodes[0]).locator("td.mem").inner_text()
    shot = tmp_path / "providers.png"
    page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 10_000
    print(f"providers page screenshot: {shot}")

    cookies = {c["name"]: c for c in web.context.cookies()}
    session = cookies["gu_session"]
    assert session["httpOnly"] is True and session["sameSite"] == "Strict"
    assert page.evaluate("document.cookie") == ""  # HttpOnly: the page's scripts see none
    after_login = web.requests[
        web.requests.index(next(u for u in web.requests if "/ui/" in u and "code=" not in u)) :
    ]
    assert not [u for u in after_login if "code=" in u or "gu1." in u]


def test_a_new_session_shows_on_its_provider_row_without_a_reload(web: Page, pool: Pool) -> None:
    log_in(web, pool)
    page = web.page
    row(web, pool.nodes[0]).wait_for(timeout=10_000)
    page.evaluate("window.__notReloaded = true")
    name = "ui-live"
    applied = time.monotonic()
    pool.session(name, pool.nodes[0])
    task = row(web, pool.nodes[0]).locator(f'[data-session="{name}"]')
    task.wait_for(state="attached", timeout=5_000)
    took = time.monotonic() - applied
    assert row(web, pool.nodes[1]).locator(f'[data-session="{name}"]').count() == 0
    assert page.evaluate("window.__notReloaded") is True
    print(f"task on its row {took:.2f} s after the apply")


def test_suspending_from_the_sessions_page_shows_suspended(web: Page, pool: Pool) -> None:
    name = "ui-pause"
    pool.session(name, pool.nodes[1])
    wait_for(
        lambda: pool.admin.get("Session", name)["status"].get("phase") == "Running",
        timeout=30,
        what="the session running",
    )
    log_in(web, pool)
    page = web.page
    page.goto(pool.hub.url + "/ui/#/sessions")
    line = page.locator(f'tr[data-session="{name}"]')
    line.wait_for(timeout=10_000)
    line.locator('button[data-action="suspend"]').click()
    line.locator(".phase", has_text="Suspended").wait_for(timeout=20_000)
    assert pool.admin.get("Session", name)["spec"]["suspend"] is True
    line.locator('button[data-action="resume"]').click()
    line.locator(".phase", has_text="Running").wait_for(timeout=20_000)

    # the detail page: conditions, placements on their provider, the log's last lines
    page.goto(pool.hub.url + f"/ui/#/sessions/{name}")
    page.locator("pre.logs", has_text="tick on").wait_for(timeout=15_000)
    assert pool.nodes[1][:12] in page.locator("main").inner_text()


def test_the_provider_detail_shows_inf_facts_charts_and_placements(web: Page, pool: Pool) -> None:
    log_in(web, pool)
    node = pool.nodes[0]
    web.page.goto(pool.hub.url + f"/ui/#/providers/{node}")
    main = web.page.locator("main")
    main.locator("dl.facts").wait_for(timeout=10_000)
    os_view = pool.admin.call("GET", f"/peers/{node}/inf/os")
    text = main.inner_text()
    assert f"{os_view['name']} {os_view['version']}" in text
    assert main.locator("svg.chart").count() == 2


def test_a_wrong_or_reused_code_shows_a_clear_message_and_nothing_else(
    browser: Any, web: Page, pool: Pool
) -> None:
    link = log_in(web, pool)  # used once now
    for url in (link, pool.hub.url + "/ui/login?code=not-a-code"):
        other = browser.new_context()
        try:
            page = other.new_page()
            resp = page.goto(url)
            assert resp is not None and resp.status == 401
            body = page.locator("body").inner_text()
            assert "wrong, already used or expired" in body and "gu ui" in body
            assert page.locator("table").count() == 0
            assert not [c for c in other.cookies() if c["name"] == "gu_session"]
        finally:
            other.close()


def test_without_a_session_neither_the_ui_nor_its_data_answer(pool: Pool) -> None:
    with httpx.Client(base_url=pool.hub.url, timeout=10) as http:
        for path in ("/ui/", "/ui/app.js", "/ui/style.css"):
            resp = http.get(path)
            assert resp.status_code == 401, path
            assert "gu ui" in resp.text and "function" not in resp.text
        for path in ("/v1/ui/providers", f"/v1/ui/providers/{pool.nodes[0]}", "/v1/sessions"):
            assert http.get(path).status_code == 401, path
        assert http.get("/", follow_redirects=False).headers["location"] == "/ui/"
    # a forged cookie is none; a bearer token is no UI session (nor a UI session a token)
    for cookie in ("gu1.forged.mac", pool.admin.token()):
        with httpx.Client(base_url=pool.hub.url, timeout=10, cookies={"gu_session": cookie}) as c:
            assert c.get("/v1/ui/providers").status_code == 401
            assert c.get("/ui/").status_code == 401


def test_the_cookie_needs_the_csrf_token_to_change_anything(web: Page, pool: Pool) -> None:
    log_in(web, pool)
    name = "ui-csrf"
    pool.session(name, pool.nodes[0])
    url = pool.hub.url + f"/v1/sessions/{name}/suspend"
    no_csrf = web.context.request.put(url, data={"suspend": True})
    assert no_csrf.status == 403 and "CSRF" in no_csrf.text()
    csrf = web.page.evaluate("fetch('/v1/whoami').then(r => r.json()).then(j => j.csrf)")
    ok = web.context.request.put(url, data={"suspend": True}, headers={"X-CSRF-Token": csrf})
    assert ok.status == 200 and pool.admin.get("Session", name)["spec"]["suspend"] is True
    # renewing hands out a new cookie (and its CSRF token), still HttpOnly
    renewed = web.context.request.post(
        pool.hub.url + "/ui/session/renew", headers={"X-CSRF-Token": csrf}
    )
    assert renewed.status == 204 and renewed.headers["x-csrf-token"]


@contextlib.contextmanager
def app_session(pool: Pool, key: Any) -> Iterator[httpx.Client]:
    """An httpx client holding a UI session cookie of the app whose key is ``key``."""
    link = Client(pool.hub.url, key).call("POST", "/v1/ui/links")["url"]
    with httpx.Client(base_url=pool.hub.url, timeout=10) as http:
        resp = http.get(link.removeprefix(pool.hub.url), follow_redirects=False)
        assert resp.status_code == 303 and "gu_session" in http.cookies
        yield http


def test_an_app_sees_its_own_sessions_and_the_providers_it_may_use(pool: Pool) -> None:
    pool.session("ui-admins", pool.nodes[0], app="stranger")
    with app_session(pool, pool.app_key) as http:
        rows = http.get("/v1/ui/providers").json()["providers"]
        assert sorted(r["node"] for r in rows) == sorted(pool.nodes)  # its policy: any node
        names = {t["session"] for r in rows for t in r["tasks"]}
        assert "ui-admins" not in names  # another app's task is counted, never named
        sessions = [s["metadata"]["name"] for s in http.get("/v1/sessions").json()["items"]]
        assert "ui-admins" not in sessions and set(sessions) <= set(pool.sessions)
    stranger = generate_key()
    pool.admin.apply([app_object("nopolicy", stranger)])
    with app_session(pool, stranger) as http:
        assert http.get("/v1/ui/providers").json()["providers"] == []  # no policy, no providers
        assert http.get(f"/v1/ui/providers/{pool.nodes[0]}").status_code == 404


# ------------------------------------------------------------------ metrics


def scrape(pool: Pool, token: str) -> dict[str, Any]:
    resp = httpx.get(
        pool.hub.url + "/metrics", headers={"Authorization": f"Bearer {token}"}, timeout=10
    )
    assert resp.status_code == 200, resp.text
    return {m.name: m for m in text_string_to_metric_families(resp.text)}


def test_metrics_parse_and_the_placement_gauges_agree_with_the_store(pool: Pool) -> None:
    pool.session("ui-metrics", pool.nodes[1])
    wait_for(
        lambda: pool.admin.get("Session", "ui-metrics")["status"].get("phase") == "Running",
        timeout=30,
        what="ui-metrics running",
    )

    def agree() -> bool:
        families = scrape(pool, pool.admin.token())
        gauge: dict[tuple[str, str], float] = {}
        for s in families["gu_placements"].samples:
            gauge[(s.labels["state"], s.labels["runtime"])] = s.value
        listed = subprocess.run(
            [*GU, "get", "placements", "-o", "json"],
            env=pool.hub.env, capture_output=True, text=True, timeout=30,
        )  # fmt: skip
        assert listed.returncode == 0, listed.stderr
        stored: dict[tuple[str, str], float] = {}
        for p in json.loads(listed.stdout)["items"]:
            key = (p.get("status", {}).get("state", "Pending"), p["spec"]["workload"]["runtime"])
            stored[key] = stored.get(key, 0) + 1
        return gauge == stored

    wait_for(agree, timeout=10, what="placement gauges equal to `gu get placements`")
    families = scrape(pool, pool.admin.token())
    ready = {s.labels["ready"]: s.value for s in families["gu_providers"].samples}
    assert ready == {"true": 2.0, "false": 0.0}
    assert any(s.value > 0 for s in families["gu_heartbeats"].samples)
    assert any(s.value > 0 for s in families["gu_image_bytes_served"].samples)
    for name in (
        "gu_reconcile_duration_seconds",
        "gu_api_request_duration_seconds",
        "gu_store_commit_duration_seconds",
        "gu_reconcile_queue_depth",
        "gu_reconciles",
    ):
        assert name in families, name
    assert [s.value for s in families["gu_reconcile_lost_commits"].samples] == [0.0]
    assert len(families["gu_reconcile_rolled_back_groups"].samples) == 1  # (a failed pass: 1)
    assert [s.value >= 0 for s in families["gu_reconcile_feed_behind"].samples] == [True]
    routes = {s.labels.get("route") for s in families["gu_api_request_duration_seconds"].samples}
    assert "/v1/agents/heartbeat" in routes and "/v1/{kind}/{name}" in routes


def test_metrics_need_a_token_and_the_scrape_token_reads_nothing_else(pool: Pool) -> None:
    assert httpx.get(pool.hub.url + "/metrics", timeout=10).status_code == 401
    out = pool.tmp / "metrics.token"
    done = subprocess.run(
        [*GU, "hub", "metrics-token", "-o", str(out)],
        env=pool.hub.env, capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert out.stat().st_mode & 0o777 == 0o600
    token = out.read_text().strip()
    assert "gu_providers" in scrape(pool, token)
    other = httpx.get(
        pool.hub.url + "/v1/sessions", headers={"Authorization": f"Bearer {token}"}, timeout=10
    )
    assert other.status_code == 403
    app = httpx.get(
        pool.hub.url + "/metrics",
        headers={"Authorization": f"Bearer {Client(pool.hub.url, pool.app_key).token()}"},
        timeout=10,
    )
    assert app.status_code == 403
    newer = pool.admin.call("POST", "/v1/metrics/token")["token"]
    stale = httpx.get(
        pool.hub.url + "/metrics", headers={"Authorization": f"Bearer {token}"}, timeout=10
    )
    assert stale.status_code == 401 and "gu_providers" in scrape(pool, newer)
