"""The web UI: log-in by one-time link, the pages, and the data only they need.

Log-in never sends a private key to the hub. ``gu ui`` (logged in with its
key, as any CLI call) asks ``POST /v1/ui/links`` for a one-time code and
prints ``<hub>/ui/login?code=…``. Opening it exchanges the code (once, within
60 s) for a session cookie: a UI-only token (``Authenticator.make_token(use=
"ui")``, no bearer token), HttpOnly, SameSite=Strict, ``SESSION_SECONDS`` long,
renewed by the page while it is open (``POST /ui/session/renew``), and the
browser is sent on to ``/ui/`` so no code stays in the address bar. Mutating
requests carry the session's CSRF token (``X-CSRF-Token``, from
``/v1/whoami``; ``controller.api.common.principal`` checks it).

The pages are plain files shipped in the package (``controller/ui/static``):
one HTML page, ES modules and a style sheet, no build step and nothing from any
other host (the Content-Security-Policy says ``'self'`` only). They answer 401
without a session, like every API route; the page reads the ordinary API
(``/v1/sessions``, ``/peers/…``, …) with its cookie, and two routes here made
for it: ``/v1/ui/providers`` (every provider with live usage, tasks and free
capacity, from the pool view in memory) and ``/v1/ui/providers/{node}``.
"""

from __future__ import annotations

import html
from importlib import resources
from typing import Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from controller import authz
from controller.api.common import UI_COOKIE, ApiProblem, Caller
from controller.api.deps import ApiDeps, Deps, deps_of
from controller.auth import AuthError, Principal
from controller.poolview import PAGE_ROWS, SORT_KEYS, TableQuery

router = APIRouter(tags=["ui"])

SESSION_SECONDS = 600
"""A UI session cookie's life; the page renews it every few minutes while open."""

STATIC = resources.files("controller.ui") / "static"
ASSETS = {
    "index.html": "text/html; charset=utf-8",
    "app.js": "text/javascript; charset=utf-8",
    "style.css": "text/css; charset=utf-8",
    "favicon.svg": "image/svg+xml",
}

SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
        "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
    ),
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


def _ui_principal(request: Request) -> Principal | None:
    """The UI session's principal, or None (no cookie, or a bad or expired one)."""
    cookie = request.cookies.get(UI_COOKIE)
    if not cookie:
        return None
    try:
        return deps_of(request).auth.verify_token(cookie, use="ui")
    except AuthError:
        return None


def _page(status: int, title: str, message: str) -> HTMLResponse:
    """A small self-contained page with a message (log-in errors, no session)."""
    body = (
        "<!doctype html><html lang=en><head><meta charset=utf-8>"
        '<meta name=viewport content="width=device-width, initial-scale=1">'
        f"<title>gu: {html.escape(title)}</title></head><body>"
        f"<main><h1>{html.escape(title)}</h1><p role=alert>{html.escape(message)}</p>"
        "</main></body></html>"
    )
    return HTMLResponse(body, status, headers=SECURITY_HEADERS)


def _set_session(response: Response, d: ApiDeps, who: Principal) -> str:
    cookie = d.auth.make_token(who, min(SESSION_SECONDS, d.auth.token_ttl), use="ui")
    response.set_cookie(
        UI_COOKIE,
        cookie,
        max_age=SESSION_SECONDS,
        path="/",
        httponly=True,
        samesite="strict",
        secure=False,  # the hub serves plain HTTP on a home network; behind TLS, set by it
    )
    return cookie


# ------------------------------------------------------------------ log-in


@router.post("/v1/ui/links")
def new_link(request: Request, who: Caller, d: Deps) -> dict[str, Any]:
    """A one-time log-in link for the web UI (``gu ui``): works once, within 60 s."""
    authz.check(who, "ui")
    code = d.links.create(who)
    base = str(request.base_url).rstrip("/")
    return {"url": f"{base}/ui/login?code={code}", "expiresIn": int(d.links.ttl)}


@router.get("/ui/login", include_in_schema=False)
def login(request: Request, code: str = Query(default="", max_length=200)) -> Response:
    """Exchange a one-time code for a session cookie, then on to ``/ui/`` (no code left in
    the address bar); a wrong, used or expired code gets a page that says so, and nothing
    else."""
    d = deps_of(request)
    try:
        who = d.links.redeem(code)
    except AuthError as exc:
        return _page(401, "Log-in failed", str(exc))
    response = RedirectResponse("/ui/", status_code=303, headers=SECURITY_HEADERS)
    _set_session(response, d, who)
    return response


@router.post("/ui/session/renew", include_in_schema=False)
def renew(request: Request, who: Caller, d: Deps) -> Response:
    """A fresh cookie for the session the page holds (the page calls this every few
    minutes; a session is never renewed past a revoked key: ``who`` was checked)."""
    if getattr(request.state, "ui_session", None) is None:
        raise ApiProblem(400, "only a UI session is renewed here; bearer tokens are not")
    response = Response(status_code=204, headers=SECURITY_HEADERS)
    cookie = _set_session(response, d, who)
    response.headers["X-CSRF-Token"] = d.auth.csrf_of(cookie)
    return response


@router.post("/ui/logout", include_in_schema=False)
def logout(request: Request) -> Response:
    """End the UI session (the cookie is cleared; it dies anyway within its life)."""
    response = Response(status_code=204, headers=SECURITY_HEADERS)
    response.delete_cookie(UI_COOKIE, path="/", httponly=True, samesite="strict")
    return response


# ------------------------------------------------------------------- pages


@router.get("/", include_in_schema=False)
def root() -> RedirectResponse:
    """The hub's root is its web UI."""
    return RedirectResponse("/ui/", status_code=307)


@router.get("/ui", include_in_schema=False)
def ui_bare() -> RedirectResponse:
    return RedirectResponse("/ui/", status_code=307)


@router.get("/ui/", include_in_schema=False)
def index(request: Request) -> Response:
    return asset(request, "index.html")


@router.get("/ui/{name}", include_in_schema=False)
def asset(request: Request, name: str) -> Response:
    """A file of the UI, to a browser with a session; 401 without one."""
    if _ui_principal(request) is None:
        return _page(
            401,
            "Not logged in",
            "This page needs a UI session: run `gu ui` and open the link it prints.",
        )
    media = ASSETS.get(name)
    if media is None:
        return _page(404, "Not found", f"the UI has no file {name!r}")
    return Response((STATIC / name).read_bytes(), media_type=media, headers=SECURITY_HEADERS)


# --------------------------------------------------------------------- data


@router.get("/v1/ui/providers")
def ui_providers(
    who: Caller,
    d: Deps,
    sort: str = Query(default="name", max_length=10),
    desc: bool = Query(default=False),
    label: str = Query(default="", max_length=500, description="k=v,k2: labels to match"),
    minCpu: float = Query(default=0.0, ge=0, description="free cores at least"),
    minMemGiB: float = Query(default=0.0, ge=0, description="free memory at least"),
    page: int = Query(default=0, ge=0, le=100_000),
    size: int = Query(default=PAGE_ROWS, ge=1, le=1000),
) -> Response:
    """One page of the providers the caller may use, filtered and sorted, as the providers
    page shows them: live usage, a CPU sparkline, running tasks, free capacity, runtimes,
    readiness; with the totals (``total``, ``ready``, ``matched``, ``pages``)."""
    authz.check(who, "ui")
    if sort not in SORT_KEYS:
        raise ApiProblem(422, f"sort by one of {', '.join(SORT_KEYS)}, not {sort!r}")
    query = TableQuery(
        sort=sort,
        descending=desc,
        labels=TableQuery.parse_labels(label),
        min_cpu=minCpu,
        min_memory_mib=minMemGiB * 1024,
        page=page,
        size=size,
    )
    return Response(d.pool.provider_table(who, query), media_type="application/json")


@router.get("/v1/ui/providers/{nodeId}")
def ui_provider(nodeId: str, who: Caller, d: Deps) -> dict[str, Any]:
    """One provider with its usage history (kept in memory, 10 minutes) and placements."""
    authz.check(who, "ui")
    row = d.pool.provider_detail(who, nodeId)
    if row is None:
        raise ApiProblem(404, f"no provider with node id {nodeId!r} that you may use")
    return row


__all__ = ["SESSION_SECONDS", "router"]
