"""Prometheus HTTP API, instant queries only: GET {url}/api/v1/query.

Every failure is one of four exceptions, so a check can tell "Prometheus is down" (stop
asking) from "this expression is wrong" (report the rule, go on with the others):
``PrometheusUnreachable``, ``PrometheusHTTPError``, ``PrometheusQueryError`` and
``PrometheusValueError``. Messages never carry the password of a URL.

Every query is bounded: at most ``MAX_BODY_BYTES`` of body are read, and connect, headers
and body together end at one deadline (the configured timeout), also when a server sends
its answer a byte at a time.
"""

from __future__ import annotations

import io
import json
import math
import socket
import threading
import time
from typing import Any, NamedTuple, cast
from urllib.parse import urlsplit

import requests
import urllib3
from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool

from remediation.errors import RemediationError
from remediation.redact import MASK, redact_text

QUERY_PATH = "/api/v1/query"
SERVER_TIMEOUT_SHARE = 0.8
"""Prometheus is asked to give up before we do, so a slow query comes back as its own
``timeout`` error instead of looking like a dead server."""
ERROR_CHARS = 300
"""Error text kept from a response or an exception."""
MAX_BODY_BYTES = 8 * 1024 * 1024
"""The most of a response body read: a bigger answer is an error, not a worker's memory."""
CHUNK_BYTES = 64 * 1024


class PrometheusError(RemediationError):
    """Base class of everything this client raises."""


class PrometheusUnreachable(PrometheusError):
    """No answer: connection refused, DNS failure, or no response within the timeout."""


class PrometheusHTTPError(PrometheusError):
    """An HTTP answer that is not the Prometheus API (a proxy's 502, a wrong URL's 404)."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


class PrometheusQueryError(PrometheusError):
    """Prometheus refused or failed the query (``status: error``): bad PromQL, timeout."""

    def __init__(self, message: str, error_type: str, error: str) -> None:
        super().__init__(message)
        self.error_type = error_type
        self.error = error


class PrometheusValueError(PrometheusError):
    """The result is not numbers: a string or range-vector result, an unparsable value."""


class Sample(NamedTuple):
    """One series of an instant result; a scalar result has no labels."""

    labels: dict[str, str]
    value: float


class PrometheusClient:
    """Instant queries against one Prometheus, each bounded by ``timeout`` seconds."""

    def __init__(self, url: str, timeout: float = 5.0) -> None:
        self.url = url.rstrip("/")
        self.timeout = timeout
        self._session = requests.Session()
        adapter = _DeadlineAdapter()
        self._session.mount("http://", adapter)
        self._session.mount("https://", adapter)

    def __enter__(self) -> PrometheusClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._session.close()

    @property
    def safe_url(self) -> str:
        """The base URL with any password masked, fit for findings and logs."""
        return _mask_password(redact_text(self.url), self.url)

    def query(self, expr: str) -> list[Sample]:
        """Evaluate ``expr`` now; one Sample per series. NaN values (no data) are left out."""
        body = self._get(expr)
        data = body.get("data")
        if not isinstance(data, dict):
            raise PrometheusValueError("response has no 'data' object")
        return _samples(data.get("resultType"), data.get("result"))

    def _get(self, expr: str) -> dict[str, Any]:
        server_ms = max(1, int(self.timeout * SERVER_TIMEOUT_SHARE * 1000))
        params = {"query": expr, "timeout": f"{server_ms}ms"}  # Prometheus durations: no "4.0s"
        deadline = time.monotonic() + self.timeout
        _DEADLINE.at = deadline
        try:
            resp = self._session.get(
                self.url + QUERY_PATH,
                params=params,
                timeout=self.timeout,
                stream=True,
                headers={"Accept-Encoding": "identity"},  # the cap counts what we keep
            )
            with resp:
                raw = self._body(resp)
        except requests.RequestException as exc:
            why = (
                f"timed out: no complete answer within {self.timeout:g} s"
                if time.monotonic() >= deadline
                else self._describe(exc)
            )
            raise PrometheusUnreachable(
                f"Prometheus at {self.safe_url} did not answer: {why}"
            ) from None
        finally:
            _DEADLINE.at = None
        body = _json(raw)
        if body is not None and body.get("status") == "error":
            error_type, error = str(body.get("errorType", "?")), str(body.get("error", ""))
            raise PrometheusQueryError(
                f"Prometheus rejected the query ({error_type}): {error[:ERROR_CHARS]}",
                error_type,
                error[:ERROR_CHARS],
            )
        if not resp.ok or body is None or body.get("status") != "success":
            what = "not a Prometheus API answer" if resp.ok else resp.reason
            raise PrometheusHTTPError(
                f"Prometheus at {self.safe_url} answered HTTP {resp.status_code}: {what}",
                resp.status_code,
            )
        return body

    def _body(self, resp: requests.Response) -> bytes:
        """The body, at most MAX_BODY_BYTES of it; PrometheusValueError past that."""
        encoding = resp.headers.get("Content-Encoding", "identity").strip().lower()
        if encoding not in ("", "identity"):
            raise PrometheusHTTPError(
                f"Prometheus at {self.safe_url} answered with Content-Encoding {encoding[:40]!r}"
                " (identity was asked for)",
                resp.status_code,
            )
        declared = resp.headers.get("Content-Length", "")
        if declared.isdigit() and int(declared) > MAX_BODY_BYTES:
            raise _too_big(f"{int(declared)} bytes")
        body = bytearray()
        for chunk in resp.iter_content(CHUNK_BYTES):
            body += chunk
            if len(body) > MAX_BODY_BYTES:
                raise _too_big(f"more than {MAX_BODY_BYTES} bytes")
        return bytes(body)

    def _describe(self, exc: requests.RequestException) -> str:
        text = " ".join(f"{type(exc).__name__}: {exc}".split())
        return _mask_password(redact_text(text), self.url)[:ERROR_CHARS]


def _mask_password(text: str, url: str) -> str:
    password = urlsplit(url).password
    return text.replace(password, MASK) if password else text


def _json(raw: bytes) -> dict[str, Any] | None:
    try:
        body = json.loads(raw)
    except ValueError:  # also UnicodeDecodeError
        return None
    return body if isinstance(body, dict) else None


def _too_big(size: str) -> PrometheusValueError:
    return PrometheusValueError(
        f"answer of {size} is over the {MAX_BODY_BYTES // (1024 * 1024)} MiB cap:"
        " aggregate the expression (sum by, topk) so it returns fewer series"
    )


# --- the deadline ------------------------------------------------------------------------
# requests' timeouts bound each socket operation, not the whole request: a server that sends
# a byte every second never trips them. Every read below waits only until the deadline of
# the query running in this thread.

_DEADLINE = threading.local()


class _DeadlineReader(io.RawIOBase):
    """The raw side of the response file http.client reads headers and body from: the
    socket's own file (which keeps the socket open while the response is read), each read
    waiting only until the deadline."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._raw = sock.makefile("rb", buffering=0)

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int | None:
        at = getattr(_DEADLINE, "at", None)
        if at is not None:
            left = at - time.monotonic()
            if left <= 0:
                raise TimeoutError("deadline passed")
            self._sock.settimeout(left)
        return self._raw.readinto(buffer)

    def close(self) -> None:
        if not self.closed:
            self._raw.close()
        super().close()


class _DeadlineSocket:
    """A connection's socket whose response file reads through _DeadlineReader."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sock, name)

    def makefile(self, mode: str = "rb", *args: Any, **kwargs: Any) -> io.BufferedReader:
        return io.BufferedReader(_DeadlineReader(self._sock))


class _HTTPConnection(HTTPConnection):
    def connect(self) -> None:
        super().connect()
        self.sock = cast(socket.socket, _DeadlineSocket(cast(socket.socket, self.sock)))


class _HTTPSConnection(HTTPSConnection):
    def connect(self) -> None:
        super().connect()
        self.sock = cast(socket.socket, _DeadlineSocket(cast(socket.socket, self.sock)))


class _HTTPPool(HTTPConnectionPool):
    ConnectionCls = _HTTPConnection


class _HTTPSPool(HTTPSConnectionPool):
    ConnectionCls = _HTTPSConnection


_POOL_CLASSES = {"http": _HTTPPool, "https": _HTTPSPool}


class _DeadlineAdapter(HTTPAdapter):
    """requests' adapter with connections whose reads end at the query's deadline."""

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = _POOL_CLASSES

    def proxy_manager_for(self, proxy: str, **kwargs: Any) -> urllib3.PoolManager:
        manager: urllib3.PoolManager = super().proxy_manager_for(proxy, **kwargs)
        if isinstance(manager, urllib3.ProxyManager):  # SOCKS keeps its own connections
            manager.pool_classes_by_scheme = _POOL_CLASSES
        return manager


def _samples(result_type: Any, result: Any) -> list[Sample]:
    if result_type == "scalar":
        return _keep([Sample({}, _value(result))])
    if result_type == "vector" and isinstance(result, list):
        return _keep([Sample(_labels(item), _value(item.get("value"))) for item in result])
    if result_type == "matrix":
        raise PrometheusValueError("range-vector (matrix) result: write an instant expression")
    raise PrometheusValueError(f"{result_type} result: expected an instant vector or scalar")


def _keep(samples: list[Sample]) -> list[Sample]:
    """NaN is Prometheus' "no data" (0/0 with no traffic): not a value to compare."""
    return [s for s in samples if not math.isnan(s.value)]


def _labels(item: Any) -> dict[str, str]:
    metric = item.get("metric") if isinstance(item, dict) else None
    if not isinstance(metric, dict):
        raise PrometheusValueError("vector element without a 'metric' object")
    return {str(k): str(v) for k, v in metric.items()}


def _value(pair: Any) -> float:
    """[timestamp, "1.5"] -> 1.5; "NaN", "+Inf" and "-Inf" are what Prometheus writes."""
    if not (isinstance(pair, list) and len(pair) == 2 and isinstance(pair[1], str)):
        raise PrometheusValueError(f"malformed sample {str(pair)[:80]}")
    try:
        return float(pair[1])
    except ValueError:
        raise PrometheusValueError(f"non-numeric sample value {pair[1][:40]!r}") from None
