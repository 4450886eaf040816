"""The client's credentials on disk: a JSON file readable by its owner only (mode 0600)."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

from fedlora_client._errors import ConfigError

DEFAULT_CREDENTIALS_PATH = Path("~/.config/fedlora/credentials.json")


@dataclass(frozen=True)
class Credentials:
    """What ``enroll`` returns and every later call needs."""

    server_url: str
    client_id: str
    organization_id: str
    api_key: str

    def save(self, path: str | Path = DEFAULT_CREDENTIALS_PATH) -> Path:
        """Write the file with mode 0600 from its creation (never world-readable, even briefly)."""
        target = Path(path).expanduser()
        target.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        tmp = target.with_name(target.name + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(asdict(self), handle, indent=2)
        os.chmod(tmp, 0o600)
        tmp.replace(target)
        return target

    @classmethod
    def load(cls, path: str | Path = DEFAULT_CREDENTIALS_PATH) -> Credentials:
        source = Path(path).expanduser()
        if not source.is_file():
            raise ConfigError(
                f"no credentials at {source}: run `fedlora-client enroll --server URL --token "
                "TOKEN` first (or set credentials_path in client.toml)"
            )
        if source.stat().st_mode & 0o077:
            raise ConfigError(
                f"{source} is readable by other users; run `chmod 600 {source}` (it holds the "
                "client's API key)"
            )
        try:
            return cls(**json.loads(source.read_text(encoding="utf-8")))
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"{source} is not a fedlora credentials file: {exc}") from exc
