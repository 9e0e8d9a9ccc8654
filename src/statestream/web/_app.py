"""The Starlette application: routes, access checks, CSRF and security headers."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Sequence
from pathlib import Path
from urllib.parse import parse_qsl

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .._workflow import Workflow
from ..errors import (
    ConfigurationError,
    InvalidInput,
    InvalidTransition,
    RecordNotFound,
    VersionConflict,
)
from ._auth import (
    CSRF_COOKIE,
    READ,
    SESSION_COOKIE,
    SESSION_SECONDS,
    WRITE,
    Auth,
    TokenSpec,
    csrf_ok,
    new_csrf,
    valid_csrf_cookie,
)
from ._data import (
    MAX_QUERY,
    AnyWorkflow,
    Counts,
    find_run,
    graph_source,
    list_runs,
    parse_query,
    pick_workflow,
    run_details,
    run_json,
)
from ._html import Page

__all__ = ["create_app"]

STATIC = Path(__file__).parent / "static"
MAX_BODY = 16 * 1024
MAX_REASON = 1000

CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data:; font-src 'self' data:; connect-src 'self'; form-action 'self'; "
    "base-uri 'none'; frame-ancestors 'none'"
)
SECURITY_HEADERS = [
    (b"content-security-policy", CSP.encode()),
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"same-origin"),
    (b"cross-origin-opener-policy", b"same-origin"),
    (b"cross-origin-resource-policy", b"same-origin"),
]
_NOTICES = {
    "pause": "The run is paused.",
    "resume": "The run is resumed.",
    "cancel": "The run is cancelled.",
    "delete": "Deletion of the run's data is requested.",
    "retry": "A retry of the parked event is requested.",
}


class _Headers:
    """ASGI middleware: security headers on every response; refuses overlong query strings."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        static = "/static/" in scope.get("path", "")

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                names = {name for name, _ in headers}
                headers += [(k, v) for k, v in SECURITY_HEADERS if k not in names]
                if not static and b"cache-control" not in names:
                    headers.append((b"cache-control", b"no-store"))
                message = {**message, "headers": headers}
            await send(message)

        if len(scope.get("query_string", b"")) > MAX_QUERY:
            response = Response(
                f"the query string is longer than {MAX_QUERY} bytes",
                status_code=414,
                media_type="text/plain",
            )
            await response(scope, receive, send_with_headers)
            return
        await self.app(scope, receive, send_with_headers)


class _Refused(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


Handler = Callable[[Request], Awaitable[Response]]


class _UI:
    def __init__(self, workflows: Sequence[AnyWorkflow], auth: Auth, title: str) -> None:
        self.workflows: dict[str, AnyWorkflow] = {}
        for wf in workflows:
            if not isinstance(wf, Workflow):
                raise ConfigurationError(f"create_app takes Workflows, got {wf!r}")
            if wf.name in self.workflows and self.workflows[wf.name] is not wf:
                raise ConfigurationError(f"two workflows are named {wf.name!r}")
            self.workflows[wf.name] = wf
        if not self.workflows:
            raise ConfigurationError("create_app needs at least one Workflow")
        self.auth = auth
        self.title = title
        self.counts = Counts()

    # ------------------------------------------------------------------ plumbing

    @staticmethod
    def base(request: Request) -> str:
        return str(request.scope.get("root_path", "")).rstrip("/")

    def page(self, request: Request, level: int) -> Page:
        csrf = request.cookies.get(CSRF_COOKIE)
        if not valid_csrf_cookie(csrf):
            csrf = new_csrf()
        request.state.csrf = csrf
        return Page(
            self.base(request),
            csrf or "",
            level=level,
            workflows=list(self.workflows),
            title=self.title,
            login_possible=self.auth.login_possible,
        )

    def _cookie(self, request: Request, response: Response, name: str, value: str) -> None:
        response.set_cookie(
            name,
            value,
            max_age=SESSION_SECONDS,
            path=self.base(request) or "/",
            secure=request.url.scheme == "https",
            httponly=True,
            samesite="strict",
        )

    def html(self, request: Request, text: str, status: int = 200) -> HTMLResponse:
        response = HTMLResponse(text, status_code=status)
        csrf = getattr(request.state, "csrf", None)
        if csrf and csrf != request.cookies.get(CSRF_COOKIE):
            self._cookie(request, response, CSRF_COOKIE, csrf)
        return response

    @staticmethod
    def params(request: Request) -> list[tuple[str, str]]:
        try:
            return parse_qsl(
                request.scope.get("query_string", b"").decode("utf-8", "strict"),
                keep_blank_values=True,
                max_num_fields=32,
                errors="strict",
            )
        except (UnicodeDecodeError, ValueError) as exc:
            raise InvalidInput(f"the query string cannot be read ({exc})") from None

    @staticmethod
    async def form(request: Request) -> dict[str, str]:
        kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
        declared = request.headers.get("content-length", "0")
        if not kind and declared == "0":
            return {}  # an empty post: no fields (so no CSRF token either)
        if kind != "application/x-www-form-urlencoded":
            raise _Refused(415, "send the form as application/x-www-form-urlencoded")
        if not declared.isdigit() or int(declared) > MAX_BODY:
            raise _Refused(413, f"the form is larger than {MAX_BODY} bytes")
        body = b""
        async for chunk in request.stream():
            body += chunk
            if len(body) > MAX_BODY:
                raise _Refused(413, f"the form is larger than {MAX_BODY} bytes")
        try:
            pairs = parse_qsl(
                body.decode("utf-8", "strict"),
                keep_blank_values=True,
                max_num_fields=16,
                errors="strict",
            )
        except (UnicodeDecodeError, ValueError) as exc:
            raise InvalidInput(f"the form cannot be read ({exc})") from None
        out: dict[str, str] = {}
        for key, value in pairs:
            if key in out:
                raise InvalidInput(f"form field {key[:40]!r} is given twice")
            out[key] = value
        return out

    async def need(self, request: Request, level: int) -> int:
        have = await self.auth.level(request)
        if have < level:
            if level == WRITE and not self.auth.writes_enabled:
                raise _Refused(403, "writes are disabled: the server has no write token")
            if have >= READ:
                raise _Refused(403, "this needs the write token: sign in as an operator")
            raise _Refused(401, "sign in with a token to see this")
        return have

    async def write_checks(self, request: Request) -> dict[str, str]:
        await self.need(request, WRITE)
        form = await self.form(request)
        why = csrf_ok(request, form.get("csrf") or request.headers.get("x-csrf-token"))
        if why:
            raise _Refused(403, f"refused (CSRF): {why}")
        return form

    def wrap(self, handler: Handler, *, api: bool = False) -> Handler:
        async def endpoint(request: Request) -> Response:
            try:
                return await handler(request)
            except _Refused as exc:
                return self.fail(request, exc.status, exc.message, api)
            except RecordNotFound as exc:
                return self.fail(request, 404, str(exc) or "not found", api)
            except (InvalidTransition, VersionConflict) as exc:
                return self.fail(request, 409, str(exc), api)
            except InvalidInput as exc:
                return self.fail(request, 400, str(exc), api)

        return endpoint

    def fail(self, request: Request, status: int, message: str, api: bool) -> Response:
        if api:
            return JSONResponse({"error": message}, status_code=status)
        if status == 401 and request.method == "GET" and self.auth.login_possible:
            page = self.page(request, 0)
            return self.html(request, page.login(message, str(request.url.path)), 401)
        return self.html(request, self.page(request, 0).error(status, message), status)

    # ------------------------------------------------------------------ reads

    async def runs(self, request: Request) -> Response:
        level = await self.need(request, READ)
        query = parse_query(self.workflows, self.params(request))
        listing = await list_runs(query)
        return self.html(request, self.page(request, level).runs(query, listing))

    async def api_runs(self, request: Request) -> Response:
        await self.need(request, READ)
        query = parse_query(self.workflows, self.params(request))
        listing = await list_runs(query)
        wf = query.workflow
        return JSONResponse(
            {
                "runs": [run_json(wf, r) for r in listing.records],
                "older": listing.older,
                "partial": listing.partial,
                "scanned": listing.scanned,
            }
        )

    async def run(self, request: Request) -> Response:
        level = await self.need(request, READ)
        wf, record = await find_run(self.workflows, request.path_params["run_id"])
        notice = dict(self.params(request)).get("done", "")
        details = await run_details(wf, record)
        page = self.page(request, level)
        return self.html(request, page.run(wf, details, _NOTICES.get(notice, "")))

    async def api_run(self, request: Request) -> Response:
        await self.need(request, READ)
        wf, record = await find_run(self.workflows, request.path_params["run_id"])
        return JSONResponse(run_json(wf, record))

    async def confirm(self, request: Request) -> Response:
        level = await self.need(request, READ)
        action = request.path_params["action"]
        if action not in _NOTICES or action == "retry":
            raise RecordNotFound(f"no action {action[:40]!r}")
        wf, record = await find_run(self.workflows, request.path_params["run_id"])
        page = self.page(request, level)
        return self.html(request, page.confirm(wf, record.run_id, record.foreign_id, action))

    async def graph(self, request: Request) -> Response:
        level = await self.need(request, READ)
        wf = pick_workflow(self.workflows, dict(self.params(request)).get("workflow"))
        counts = await self.counts.get(wf)
        exact = self.counts.exact.get(wf.name, False)
        page = self.page(request, level)
        return self.html(request, page.graph(wf, graph_source(wf, counts, exact), counts, exact))

    async def api_graph(self, request: Request) -> Response:
        await self.need(request, READ)
        wf = pick_workflow(self.workflows, dict(self.params(request)).get("workflow"))
        counts = await self.counts.get(wf)
        exact = self.counts.exact.get(wf.name, False)
        return JSONResponse(
            {
                "mermaid": graph_source(wf, counts, exact),
                "counts": {str(k): v for k, v in counts.items()},
                "exact": exact,
            }
        )

    async def parked(self, request: Request) -> Response:
        level = await self.need(request, READ)
        params = dict(self.params(request))
        wf = pick_workflow(self.workflows, params.get("workflow"))
        parked = await wf.parked(limit=500)
        page = self.page(request, level)
        notice = _NOTICES.get(params.get("done", ""), "")
        return self.html(request, page.parked(wf, parked, wf.process_info(), notice))

    # ------------------------------------------------------------------ writes

    async def control(self, request: Request) -> Response:
        action = request.path_params["action"]
        if action not in ("pause", "resume", "cancel", "delete"):
            raise RecordNotFound(f"no action {action[:40]!r}")
        form = await self.write_checks(request)
        reason = form.get("reason", "")
        if len(reason) > MAX_REASON:
            raise InvalidInput(f"the reason is longer than {MAX_REASON} characters")
        wf, record = await find_run(self.workflows, request.path_params["run_id"])
        run_id = record.run_id
        if action == "pause":
            await wf.pause(run_id, reason)
        elif action == "resume":
            await wf.resume(run_id)
        elif action == "cancel":
            await wf.cancel(run_id, reason)
        else:
            await wf.delete_data(run_id, reason)
        url = f"{self.base(request)}/runs/{run_id}?done={action}"
        return RedirectResponse(url, status_code=303)

    async def retry(self, request: Request) -> Response:
        form = await self.write_checks(request)
        wf = pick_workflow(self.workflows, form.get("workflow"))
        parked_id = form.get("parked_id", "")
        if not parked_id or len(parked_id) > 1000 or not parked_id.isprintable():
            raise InvalidInput("parked_id must be the ID of a parked event")
        await wf.retry_parked(parked_id)
        url = f"{self.base(request)}/parked?workflow={wf.name}&done=retry"
        return RedirectResponse(url, status_code=303)

    async def login_page(self, request: Request) -> Response:
        page = self.page(request, await self.auth.level(request))
        return self.html(request, page.login())

    async def login(self, request: Request) -> Response:
        form = await self.form(request)
        why = csrf_ok(request, form.get("csrf"))
        if why:
            raise _Refused(403, f"refused (CSRF): {why}")
        session = self.auth.session_for(form.get("token", ""))
        if session is None:
            page = self.page(request, 0)
            return self.html(request, page.login("That token is not right."), 401)
        next_url = form.get("next", "")
        base = self.base(request)
        if not next_url.startswith(base + "/") or next_url.startswith("//") or "\\" in next_url:
            next_url = base + "/"
        response = RedirectResponse(next_url, status_code=303)
        self._cookie(request, response, SESSION_COOKIE, session)
        return response

    async def logout(self, request: Request) -> Response:
        form = await self.form(request)
        why = csrf_ok(request, form.get("csrf"))
        if why:
            raise _Refused(403, f"refused (CSRF): {why}")
        response = RedirectResponse(self.base(request) + "/", status_code=303)
        response.delete_cookie(SESSION_COOKIE, path=self.base(request) or "/")
        return response

    def routes(self) -> list[Route | Mount]:
        w = self.wrap
        return [
            Route("/", w(self.runs)),
            Route("/runs/{run_id}", w(self.run)),
            Route("/runs/{run_id}/confirm/{action}", w(self.confirm)),
            Route("/runs/{run_id}/{action}", w(self.control), methods=["POST"]),
            Route("/graph", w(self.graph)),
            Route("/parked", w(self.parked)),
            Route("/parked/retry", w(self.retry), methods=["POST"]),
            Route("/login", w(self.login_page)),
            Route("/login", w(self.login), methods=["POST"]),
            Route("/logout", w(self.logout), methods=["POST"]),
            Route("/api/runs", w(self.api_runs, api=True)),
            Route("/api/runs/{run_id}", w(self.api_run, api=True)),
            Route("/api/graph", w(self.api_graph, api=True)),
            Mount("/static", StaticFiles(directory=STATIC), name="static"),
        ]


def create_app(
    workflows: AnyWorkflow | Iterable[AnyWorkflow],
    *,
    token: TokenSpec = None,
    read_token: TokenSpec = None,
    open_reads: bool = False,
    secret: bytes | None = None,
    title: str = "statestream",
) -> Starlette:
    """The web UI as an ASGI application (Starlette) over the workflows' record stores.

    Mount it in your own app (``app.mount("/workflows", create_app(wf))``) or serve it with
    ``statestream web TARGET``. It does not start the workflows: a worker runs them.

    Args:
        workflows: a Workflow or several (with distinct names).
        token: what writes (pause, resume, cancel, delete data, retry parked) need: a string
            (default: the environment variable ``STATESTREAM_WEB_TOKEN``), given at ``/login``
            or as ``Authorization: Bearer``; or a callable ``check(request) -> bool`` (sync or
            async) that decides with your own authentication. It also grants reads.
        read_token: the same for reads only (default ``STATESTREAM_WEB_READ_TOKEN``).
        open_reads: let anyone who can reach the app read (writes still need ``token``).
        secret: the key that signs session cookies (default: random per process, so sessions
            end with the process; give the same bytes to several processes behind one name).
        title: shown in the header.

    Raises:
        ConfigurationError: no workflow, two with one name, a token shorter than 8
            characters, or no token at all and ``open_reads`` not set.
    """
    wfs = [workflows] if isinstance(workflows, Workflow) else list(workflows)
    auth = Auth(token, read_token, open_reads=open_reads, secret=secret)
    ui = _UI(wfs, auth, title)

    async def not_found(request: Request, exc: Exception) -> Response:
        status = exc.status_code if isinstance(exc, HTTPException) else 500
        message = exc.detail if isinstance(exc, HTTPException) else "server error"
        api = "/api/" in request.url.path
        return ui.fail(request, status, str(message), api)

    app = Starlette(routes=ui.routes(), exception_handlers={HTTPException: not_found})
    app.add_middleware(_Headers)
    app.state.statestream_ui = ui
    return app
