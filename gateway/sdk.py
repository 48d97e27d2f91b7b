"""A small client for the Threadline (MUXI-compatible) formation API, sync and async.

    from gateway.sdk import FormationClient
    formation = FormationClient(url="http://127.0.0.1:8000", admin_key=..., client_key=...)
    result = formation.associate_user_identifiers(
        identifiers=["alice@email.com", {"identifier": "U98765ABC", "type": "slack"},
                     ("user_123", "internal")],
        user_id=None,
    )
    print(result["muxi_user_id"])
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

import httpx


class ThreadlineError(Exception):
    def __init__(self, status: int, code: str, message: str,
                 details: dict[str, Any] | None = None) -> None:
        super().__init__(f"{code}: {message}")
        self.status = status
        self.code = code
        self.message = message
        self.details = details or {}


class AuthenticationError(ThreadlineError): ...
class AuthorizationError(ThreadlineError): ...
class NotFoundError(ThreadlineError): ...
class ConflictError(ThreadlineError): ...
class IdentifierConflictError(ConflictError): ...
class ValidationError(ThreadlineError): ...
class ServerError(ThreadlineError): ...


def _error(response: httpx.Response) -> ThreadlineError:
    try:
        body = response.json()
    except ValueError:
        body = {}
    code = str(body.get("code") or "ERROR")
    message = str(body.get("message") or response.reason_phrase)
    details = body.get("details") if isinstance(body.get("details"), dict) else {}
    status = response.status_code
    kind: type[ThreadlineError] = {401: AuthenticationError, 403: AuthorizationError,
                                   404: NotFoundError, 409: ConflictError,
                                   422: ValidationError}.get(status, ThreadlineError)
    if code == "IDENTIFIER_CONFLICT":
        kind = IdentifierConflictError
    elif status >= 500:
        kind = ServerError
    return kind(status, code, message, details)


def _identifier(raw: Any) -> Any:
    return list(raw) if isinstance(raw, tuple) else raw


def _base_url(url: str | None, server_url: str | None, formation_id: str | None) -> str:
    if url:
        return url.rstrip("/") + "/v1"
    if server_url and formation_id:
        return f"{server_url.rstrip('/')}/api/{formation_id}/v1"
    raise ValueError("give url=, or server_url= and formation_id=")


class _Calls:
    """The requests each method makes, shared by the sync and async clients."""

    def __init__(self, admin_key: str | None, client_key: str | None) -> None:
        self.admin_key = admin_key
        self.client_key = client_key

    def headers(self, admin: bool, user_id: str | None = None) -> dict[str, str]:
        """The client key where it suffices (the admin key may stand in for it)."""
        if not admin and self.client_key:
            headers = {"X-Muxi-Client-Key": self.client_key}
        elif self.admin_key:
            headers = {"X-Muxi-Admin-Key": self.admin_key}
        else:
            raise ValueError("this call needs the " + ("admin" if admin else "client") + " key")
        if user_id:
            headers["X-Muxi-User-ID"] = user_id
        return headers

    def associate(self, identifiers: list[Any], user_id: str | None) -> dict[str, Any]:
        return dict(method="POST", url="/users/identifiers", headers=self.headers(True),
                    json={"muxi_user_id": user_id,
                          "identifiers": [_identifier(i) for i in identifiers]})

    def identifiers(self, user_id: str) -> dict[str, Any]:
        return dict(method="GET", url=f"/users/identifiers/{quote(user_id, safe='')}",
                    headers=self.headers(True))

    def unlink(self, identifier: str) -> dict[str, Any]:
        return dict(method="DELETE", url=f"/users/identifiers/{quote(identifier, safe='@+.:')}",
                    headers=self.headers(True))

    def resolve(self, identifier: Any, create_user: bool) -> dict[str, Any]:
        return dict(method="POST", url="/users/resolve", headers=self.headers(False),
                    json={"identifier": _identifier(identifier), "create_user": create_user})

    def chat(self, message: str, user_id: str, session_id: str | None) -> dict[str, Any]:
        body: dict[str, Any] = {"message": message}
        if session_id:
            body["session_id"] = session_id
        return dict(method="POST", url="/chat", headers=self.headers(False, user_id), json=body)


def _data(response: httpx.Response) -> Any:
    if response.status_code >= 400:
        raise _error(response)
    body = response.json()
    return body.get("data", body) if isinstance(body, dict) else body


class FormationClient:
    def __init__(self, url: str | None = None, *, server_url: str | None = None,
                 formation_id: str | None = None, admin_key: str | None = None,
                 client_key: str | None = None, timeout: float = 30.0) -> None:
        self._calls = _Calls(admin_key, client_key)
        self._http = httpx.Client(base_url=_base_url(url, server_url, formation_id),
                                  timeout=timeout)

    def __enter__(self) -> FormationClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def _send(self, request: dict[str, Any]) -> Any:
        return _data(self._http.request(**request))

    def associate_user_identifiers(self, identifiers: list[Any],
                                   user_id: str | None = None) -> dict[str, Any]:
        """Link identifiers to `user_id`, or (None) to their existing owner or a new user."""
        return self._send(self._calls.associate(identifiers, user_id))

    def get_user_identifiers(self, user_id: str) -> list[str]:
        return [i["identifier"] for i in self._send(self._calls.identifiers(user_id))
                ["identifiers"]]

    def unlink_user_identifier(self, identifier: str) -> dict[str, Any]:
        return self._send(self._calls.unlink(identifier))

    def resolve_user(self, identifier: Any, create_user: bool = True) -> str:
        return self._send(self._calls.resolve(identifier, create_user))["muxi_user_id"]

    def chat(self, message: str, user_id: str, session_id: str | None = None) -> dict[str, Any]:
        return self._send(self._calls.chat(message, user_id, session_id))


class AsyncFormationClient:
    def __init__(self, url: str | None = None, *, server_url: str | None = None,
                 formation_id: str | None = None, admin_key: str | None = None,
                 client_key: str | None = None, timeout: float = 30.0) -> None:
        self._calls = _Calls(admin_key, client_key)
        self._http = httpx.AsyncClient(base_url=_base_url(url, server_url, formation_id),
                                       timeout=timeout)

    async def __aenter__(self) -> AsyncFormationClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def _send(self, request: dict[str, Any]) -> Any:
        return _data(await self._http.request(**request))

    async def associate_user_identifiers(self, identifiers: list[Any],
                                         user_id: str | None = None) -> dict[str, Any]:
        return await self._send(self._calls.associate(identifiers, user_id))

    async def get_user_identifiers(self, user_id: str) -> list[str]:
        data = await self._send(self._calls.identifiers(user_id))
        return [i["identifier"] for i in data["identifiers"]]

    async def unlink_user_identifier(self, identifier: str) -> dict[str, Any]:
        return await self._send(self._calls.unlink(identifier))

    async def resolve_user(self, identifier: Any, create_user: bool = True) -> str:
        return (await self._send(self._calls.resolve(identifier, create_user)))["muxi_user_id"]

    async def chat(self, message: str, user_id: str,
                   session_id: str | None = None) -> dict[str, Any]:
        return await self._send(self._calls.chat(message, user_id, session_id))
