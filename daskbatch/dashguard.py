"""The dashboard of a cluster daskbatch starts, for this user only.

distributed's dashboard is plain HTTP on ``127.0.0.1``: on a login node every user of
the machine reaches it, and its pages show the run's worker logs, call stacks, task
names and file paths. :func:`guard` puts a token in front of every page (Jupyter's way):
the link the run prints carries it (``/status?token=...``); the first request with it
is answered by a cookie and a redirect to the same page without it, and later requests
(the page's scripts, its websocket) carry the cookie. A request with neither gets
``403 Forbidden``; ``/health`` stays open (it says ``ok`` and nothing else).

The token is made for one cluster and compared in constant time. The guard is put in
place as the scheduler is made (:func:`scheduler_extensions`: a scheduler extension,
which distributed makes in the scheduler's constructor, after its HTTP server starts
listening and before its event loop can answer a request), so no page, and no
websocket that would stay open, is served before it.
"""

from __future__ import annotations

import hmac
import secrets
import weakref
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit

from tornado import httputil

__all__ = ["guard", "link", "scheduler_extensions"]

#: the token of each guarded HTTP server
_TOKENS: weakref.WeakKeyDictionary[Any, str] = weakref.WeakKeyDictionary()

_OPEN = frozenset({"/health"})
_DENIED = (
    b"daskbatch: this Dask dashboard needs the link its run printed (it carries the run's "
    b"token): open that link, or see the run's output for it.\n"
)


def _cookie_name(port: int) -> str:
    return f"daskbatch-dashboard-{port}"


def guard(scheduler: Any) -> str | None:
    """Put a new token in front of every page of ``scheduler``'s dashboard (a
    ``distributed.Scheduler`` in this process); return it, or None when the scheduler
    serves no dashboard."""
    server = getattr(scheduler, "http_server", None)
    app = getattr(server, "request_callback", None)
    if not isinstance(app, httputil.HTTPServerConnectionDelegate):
        return None
    if server in _TOKENS:
        return _TOKENS[server]
    token = secrets.token_urlsafe(24)
    server.request_callback = _Gate(app, token, _cookie_name(server.port))
    _TOKENS[server] = token
    return token


def scheduler_extensions() -> dict[str, Any]:
    """distributed's scheduler extensions (as a scheduler made without ``extensions``
    has them) and one that guards the scheduler's dashboard as the scheduler is made."""
    import dask
    from distributed.scheduler import DEFAULT_EXTENSIONS

    extensions = dict(DEFAULT_EXTENSIONS)
    if not dask.config.get("distributed.scheduler.work-stealing"):
        extensions.pop("stealing", None)
    extensions["daskbatch-dashguard"] = _Guarded
    return extensions


class _Guarded:
    """The scheduler extension: :func:`guard` on the scheduler being made."""

    def __init__(self, scheduler: Any) -> None:
        self.token = guard(scheduler)


def link(scheduler: Any, port: int) -> str:
    """The dashboard's address on this machine, with the token when it is guarded."""
    token = _TOKENS.get(getattr(scheduler, "http_server", None)) if scheduler is not None else None
    base = f"http://127.0.0.1:{port}/status"
    return base if token is None else f"{base}?{urlencode({'token': token})}"


class _Gate(httputil.HTTPServerConnectionDelegate):
    """The server's application behind a token."""

    def __init__(self, inner: httputil.HTTPServerConnectionDelegate, token: str, cookie: str) -> None:
        self.inner = inner
        self.token = token
        self.cookie = cookie

    def start_request(
        self, server_conn: object, request_conn: httputil.HTTPConnection
    ) -> httputil.HTTPMessageDelegate:
        return _Request(self, server_conn, request_conn)

    def on_close(self, server_conn: object) -> None:
        self.inner.on_close(server_conn)

    def matches(self, value: str | None) -> bool:
        return value is not None and hmac.compare_digest(value.encode(), self.token.encode())


class _Request(httputil.HTTPMessageDelegate):
    """One request: passed to the application when it carries the cookie (or asks for
    ``/health``); otherwise answered here, once its body has been read."""

    def __init__(self, gate: _Gate, server_conn: object, request_conn: httputil.HTTPConnection) -> None:
        self.gate = gate
        self.server_conn = server_conn
        self.conn = request_conn
        self.inner: httputil.HTTPMessageDelegate | None = None
        self.answer: tuple[int, str, dict[str, str], bytes] | None = None

    def headers_received(
        self,
        start_line: httputil.RequestStartLine | httputil.ResponseStartLine,
        headers: httputil.HTTPHeaders,
    ) -> Any:
        path = getattr(start_line, "path", "/")
        parts = urlsplit(path)
        cookies = httputil.parse_cookie("; ".join(headers.get_list("Cookie")))
        if parts.path in _OPEN or self.gate.matches(cookies.get(self.gate.cookie)):
            self.inner = self.gate.inner.start_request(self.server_conn, self.conn)
            return self.inner.headers_received(start_line, headers)
        query = parse_qsl(parts.query, keep_blank_values=True)
        given = [v for k, v in query if k == "token"]
        if given and self.gate.matches(given[-1]):
            # the same page without the token, relative (it works behind a proxy's prefix)
            rest = urlencode([(k, v) for k, v in query if k != "token"])
            target = (parts.path.rsplit("/", 1)[-1] or ".") + (f"?{rest}" if rest else "")
            cookie = f"{self.gate.cookie}={self.gate.token}; Path=/; HttpOnly; SameSite=Lax"
            self.answer = (302, "Found", {"Location": target, "Set-Cookie": cookie}, b"")
        else:
            self.answer = (403, "Forbidden", {"Content-Type": "text/plain; charset=utf-8"}, _DENIED)
        return None

    def data_received(self, chunk: bytes) -> Any:
        return None if self.inner is None else self.inner.data_received(chunk)

    def finish(self) -> None:
        if self.inner is not None:
            self.inner.finish()
            return
        assert self.answer is not None
        code, reason, fields, body = self.answer
        headers = httputil.HTTPHeaders({**fields, "Content-Length": str(len(body))})
        headers["Cache-Control"] = "no-store"
        self.conn.write_headers(httputil.ResponseStartLine("HTTP/1.1", code, reason), headers, body)
        self.conn.finish()

    def on_connection_close(self) -> None:
        if self.inner is not None:
            self.inner.on_connection_close()
