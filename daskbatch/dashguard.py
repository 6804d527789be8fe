"""The dashboard of a cluster daskbatch starts, for this user only.

distributed's dashboard is plain HTTP on ``127.0.0.1``: on a login node every user of
the machine reaches it, and its pages show the run's worker logs, call stacks, task
names and file paths. Here a gate in front of the server puts every page under a path
made for the run, a token (``http://127.0.0.1:8787/<token>/status``): a request under it
reaches distributed without the token (its pages, scripts and websockets use relative
addresses, so they stay under it, behind a proxy's prefix too); any other gets
``403 Forbidden`` before distributed sees it (its redirect of ``/`` would show the path),
but ``/statics/``, the files of distributed's package, which its info pages ask for
there.

No cookie: a browser sends a cookie to every port of the host, so another user's
server on 127.0.0.1 would get it; a path it sends only where it is asked for. Tools
that take the dashboard's address (JupyterLab's dask extension) add their paths to it
and get in. The token is compared in constant time. The gate is put in place as the
scheduler is made (:func:`scheduler_options`: a scheduler extension, which distributed
makes in the scheduler's constructor, after its HTTP server starts listening and before
its event loop can answer a request), so nothing, and no websocket that would stay
open, is served before it.
"""

from __future__ import annotations

import functools
import hmac
import logging
import secrets
from typing import Any

from tornado import httputil

__all__ = ["link", "scheduler_options"]

_DENIED = (
    b"daskbatch: this Dask dashboard is served under the path its run printed (a token "
    b"made for the run): open that link.\n"
)
_EXTENSION = "daskbatch-dashguard"
#: what distributed serves to anyone: the files of its package (style sheets, scripts)
_PUBLIC = "/statics/"


def scheduler_options(options: dict[str, Any] | None = None) -> dict[str, Any]:
    """``options`` for a ``distributed.Scheduler`` (a cluster's ``scheduler_kwargs`` or
    ``scheduler_options``) with an extension (beside distributed's own, or the ones
    given) that puts the gate, with a new token, in front of its dashboard as the
    scheduler is made. An ``http_prefix`` given comes after the token."""
    import dask
    from distributed.scheduler import DEFAULT_EXTENSIONS

    options = dict(options or {})
    token = secrets.token_urlsafe(24)
    extensions = options.get("extensions")
    if extensions is None:
        extensions = dict(DEFAULT_EXTENSIONS)
        if not dask.config.get("distributed.scheduler.work-stealing"):
            extensions.pop("stealing", None)
    after = (options.get("http_prefix") or "/").strip("/")
    guarded = functools.partial(_Guarded, prefix=f"/{token}", after=f"/{after}" if after else "")
    return {**options, "extensions": {**extensions, _EXTENSION: guarded}}


class _Guarded:
    """The scheduler extension: the gate in front of the scheduler being made."""

    def __init__(self, scheduler: Any, prefix: str, after: str = "") -> None:
        self.after = after  # the scheduler's own http_prefix
        server = getattr(scheduler, "http_server", None)
        app = getattr(server, "request_callback", None)
        if isinstance(app, httputil.HTTPServerConnectionDelegate):
            server.request_callback = _Gate(app, prefix)
            self.prefix = prefix
        else:  # no dashboard, or a distributed that makes its server later: a plain link
            self.prefix = ""
            if server is not None:
                logging.getLogger(__name__).warning(
                    "the Dask dashboard is not behind the run's path: this version of "
                    "distributed serves it in a way daskbatch does not know"
                )


def link(scheduler: Any, port: int) -> str:
    """The dashboard's address on this machine, under its token when it is guarded."""
    extensions = getattr(scheduler, "extensions", None) or {}
    guarded = extensions.get(_EXTENSION)
    path = "" if guarded is None else guarded.prefix + guarded.after
    return f"http://127.0.0.1:{port}{path}/status"


class _Gate(httputil.HTTPServerConnectionDelegate):
    """The server's application, reached only under ``prefix``."""

    def __init__(self, inner: httputil.HTTPServerConnectionDelegate, prefix: str) -> None:
        self.inner = inner
        self.text = prefix
        self.prefix = prefix.encode()

    def start_request(
        self, server_conn: object, request_conn: httputil.HTTPConnection
    ) -> httputil.HTTPMessageDelegate:
        return _Request(self, server_conn, request_conn)

    def on_close(self, server_conn: object) -> None:
        self.inner.on_close(server_conn)

    def lets_in(self, target: str) -> bool:
        path = target.split("?", 1)[0].split("#", 1)[0]
        head = path.encode("utf-8", "surrogateescape")[: len(self.prefix) + 1]
        return hmac.compare_digest(head, self.prefix + b"/") or hmac.compare_digest(head, self.prefix)


class _Request(httputil.HTTPMessageDelegate):
    """One request: passed to the application without the prefix when its path is
    under it; otherwise answered here, once its body has been read (the prefix alone:
    a redirect to the status page, which distributed's would send off the prefix)."""

    def __init__(self, gate: _Gate, server_conn: object, request_conn: httputil.HTTPConnection) -> None:
        self.gate = gate
        self.server_conn = server_conn
        self.conn = request_conn
        self.inner: httputil.HTTPMessageDelegate | None = None
        self.head = False
        self.location: str | None = None

    def headers_received(
        self,
        start_line: httputil.RequestStartLine | httputil.ResponseStartLine,
        headers: httputil.HTTPHeaders,
    ) -> Any:
        assert isinstance(start_line, httputil.RequestStartLine)
        target = start_line.path
        self.head = start_line.method == "HEAD"
        if target.startswith(_PUBLIC) and ".." not in target:
            # distributed's own files (its info pages climb one level too many to them)
            rest = target
        elif not self.gate.lets_in(target):
            return None
        else:
            rest = target[len(self.gate.text) :]
            if rest.split("?", 1)[0] in ("", "/"):
                self.location = ("" if rest.startswith("/") else self.gate.text.lstrip("/") + "/") + "status"
                return None
        self.inner = self.gate.inner.start_request(self.server_conn, self.conn)
        return self.inner.headers_received(start_line._replace(path=rest), headers)

    def data_received(self, chunk: bytes) -> Any:
        return None if self.inner is None else self.inner.data_received(chunk)

    def finish(self) -> None:
        if self.inner is not None:
            self.inner.finish()
            return
        if self.location is not None:
            headers = httputil.HTTPHeaders({"Location": self.location, "Content-Length": "0"})
            start = httputil.ResponseStartLine("HTTP/1.1", 302, "Found")
            self.conn.write_headers(start, headers)
        else:
            headers = httputil.HTTPHeaders({"Content-Type": "text/plain; charset=utf-8"})
            headers["Content-Length"] = str(len(_DENIED))
            start = httputil.ResponseStartLine("HTTP/1.1", 403, "Forbidden")
            self.conn.write_headers(start, headers, None if self.head else _DENIED)
        self.conn.finish()

    def on_connection_close(self) -> None:
        if self.inner is not None:
            self.inner.on_connection_close()
