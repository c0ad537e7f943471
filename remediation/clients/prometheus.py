"""Prometheus HTTP API, instant queries only: GET {url}/api/v1/query.

Every failure is one of four exceptions, so a check can tell "Prometheus is down" (stop
asking) from "this expression is wrong" (report the rule, go on with the others):
``PrometheusUnreachable``, ``PrometheusHTTPError``, ``PrometheusQueryError`` and
``PrometheusValueError``. Messages never carry the password of a URL.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple
from urllib.parse import urlsplit

import requests

from remediation.errors import RemediationError
from remediation.redact import MASK, redact_text

QUERY_PATH = "/api/v1/query"
SERVER_TIMEOUT_SHARE = 0.8
"""Prometheus is asked to give up before we do, so a slow query comes back as its own
``timeout`` error instead of looking like a dead server."""
ERROR_CHARS = 300
"""Error text kept from a response or an exception."""


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
        try:
            resp = self._session.get(self.url + QUERY_PATH, params=params, timeout=self.timeout)
        except requests.RequestException as exc:
            raise PrometheusUnreachable(
                f"Prometheus at {self.safe_url} did not answer: {self._describe(exc)}"
            ) from None
        body = _json(resp)
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

    def _describe(self, exc: requests.RequestException) -> str:
        text = " ".join(f"{type(exc).__name__}: {exc}".split())
        return _mask_password(redact_text(text), self.url)[:ERROR_CHARS]


def _mask_password(text: str, url: str) -> str:
    password = urlsplit(url).password
    return text.replace(password, MASK) if password else text


def _json(resp: requests.Response) -> dict[str, Any] | None:
    try:
        body = resp.json()
    except ValueError:
        return None
    return body if isinstance(body, dict) else None


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
