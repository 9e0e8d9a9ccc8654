"""Who may read and who may write: tokens, signed session cookies and CSRF tokens.

Writes need the write token (``STATESTREAM_WEB_TOKEN`` or ``create_app(token=...)``), shown
either as ``Authorization: Bearer <token>`` or through the session cookie that ``/login`` sets,
or a ``token`` callable of the user's that says yes for the request. Reads need the write token,
the read token, or ``open_reads=True``.

Every write is also checked for CSRF (double submit): the form (or the ``X-CSRF-Token`` header)
must carry the value of the ``statestream_csrf`` cookie, a random value set as ``HttpOnly`` and
``SameSite=Strict``; a request whose ``Origin`` is not this server's, or that a browser marks as
``Sec-Fetch-Site: cross-site``, is refused as well.
"""

from __future__ import annotations

import hashlib
import hmac
import inspect
import os
import secrets
import time
from collections.abc import Awaitable, Callable
from typing import TypeAlias

from starlette.requests import Request

from ..errors import ConfigurationError

__all__ = [
    "CSRF_COOKIE",
    "READ",
    "SESSION_COOKIE",
    "WRITE",
    "Auth",
    "TokenCheck",
    "csrf_ok",
    "new_csrf",
]

#: A callable that decides for a request: sync or async, returning True to let it through.
TokenCheck: TypeAlias = Callable[[Request], bool | Awaitable[bool]]
TokenSpec: TypeAlias = str | TokenCheck | None

NONE, READ, WRITE = 0, 1, 2
SESSION_COOKIE = "statestream_session"
CSRF_COOKIE = "statestream_csrf"
SESSION_SECONDS = 12 * 3600
_MAX_TOKEN = 512


def _resolve(value: TokenSpec, env: str, what: str) -> str | TokenCheck | None:
    if value is None:
        value = os.environ.get(env) or None
    if isinstance(value, str):
        if len(value) < 8:
            raise ConfigurationError(
                f"the web UI's {what} must be at least 8 characters long (set {env} to a long "
                "random value, e.g. the output of `python -c 'import secrets; "
                "print(secrets.token_urlsafe())'`)"
            )
        if len(value) > _MAX_TOKEN:
            raise ConfigurationError(f"the web UI's {what} is longer than {_MAX_TOKEN} characters")
        return value
    if value is not None and not callable(value):
        raise ConfigurationError(
            f"{what} must be a string, a callable taking the request, or None; got {value!r}"
        )
    return value


class Auth:
    """The access level of a request: 0 (nothing), READ or WRITE."""

    def __init__(
        self,
        token: TokenSpec,
        read_token: TokenSpec,
        *,
        open_reads: bool,
        secret: bytes | None = None,
    ) -> None:
        self.token = _resolve(token, "STATESTREAM_WEB_TOKEN", "token")
        self.read_token = _resolve(read_token, "STATESTREAM_WEB_READ_TOKEN", "read token")
        self.open_reads = open_reads
        if self.token is None and self.read_token is None and not open_reads:
            raise ConfigurationError(
                "the web UI has no token: set STATESTREAM_WEB_TOKEN (or pass token=) to allow "
                "reads and writes, or pass open_reads=True (`statestream web --open-reads`) for "
                "a read-only UI that anyone who can reach it may see"
            )
        self._secret = secret if secret is not None else secrets.token_bytes(32)

    @property
    def writes_enabled(self) -> bool:
        return self.token is not None

    @property
    def login_possible(self) -> bool:
        """A token that the login form can check (callables decide per request instead)."""
        return isinstance(self.token, str) or isinstance(self.read_token, str)

    # ------------------------------------------------------------------ sessions

    def _key(self, role: str) -> bytes:
        token = self.token if role == "w" else self.read_token
        material = token if isinstance(token, str) else ""
        return hmac.new(self._secret, f"{role}:{material}".encode(), hashlib.sha256).digest()

    def _sign(self, role: str, body: str) -> str:
        return hmac.new(self._key(role), body.encode(), hashlib.sha256).hexdigest()

    def session_for(self, token: str) -> str | None:
        """The session cookie value for a login with ``token``, or None when it is wrong."""
        if not isinstance(token, str) or not token or len(token) > _MAX_TOKEN:
            return None
        role = ""
        if isinstance(self.token, str) and hmac.compare_digest(token, self.token):
            role = "w"
        elif isinstance(self.read_token, str) and hmac.compare_digest(token, self.read_token):
            role = "r"
        if not role:
            return None
        body = f"{role}.{int(time.time())}.{secrets.token_urlsafe(18)}"
        return f"{body}.{self._sign(role, body)}"

    def _session_level(self, value: str | None) -> int:
        if not value or len(value) > 200:
            return NONE
        parts = value.split(".")
        if len(parts) != 4 or parts[0] not in ("r", "w") or not parts[1].isdigit():
            return NONE
        body = ".".join(parts[:3])
        if not hmac.compare_digest(parts[3], self._sign(parts[0], body)):
            return NONE
        if time.time() - int(parts[1]) > SESSION_SECONDS:
            return NONE
        if parts[0] == "w":
            return WRITE if isinstance(self.token, str) else NONE
        return READ if isinstance(self.read_token, str) else NONE

    # ------------------------------------------------------------------ checks

    @staticmethod
    async def _ask(check: TokenCheck, request: Request) -> bool:
        answer = check(request)
        if inspect.isawaitable(answer):
            answer = await answer
        return answer is True

    @staticmethod
    def _bearer(request: Request) -> str | None:
        header = request.headers.get("authorization", "")
        scheme, _, value = header.partition(" ")
        if scheme.lower() != "bearer" or not value or len(value) > _MAX_TOKEN:
            return None
        return value.strip()

    async def level(self, request: Request) -> int:
        """What the request may do."""
        bearer = self._bearer(request)
        session = self._session_level(request.cookies.get(SESSION_COOKIE))
        if callable(self.token):
            if await self._ask(self.token, request):
                return WRITE
        elif isinstance(self.token, str):
            by_bearer = bearer is not None and hmac.compare_digest(bearer, self.token)
            if session == WRITE or by_bearer:
                return WRITE
        if self.open_reads or session == READ:
            return READ
        if callable(self.read_token):
            if await self._ask(self.read_token, request):
                return READ
        elif (
            isinstance(self.read_token, str)
            and bearer is not None
            and hmac.compare_digest(bearer, self.read_token)
        ):
            return READ
        return NONE


def new_csrf() -> str:
    return secrets.token_urlsafe(32)


def valid_csrf_cookie(value: str | None) -> bool:
    return (
        value is not None
        and 40 <= len(value) <= 64
        and value.replace("-", "").replace("_", "").isalnum()
    )


def csrf_ok(request: Request, submitted: str | None) -> str:
    """``""`` when the write passes the CSRF checks, else why it does not."""
    site = request.headers.get("sec-fetch-site")
    if site is not None and site not in ("same-origin", "none"):
        return f"the request comes from another site (Sec-Fetch-Site: {site[:40]})"
    origin = request.headers.get("origin")
    if origin is not None and origin != "null":
        own = f"{request.url.scheme}://{request.headers.get('host', '')}"
        if origin != own:
            return "the request's Origin is not this server"
    elif origin == "null":
        return "the request's Origin is null"
    cookie = request.cookies.get(CSRF_COOKIE)
    if not valid_csrf_cookie(cookie):
        return "no CSRF cookie: load the page again and resubmit"
    if not submitted or not hmac.compare_digest(submitted, cookie or ""):
        return "the form's CSRF token is missing or does not match: load the page again"
    return ""
