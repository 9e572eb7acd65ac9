"""A small client of Alertmanager's API v2: post alerts, read them back with their status."""

from __future__ import annotations

from types import TracebackType
from typing import Any, Self

import httpx


class AlertmanagerError(RuntimeError):
    """A request Alertmanager did not accept or never received; the message names the URL."""


class AlertmanagerClient:
    """One keep-alive connection to an Alertmanager; close it, or use it in a `with`."""

    def __init__(self, url: str, timeout_s: float = 5.0) -> None:
        self.url = url.rstrip("/")
        self._http = httpx.Client(base_url=self.url, timeout=timeout_s)

    def post(self, alerts: list[dict]) -> None:
        """POST /api/v2/alerts: each {labels, annotations, startsAt, endsAt, generatorURL?}, times
        as RFC 3339 text. An `endsAt` in the past resolves the alert of the same labels."""
        self._request("POST", "/api/v2/alerts", json=alerts)

    def alerts(self, filter: list[str] | None = None, active: bool = True, silenced: bool = True,
               inhibited: bool = True) -> list[dict]:
        """GET /api/v2/alerts; `filter` holds matchers such as 'pipeline="x"', all of which must match."""
        params = [("active", str(active).lower()), ("silenced", str(silenced).lower()),
                  ("inhibited", str(inhibited).lower()), *(("filter", matcher) for matcher in filter or [])]
        return self._request("GET", "/api/v2/alerts", params=params).json()

    def ready(self) -> bool:
        try:
            return self._http.get("/-/ready").status_code == 200
        except httpx.HTTPError:
            return False

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        where = f"{method} {self.url}{path}"
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            raise AlertmanagerError(f"{where}: no answer ({type(exc).__name__}: {exc})") from exc
        if response.is_error:
            raise AlertmanagerError(f"{where}: {response.status_code} {response.text.strip()[:500]}")
        return response
