"""Typed settings: the environment (THREADLINE_*) over the formation file over defaults.

The formation file is YAML. Any string in it may say `${{ secrets.NAME }}`; NAME is taken from
the environment, then from the secrets file (KEY=VALUE lines). A missing secret stops start-up
with an error naming it.
"""

from __future__ import annotations

import difflib
import os
import re
import secrets as _secrets
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Literal

import yaml
from cryptography.fernet import Fernet
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator

from config.errors import ThreadlineError

_SECRET_REF = re.compile(r"\$\{\{\s*secrets\.([A-Za-z_][A-Za-z0-9_]*)\s*\}\}")
_PROVIDERS = {"postgres", "postgresql", "sqlite"}
# An origin as CSP frame-ancestors takes it: scheme, host (maybe *.), port; no path.
_ORIGIN = re.compile(r"^https?://(\*\.)?[A-Za-z0-9-]+(\.[A-Za-z0-9-]+)*(:\d{1,5})?$")


class ConfigError(ThreadlineError):
    """Configuration that cannot be used; the message says what and where."""


class Settings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    env: Literal["development", "production"] = "development"
    data_dir: Path = Path(".threadline")
    formation_id: str = "default"
    database_url: SecretStr | None = None
    cache_url: SecretStr = SecretStr("memory://")
    cache_ttl: float = Field(3600.0, gt=0)
    cache_max_entries: int = Field(100_000, ge=1)
    merge_retention_days: float = Field(30.0, gt=0)  # how long a merge can be undone
    identity_secret: SecretStr | None = None
    credentials_key: SecretStr | None = None
    session_idle_timeout: float = Field(1800.0, gt=0)
    session_buffer_size: int = Field(20, ge=1, le=1000)
    responder: Literal["offline", "openai"] = "offline"
    llm_base_url: str = "https://api.openai.com/v1"
    llm_model: str = "gpt-4o-mini"
    llm_api_key: SecretStr | None = None
    llm_timeout: float = Field(30.0, gt=0)
    # Recall by meaning: "local" (the extra threadline[embeddings]) or an OpenAI-compatible
    # /embeddings endpoint (embeddings_base_url, else llm_base_url, with llm_api_key).
    embeddings: Literal["none", "local", "openai"] = "none"
    embeddings_model: str | None = None
    embeddings_base_url: str | None = None
    log_format: Literal["auto", "json", "console"] = "auto"
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    admin_key: SecretStr | None = None
    client_key: SecretStr | None = None
    webchat_secret: SecretStr | None = None
    # Other sites that may show the web chat in a frame (the launcher): origins such as
    # https://shop.example.com. The gateway's own origin always may; nobody else.
    webchat_frame_ancestors: list[str] = Field(default_factory=list)
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    max_body_bytes: int = Field(1_048_576, ge=1024)  # larger request bodies get 413
    formation_file: Path | None = None
    secrets_file: Path | None = None
    # More formations served by this process: [{"id", "admin_key", "client_key"}].
    formations: list[dict[str, Any]] = Field(default_factory=list, repr=False)
    # channels.<name>: that channel's settings, e.g. {"slack": {"bot_token": …}}; a
    # channel runs when its section is present and not `enabled: false`.
    channels: dict[str, dict[str, Any]] = Field(default_factory=dict, repr=False)
    # identity.types: identifier types beyond the built-in ones (e.g. ["crm"]).
    identity_types: list[str] = Field(default_factory=list)

    @field_validator("webchat_frame_ancestors", mode="before")
    @classmethod
    def _origins(cls, value: Any) -> Any:
        if isinstance(value, str):  # the environment: separated by spaces or commas
            value = value.replace(",", " ").split()
        if not isinstance(value, list):
            return value
        origins = []
        for item in value:
            origin = item.strip().rstrip("/") if isinstance(item, str) else ""
            if not _ORIGIN.match(origin):
                raise ValueError(f"{item!r} is not an origin such as https://shop.example.com "
                                 "(scheme and host, a port if any, no path)")
            origins.append(origin)
        return origins

    @property
    def database(self) -> str:
        if self.database_url is not None:
            return self.database_url.get_secret_value()
        return f"sqlite:///{self.data_dir / 'threadline.db'}"

    @property
    def cache(self) -> str:
        return self.cache_url.get_secret_value()

    def identity_key(self) -> bytes:
        """The HMAC key for api-key identifiers; generated once in development."""
        return self._secret(self.identity_secret, "identity.secret", "THREADLINE_IDENTITY_SECRET",
                            "so api-key identifiers keep resolving",
                            lambda: _secrets.token_urlsafe(32))

    def credential_key(self) -> bytes:
        """The Fernet key that encrypts stored credentials; generated once in development."""
        key = self._secret(self.credentials_key, "credentials.key", "THREADLINE_CREDENTIALS_KEY",
                           "so stored credentials stay readable",
                           lambda: Fernet.generate_key().decode())
        try:
            Fernet(key)
        except ValueError:
            raise ConfigError("THREADLINE_CREDENTIALS_KEY must be 32 url-safe base64-encoded "
                              "bytes (make one with: python -c 'from cryptography.fernet import "
                              "Fernet; print(Fernet.generate_key().decode())')") from None
        return key

    def _secret(self, given: SecretStr | None, filename: str, variable: str, why: str,
                make: Callable[[], str]) -> bytes:
        if given is not None:
            return given.get_secret_value().encode()
        if self.env == "production":
            raise ConfigError(f"{variable} is not set: production needs a fixed one {why}")
        path = self.data_dir / filename
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            # Written aside, then linked into place: a reader never sees a half-written file.
            temp = path.with_name(f".{filename}.{os.getpid()}")
            fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as handle:
                handle.write(make())
            try:
                os.link(temp, path)
            except FileExistsError:
                pass  # another process made it first; use theirs
            finally:
                temp.unlink()
        return path.read_text().strip().encode()


_ENV_FIELDS = {
    name: f"THREADLINE_{name.upper()}" for name in Settings.model_fields
    if name not in ("channels", "formations")
}


def read_secrets_file(path: Path) -> dict[str, str]:
    values = {}
    for number, line in enumerate(path.read_text().splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if "=" not in line:
            raise ConfigError(f"{path}:{number}: expected NAME=value")
        name, value = line.split("=", 1)
        values[name.strip()] = value.strip().strip("'\"")
    return values


def interpolate(node: Any, lookup: Mapping[str, str], where: str) -> Any:
    """Replace `${{ secrets.NAME }}` in every string of a parsed YAML tree."""
    if isinstance(node, dict):
        return {k: interpolate(v, lookup, f"{where}.{k}" if where else str(k))
                for k, v in node.items()}
    if isinstance(node, list):
        return [interpolate(v, lookup, f"{where}[{i}]") for i, v in enumerate(node)]
    if isinstance(node, str):
        def replace(match: re.Match[str]) -> str:
            name = match.group(1)
            if name not in lookup:
                raise ConfigError(
                    f"{where} needs secret {name}, which is not set: export {name}=… "
                    "or add it to the secrets file (THREADLINE_SECRETS_FILE)"
                )
            return lookup[name]
        return _SECRET_REF.sub(replace, node)
    return node


# What a formation file may hold, section by section: a misspelled key is an error with a
# did-you-mean, never silently ignored. Sections of the MUXI runtime that Threadline does
# not use (agents, llm, …) are accepted and left alone.
_SECTIONS: dict[str, set[str] | None] = {
    "id": None, "name": None, "description": None, "version": None, "schema": None,
    "author": None, "agents": None, "llm": None, "mcp": None, "overlord": None,
    "logging": None, "secrets": None,
    "memory": {"persistent", "credentials_key", "buffer", "working", "embedder"},
    "identity": {"secret", "cache", "types"},
    "server": {"admin_key", "client_key", "webchat_secret", "webchat_frame_ancestors", "host",
               "port"},
    "formations": None,
    "channels": None,
}


def _check_keys(doc: Mapping[str, Any], source: Path) -> None:
    for key, value in doc.items():
        if key not in _SECTIONS:
            raise ConfigError(f"{source}: unknown section {key!r}{_near(key, _SECTIONS)}")
        known = _SECTIONS[key]
        if known is not None and isinstance(value, Mapping):
            for inner in value:
                if inner not in known:
                    raise ConfigError(f"{source}: unknown setting {key}.{inner}"
                                      f"{_near(str(inner), known)}")


def _near(word: str, choices: Any) -> str:
    close = difflib.get_close_matches(word, [str(c) for c in choices], 1, 0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _from_formation(doc: Mapping[str, Any], source: Path) -> dict[str, Any]:
    _check_keys(doc, source)
    values: dict[str, Any] = {}
    if "id" in doc:
        values["formation_id"] = doc["id"]
    persistent = ((doc.get("memory") or {}).get("persistent")) or {}
    if persistent:
        provider = str(persistent.get("provider", "")).lower()
        if provider not in _PROVIDERS:
            raise ConfigError(
                f"{source}: memory.persistent.provider must be postgres or sqlite, "
                f"got {provider or 'nothing'!r}"
            )
        url = persistent.get("connection_string")
        if provider == "sqlite" and not url:
            url = None
        elif not url:
            raise ConfigError(f"{source}: memory.persistent.connection_string is required")
        elif provider.startswith("postgres") and not str(url).startswith(("postgres://",
                                                                          "postgresql://")):
            raise ConfigError(f"{source}: a postgres connection_string starts with postgresql://")
        if url:
            values["database_url"] = url
    embedder = ((doc.get("memory") or {}).get("embedder")) or {}
    if embedder:
        if not isinstance(embedder, Mapping) or embedder.get("provider") not in (
                "local", "openai", "none"):
            raise ConfigError(f"{source}: memory.embedder.provider must be local, openai or "
                              "none")
        values["embeddings"] = embedder["provider"]
        for key in ("model", "base_url"):
            if key in embedder:
                values[f"embeddings_{key}"] = embedder[key]
    if (doc.get("memory") or {}).get("credentials_key"):
        values["credentials_key"] = doc["memory"]["credentials_key"]
    cache = ((doc.get("identity") or {}).get("cache")) or {}
    for key in ("url", "ttl", "max_entries"):
        if key in cache:
            values[f"cache_{key}"] = cache[key]
    channels = doc.get("channels") or {}
    if not isinstance(channels, dict) or not all(
        isinstance(v, dict) or v is None for v in channels.values()
    ):
        raise ConfigError(f"{source}: channels must map each channel name to its settings")
    values["channels"] = {name: dict(conf or {}) for name, conf in channels.items()
                          if (conf or {}).get("enabled", True) is not False}
    server = doc.get("server") or {}
    for key in ("admin_key", "client_key", "webchat_secret", "webchat_frame_ancestors", "host",
                "port"):
        if key in server:
            values[key] = server[key]
    formations = doc.get("formations") or []
    if not isinstance(formations, list) or not all(
        isinstance(f, dict) and {"id", "admin_key", "client_key"} <= set(f) for f in formations
    ):
        raise ConfigError(f"{source}: formations is a list of {{id, admin_key, client_key}}")
    values["formations"] = formations
    if "secret" in (doc.get("identity") or {}):
        values["identity_secret"] = doc["identity"]["secret"]
    types = (doc.get("identity") or {}).get("types") or []
    if not isinstance(types, list) or not all(isinstance(t, str) for t in types):
        raise ConfigError(f"{source}: identity.types is a list of type names, like [crm]")
    values["identity_types"] = types
    return values


def load_formation(path: Path, lookup: Mapping[str, str]) -> dict[str, Any]:
    try:
        doc = yaml.safe_load(path.read_text()) or {}
    except OSError as exc:
        raise ConfigError(f"cannot read formation file {path}: {exc.strerror}") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"formation file {path} is not valid YAML: {exc}") from exc
    if not isinstance(doc, dict):
        raise ConfigError(f"formation file {path} must be a mapping at the top level")
    interpolated: dict[str, Any] = interpolate(doc, lookup, "")
    return interpolated


def load_settings(environ: Mapping[str, str] | None = None) -> Settings:
    environ = os.environ if environ is None else environ
    from_env = {name: environ[var] for name, var in _ENV_FIELDS.items() if environ.get(var)}
    values: dict[str, Any] = {}

    secrets_file = from_env.get("secrets_file")
    lookup: dict[str, str] = {}
    if secrets_file:
        path = Path(secrets_file)
        if not path.exists():
            raise ConfigError(f"THREADLINE_SECRETS_FILE names {path}, which does not exist")
        lookup.update(read_secrets_file(path))
    lookup.update(environ)

    formation_file = from_env.get("formation_file")
    if formation_file is None and Path("formation.yaml").exists():
        formation_file = "formation.yaml"
    if formation_file:
        path = Path(formation_file)
        values.update(_from_formation(load_formation(path, lookup), path))
        values["formation_file"] = path

    values.update(from_env)
    try:
        return Settings(**values)
    except ValidationError as exc:
        problems = []
        for error in exc.errors():
            name = str(error["loc"][0]) if error["loc"] else "settings"
            problems.append(f"{_ENV_FIELDS.get(name, name)}: {error['msg']}")
        raise ConfigError("invalid settings: " + "; ".join(problems)) from None
