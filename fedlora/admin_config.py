"""Where the ``fedlora`` admin commands find the server and the admin's token.

In order:

1. ``FEDLORA_URL`` (or a command's ``--url``) names the server, and ``FEDLORA_TOKEN`` a token,
   or ``FEDLORA_ADMIN_EMAIL`` + ``FEDLORA_ADMIN_PASSWORD`` log in for each command (nothing is
   stored: for scripts and CI);
2. otherwise the file ``fedlora login`` writes: ``$FEDLORA_ADMIN_CONFIG``, else
   ``$XDG_CONFIG_HOME/fedlora/admin.json`` (``~/.config/fedlora/admin.json``), created with
   mode 0600 in a 0700 directory, holding the server URL, the admin's email and a token that
   expires (``fedlora logout`` deletes it). The password is never stored.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedlora.admin_client import AdminClient


class AdminConfigError(RuntimeError):
    """Not logged in, an expired login, or an unreadable config file; says what to run."""


@dataclass(frozen=True)
class Login:
    url: str
    token: str
    email: str
    expires_at: float


def config_path() -> Path:
    explicit = os.environ.get("FEDLORA_ADMIN_CONFIG")
    if explicit:
        return Path(explicit).expanduser()
    base = os.environ.get("XDG_CONFIG_HOME") or "~/.config"
    return Path(base).expanduser() / "fedlora" / "admin.json"


def save_login(login: Login) -> Path:
    """Write the login with mode 0600 (the file is created that way: never world-readable)."""
    path = config_path()
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        json.dump(login.__dict__, handle, indent=2)
    os.chmod(path, 0o600)  # an older file keeps its mode through O_TRUNC: tighten it
    return path


def load_login() -> Login | None:
    path = config_path()
    if not path.is_file():
        return None
    try:
        raw: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
        return Login(
            url=str(raw["url"]),
            token=str(raw["token"]),
            email=str(raw.get("email", "")),
            expires_at=float(raw.get("expires_at", 0)),
        )
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise AdminConfigError(
            f"{path} is not a login this tool wrote ({exc}): delete it or run `fedlora login`"
        ) from None


def forget_login() -> Path | None:
    path = config_path()
    if path.is_file():
        path.unlink()
        return path
    return None


def connect(url: str | None = None) -> AdminClient:
    """An :class:`AdminClient` logged in as the environment or the saved login says."""
    env_url = url or os.environ.get("FEDLORA_URL")
    token = os.environ.get("FEDLORA_TOKEN")
    email = os.environ.get("FEDLORA_ADMIN_EMAIL")
    password = os.environ.get("FEDLORA_ADMIN_PASSWORD")
    if env_url and token:
        return AdminClient(env_url, token=token)
    if env_url and email and password:
        client = AdminClient(env_url)
        try:
            client.login(email, password)
        except BaseException:
            client.close()
            raise
        return client
    saved = load_login()
    if saved is None:
        raise AdminConfigError(
            "not logged in: run `fedlora login --url https://your-server` (or set FEDLORA_URL "
            "and FEDLORA_TOKEN, or FEDLORA_ADMIN_EMAIL and FEDLORA_ADMIN_PASSWORD)"
        )
    if env_url and env_url.rstrip("/") != saved.url.rstrip("/"):
        raise AdminConfigError(
            f"the saved login is for {saved.url}, not {env_url}: run `fedlora login --url "
            f"{env_url}`"
        )
    if saved.expires_at and saved.expires_at < time.time():
        raise AdminConfigError(
            f"your login to {saved.url} expired: run `fedlora login` again"
            + (f" (as {saved.email})" if saved.email else "")
        )
    return AdminClient(saved.url, token=saved.token)
