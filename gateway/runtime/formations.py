"""The formations this process serves, each with its own id and API keys."""

from __future__ import annotations

import hmac
import json
import os
import secrets
from dataclasses import dataclass, field

from config.settings import ConfigError, Settings
from identity.service import check_formation


@dataclass(frozen=True)
class Formation:
    id: str
    admin_key: str = field(repr=False)
    client_key: str = field(repr=False)
    generated: bool = False  # keys made up for development, shown once at start-up

    def is_admin(self, key: str | None) -> bool:
        return key is not None and hmac.compare_digest(key.encode(), self.admin_key.encode())

    def is_client(self, key: str | None) -> bool:
        return key is not None and hmac.compare_digest(key.encode(), self.client_key.encode())


def _dev_keys(settings: Settings) -> tuple[str, str, bool]:
    """Keys for the default formation in development: made once, kept in the data dir."""
    path = settings.data_dir / "dev-keys.json"
    if path.exists():
        keys = json.loads(path.read_text())
        return keys["admin_key"], keys["client_key"], False
    keys = {"admin_key": "tla_" + secrets.token_urlsafe(24),
            "client_key": "tlc_" + secrets.token_urlsafe(24)}
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        json.dump(keys, handle)
    return keys["admin_key"], keys["client_key"], True


def load_formations(settings: Settings) -> dict[str, Formation]:
    admin = settings.admin_key.get_secret_value() if settings.admin_key else None
    client = settings.client_key.get_secret_value() if settings.client_key else None
    generated = False
    if admin is None or client is None:
        if settings.env == "production":
            raise ConfigError("THREADLINE_ADMIN_KEY and THREADLINE_CLIENT_KEY must be set in "
                              "production (or server.admin_key / server.client_key in the "
                              "formation file)")
        dev_admin, dev_client, generated = _dev_keys(settings)
        admin, client = admin or dev_admin, client or dev_client
    formations = {settings.formation_id: Formation(settings.formation_id, admin, client,
                                                   generated)}
    for entry in settings.formations:
        fid = check_formation(str(entry["id"]))
        if fid in formations:
            raise ConfigError(f"formation {fid!r} is declared twice")
        formations[fid] = Formation(fid, str(entry["admin_key"]), str(entry["client_key"]))
    for formation in formations.values():
        if len(formation.admin_key) < 16 or len(formation.client_key) < 16:
            raise ConfigError(f"formation {formation.id!r}: keys must be at least 16 characters")
        if formation.admin_key == formation.client_key:
            raise ConfigError(f"formation {formation.id!r}: admin and client keys must differ")
    return formations
