"""A small admin client for the REST API, used by the ``fedlora`` admin commands, ``fedlora
demo``, the end-to-end tests and the benchmarks that drive the real stack. Every call raises
:class:`AdminApiError` with the server's message on a non-2xx answer.
"""

from __future__ import annotations

import io
import zipfile
from pathlib import Path
from typing import Any

import httpx

API = "/api/v1"
PEFT_FILES = ("adapter_config.json", "adapter_model.safetensors")


def _detail(response: httpx.Response) -> str:
    """The server's message: ``detail``, or each validation problem as ``field: message``."""
    try:
        body = response.json()
    except ValueError:
        return response.text.strip() or response.reason_phrase
    detail = body.get("detail", body) if isinstance(body, dict) else body
    if isinstance(detail, list):  # FastAPI validation errors; never echo the input back
        lines = []
        for item in detail:
            if not isinstance(item, dict):
                lines.append(str(item))
                continue
            loc = [str(x) for x in item.get("loc", []) if x != "body"]
            lines.append(f"{'.'.join(loc) or '(request)'}: {item.get('msg', item)}")
        return "; ".join(lines)
    return str(detail)


class AdminApiError(RuntimeError):
    def __init__(self, response: httpx.Response) -> None:
        self.status_code = response.status_code
        self.detail = _detail(response)
        super().__init__(
            f"{response.request.method} {response.request.url.path} -> "
            f"{response.status_code}: {self.detail}"
        )


class AdminClient:
    def __init__(
        self,
        base_url: str,
        *,
        timeout: float = 30.0,
        token: str | None = None,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self._http = httpx.Client(base_url=self.base_url, timeout=timeout, transport=transport)
        if token:
            self._http.headers["Authorization"] = f"Bearer {token}"

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> AdminClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _call(self, method: str, path: str, **kwargs: Any) -> Any:
        r = self._http.request(method, f"{API}{path}", **kwargs)
        if r.status_code >= 400:
            raise AdminApiError(r)
        if r.status_code == 204 or not r.content:
            return None
        return r.json()

    def _list(self, path: str, **params: Any) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = []
        while True:
            page = self._call("GET", path, params={**params, "skip": len(items), "limit": 500})
            items.extend(page["data"])
            if len(items) >= page["count"] or not page["data"]:
                return items

    # -- auth ------------------------------------------------------------------------------
    def login(self, email: str, password: str) -> dict[str, Any]:
        """Log in; later calls send the token. Returns ``{access_token, expires_in, ...}``."""
        token: dict[str, Any] = self._call(
            "POST", "/auth/login", json={"email": email, "password": password}
        )
        self._http.headers["Authorization"] = f"Bearer {token['access_token']}"
        return token

    # -- organizations and clients -----------------------------------------------------------
    def create_organization(self, name: str, description: str = "") -> str:
        body = {"name": name, "description": description}
        return str(self._call("POST", "/organizations", json=body)["id"])

    def organizations(self) -> list[dict[str, Any]]:
        return self._list("/organizations")

    def create_join_token(
        self, organization_id: str, *, expires_in_minutes: int | None = None, note: str = ""
    ) -> str:
        body: dict[str, Any] = {"organization_id": organization_id, "note": note}
        if expires_in_minutes is not None:
            body["expires_in_minutes"] = expires_in_minutes
        return str(self._call("POST", "/join-tokens", json=body)["token"])

    def clients(self, organization_id: str | None = None) -> list[dict[str, Any]]:
        params = {"organization_id": organization_id} if organization_id else {}
        return self._list("/clients", **params)

    # -- federations -------------------------------------------------------------------------
    def create_federation(self, body: dict[str, Any]) -> str:
        return str(self._call("POST", "/federations", json=body)["id"])

    def federations(self, status: str | None = None) -> list[dict[str, Any]]:
        return self._list("/federations", **({"status": status} if status else {}))

    def federation(self, federation_id: str) -> dict[str, Any]:
        result: dict[str, Any] = self._call("GET", f"/federations/{federation_id}")
        return result

    def dp_preview(self, body: dict[str, Any]) -> dict[str, Any]:
        """A draft's DP preview (``POST /federations/dp-preview``): per organization size the
        batch, steps, sigma, epsilon and noise-to-signal, with warnings."""
        result: dict[str, Any] = self._call("POST", "/federations/dp-preview", json=body)
        return result

    def federation_dp_preview(
        self, federation_id: str, dataset_sizes: list[int] | None = None
    ) -> dict[str, Any]:
        """An existing federation's DP preview, for ``dataset_sizes`` or its members' sizes."""
        params = {"dataset_sizes": dataset_sizes} if dataset_sizes else None
        result: dict[str, Any] = self._call(
            "GET", f"/federations/{federation_id}/dp-preview", params=params
        )
        return result

    def add_member(
        self,
        federation_id: str,
        client_id: str,
        rank_budget: int,
        *,
        max_examples: int | None = None,
    ) -> None:
        body: dict[str, Any] = {"client_id": client_id, "rank_budget": rank_budget}
        if max_examples is not None:
            body["max_examples"] = max_examples
        self._call("POST", f"/federations/{federation_id}/memberships", json=body)

    def members(self, federation_id: str) -> list[dict[str, Any]]:
        return self._list(f"/federations/{federation_id}/memberships")

    def action(self, federation_id: str, verb: str) -> None:
        self._call("POST", f"/federations/{federation_id}/{verb}")

    def rounds(self, federation_id: str) -> list[dict[str, Any]]:
        return self._list(f"/federations/{federation_id}/rounds")

    def tasks(self, federation_id: str) -> list[dict[str, Any]]:
        return self._list(f"/federations/{federation_id}/tasks")

    def round_tasks(self, round_id: str) -> list[dict[str, Any]]:
        return self._list(f"/rounds/{round_id}/tasks")

    def release_task(self, task_id: str, reason: str | None = None) -> dict[str, Any]:
        """Release a pending or leased task: its round stops waiting for it."""
        body = {"reason": reason} if reason else None
        result: dict[str, Any] = self._call("POST", f"/tasks/{task_id}/release", json=body)
        return result

    def updates(self, federation_id: str) -> list[dict[str, Any]]:
        return self._list(f"/federations/{federation_id}/updates")

    def adapters(self, federation_id: str) -> list[dict[str, Any]]:
        return self._list(f"/federations/{federation_id}/adapters")

    def ledger(self, federation_id: str) -> list[dict[str, Any]]:
        return self._list(f"/federations/{federation_id}/ledger")

    def download_adapter(self, adapter_id: str, directory: Path) -> Path:
        """Download a global adapter as a PEFT folder (``adapter_config.json`` + weights)."""
        r = self._http.get(f"{API}/adapters/{adapter_id}/download", params={"format": "zip"})
        if r.status_code >= 400:
            raise AdminApiError(r)
        directory.mkdir(parents=True, exist_ok=True)
        with zipfile.ZipFile(io.BytesIO(r.content)) as archive:
            for member in archive.infolist():
                name = Path(member.filename).name  # flat folder; never trust archive paths
                if name in PEFT_FILES:
                    (directory / name).write_bytes(archive.read(member))
        missing = [n for n in PEFT_FILES if not (directory / n).is_file()]
        if missing:
            raise RuntimeError(f"adapter {adapter_id}: the download lacks {', '.join(missing)}")
        return directory
