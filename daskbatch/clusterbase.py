"""What starting any cluster shares: the local cluster's and job-queue clusters' parts.

The dashboard's address, the temporary TLS credentials of a cluster daskbatch starts
(:func:`local_security`), distributed's log kept quiet while it runs
(:func:`quiet_level`), a fetch that Ctrl-C abandoned kept quiet
(:func:`quiet_abandoned_fetches`) and SIGINT and SIGTERM held back while it starts or closes.
:mod:`daskbatch.cluster` (the LocalCluster) and :mod:`daskbatch.hpc` (the job-queue
clusters) both start clusters with them; the names are importable from
:mod:`daskbatch.cluster` too.
"""

from __future__ import annotations

import logging
import signal
import socket
import sys
import threading
from collections.abc import Iterator
from concurrent.futures import Future
from contextlib import contextmanager
from typing import Any

import dask

from .errors import ClusterError

__all__ = ["QUIET_LEVEL", "local_security", "quiet_abandoned_fetches", "quiet_level"]


def scheduler_options(options: dict[str, Any] | None = None) -> dict[str, Any]:
    """What the scheduler of a job-queue cluster daskbatch starts is made with:
    ``options`` (the user's), its dashboard's address unless they give one, and the
    dashboard under the run's token from the first request on (:mod:`daskbatch.dashguard`)."""
    from .dashguard import scheduler_options as guarded

    return guarded({"dashboard_address": _dashboard_address(), **(options or {})})


def _dashboard_address() -> str:
    # the usual port when it is free, otherwise any: no "port in use" warning
    with socket.socket() as s:
        # as the server binds: a port whose last connections wait out TIME_WAIT is free
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", 8787))
        except OSError:
            return "127.0.0.1:0"
    return "127.0.0.1:8787"


#: credentials being made for the next local cluster (see :func:`_prepare_security`)
_next_security: list[Future[Any]] = []
_next_security_lock = threading.Lock()


def _prepare_security() -> None:
    """Start making the next local cluster's credentials in a thread (importing
    ``cryptography`` is most of it), unless some are being made already;
    :func:`local_security` takes them."""
    with _next_security_lock:
        if _next_security:
            return
        future: Future[Any] = Future()
        _next_security.append(future)

    def make() -> None:
        try:
            future.set_result(_temporary_security())
        except BaseException as e:
            future.set_exception(e)

    threading.Thread(target=make, name="daskbatch-credentials", daemon=True).start()


def _temporary_security() -> Any:
    """``Security.temporary()`` with an elliptic-curve key (P-256) instead of RSA: the
    same self-signed certificate for every role, made in a millisecond instead of
    30-100 ms, and cheaper TLS handshakes (measured: the cluster's start takes 20 ms
    more than over plain TCP, against 100 ms with RSA)."""
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID
    from distributed.security import Security

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "dask-internal")])
    now = datetime.datetime.now(tz=datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("dask-internal")]), critical=False)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=365))
        .sign(key, hashes.SHA256())
    )
    pem = cert.public_bytes(serialization.Encoding.PEM).decode()
    secret = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    roles = ("client", "scheduler", "worker")
    tls = {**{f"tls_{r}_cert": pem for r in roles}, **{f"tls_{r}_key": secret for r in roles}}
    return Security(require_encryption=True, tls_ca_file=pem, **tls)


def local_security() -> Any:
    """New temporary TLS credentials for a local cluster (a
    :class:`distributed.security.Security` that requires encryption, as
    ``Security.temporary()`` makes).

    A self-signed certificate and its key, made in memory for one cluster (distributed
    writes them for an instant into a private temporary folder, mode 0700, to load
    them): its scheduler, nannies, workers and client present them to each other,
    and refuse any connection that does not. The ones :func:`~daskbatch.cluster.prestart` began to make
    are taken when there are some.
    """
    with _next_security_lock:
        future = _next_security.pop() if _next_security else None
    try:
        return future.result() if future is not None else _temporary_security()
    except ImportError as e:
        raise ClusterError(
            f"the local cluster needs the package 'cryptography' for its TLS credentials ({e}); "
            "install it (`pip install cryptography`) in this Python environment"
        ) from e


def quiet_level() -> int | None:
    """The level below which distributed's log records are kept out of the terminal.

    While daskbatch's LocalCluster runs, distributed logs every worker death,
    restart, ``KilledWorker`` and closed connection; daskbatch handles each of them
    (a crashed sample is listed in the run's summary), so by default only critical
    records pass (:data:`QUIET_LEVEL`). ``None`` (distributed's own default: warnings
    and errors) when asked for: the dask config key ``daskbatch.verbose`` is true
    (the command line's ``--verbose`` sets it), or the user configured distributed's
    logging (the dask config keys ``logging`` or ``distributed.logging``, or a level
    other than INFO, which distributed sets on import, on the ``distributed`` logger).
    """
    if dask.config.get("daskbatch.verbose", default=False):
        return None
    for key in ("logging", "logging-file-config", "distributed.logging", "distributed.logging-file-config"):
        if dask.config.get(key, default=None):
            return None
    if logging.getLogger("distributed").level not in (logging.NOTSET, logging.INFO):
        return None
    return QUIET_LEVEL


#: what passes :func:`quiet_level`'s filter by default
QUIET_LEVEL = logging.CRITICAL


def _not_an_abandoned_fetch(record: logging.LogRecord) -> bool:
    """False for asyncio's report of distributed's ``AllExit`` (see
    :func:`quiet_abandoned_fetches`)."""
    exc = record.exc_info[1] if record.exc_info else None
    return not (type(exc).__name__ == "AllExit" and type(exc).__module__.startswith("distributed."))


def quiet_abandoned_fetches() -> None:
    """Keep asyncio from reporting a result fetch that a Ctrl-C abandoned (once per process).

    ``Future.result()`` interrupted while it fetches a result (Ctrl-C in the driver)
    cancels distributed's fetch part way: a task it left behind later ends with
    distributed's internal ``AllExit``, which distributed means to be quiet, and
    asyncio printed "Task exception was never retrieved" and a dozen lines of
    traceback as the driver exited after its one line. Only that exception is dropped
    from the ``asyncio`` logger.
    """
    log = logging.getLogger("asyncio")
    if _not_an_abandoned_fetch not in log.filters:
        log.addFilter(_not_an_abandoned_fetch)


@contextmanager
def _quiet_logs(level: int | None) -> Iterator[None]:
    """Raise the level of the ``distributed`` logger's stream handlers while inside."""
    if level is None:
        yield
        return
    changed = []
    for handler in logging.getLogger("distributed").handlers:
        if isinstance(handler, logging.StreamHandler) and handler.level < level:
            changed.append((handler, handler.level))
            handler.setLevel(level)
    try:
        yield
    finally:
        for handler, old in changed:
            handler.setLevel(old)


@contextmanager
def _signals_deferred() -> Iterator[None]:
    """Hold SIGINT and SIGTERM back while inside; act on the first one on the way out.

    A LocalCluster interrupted while it starts is never returned, and its scheduler
    and workers go on starting in the event loop's thread; one interrupted while it
    closes is left half closed. Either is shut down later by distributed's own
    clean-up at exit: seconds of waiting and a screenful of log. So the start and
    the close (each a second or two) finish first, then the signal does what it
    would have done (its handler is called, or, with none, its default action).
    Only in the main thread; a signal that is ignored stays ignored.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    held: list[int] = []

    def hold(signum: int, frame: Any) -> None:
        held.append(signum)

    previous = {}
    for signum in (signal.SIGINT, signal.SIGTERM):
        old = signal.getsignal(signum)
        if old is not signal.SIG_IGN and old is not None:
            previous[signum] = old
            signal.signal(signum, hold)
    try:
        yield
    finally:
        for signum, old in previous.items():
            signal.signal(signum, old)
        if held:
            old = previous[held[0]]
            if callable(old):
                old(held[0], sys._getframe())
            else:  # SIG_DFL
                signal.raise_signal(held[0])


def _finalize_clients() -> None:
    """Collect the garbage now, in this thread: a ``distributed.Client`` left in a
    reference cycle (one whose making failed, say) is closed by its ``__del__``, which
    waits for its event loop, and would otherwise run whenever the garbage collector
    does next: in another cluster's event-loop thread it hangs that cluster's start."""
    import gc

    gc.collect()
