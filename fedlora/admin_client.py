"""A small admin client for the REST API, used by ``fedlora demo``, the end-to-end tests and
the benchmarks that drive the real stack. Every call raises :class:`AdminApiError` with the
server's message on a non-2xx answer.
"""

from __future__ import annotations

import io
import zipfile
from pathlib import Path
from typing import Any

import httpx

API = "/api/v1"


class AdminApiError(RuntimeError):
    def __init__(self, response: httpx.Response) -> None:
        try:
            detail: Any = response.json().get("detail", response.text)
        except ValueError:
            detail = response.text
        super().__init__(
            f"{response.request.method} {response.request.url.path} -> "
            f"{response.status_code}: {detail}"
        )
        self.status_code = response.status_code


class AdminClient:
    def __init__(self, base_url: str, *, timeout: float = 30.0) -> None:
        self.base_url = base_url.rstrip("/")
        self._http = httpx.Client(base_url=self.base_url, timeout=timeout)

    def close(self) -> None:
        self._http.close()

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
    def login(self, email: str, password: str) -> None:
        token = self._call("POST", "/auth/login", json={"email": email, "password": password})
        self._http.headers["Authorization"] = f"Bearer {token['access_token']}"

    # -- organizations and clients -----------------------------------------------------------
    def create_organization(self, name: str) -> str:
        return str(self._call("POST", "/organizations", json={"name": name})["id"])

    def create_join_token(self, organization_id: str) -> str:
        body = {"organization_id": organization_id}
        return str(self._call("POST", "/join-tokens", json=body)["token"])

    # -- federations -------------------------------------------------------------------------
    def create_federation(self, body: dict[str, Any]) -> str:
        return str(self._call("POST", "/federations", json=body)["id"])

    def federation(self, federation_id: str) -> dict[str, Any]:
        result: dict[str, Any] = self._call("GET", f"/federations/{federation_id}")
        return result

    def add_member(self, federation_id: str, client_id: str, rank_budget: int) -> None:
        body = {"client_id": client_id, "rank_budget": rank_budget}
        self._call("POST", f"/federations/{federation_id}/memberships", json=body)

    def members(self, federation_id: str) -> list[dict[str, Any]]:
        return self._list(f"/federations/{federation_id}/memberships")

    def action(self, federation_id: str, verb: str) -> None:
        self._call("POST", f"/federations/{federation_id}/{verb}")

    def rounds(self, federation_id: str) -> list[dict[str, Any]]:
        return self._list(f"/federations/{federation_id}/rounds")

    def tasks(self, federation_id: str) -> list[dict[str, Any]]:
        return self._list(f"/federations/{federation_id}/tasks")

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
                if name in {"adapter_config.json", "adapter_model.safetensors"}:
                    (directory / name).write_bytes(archive.read(member))
        return directory
