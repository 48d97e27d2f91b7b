"""A real SMTP server for tests: aiosmtpd's Controller on a free port of 127.0.0.1.

It accepts every message and records it (envelope and parsed message). With `user` and
`password` it requires AUTH (over plain text: tests run without TLS). `stop()` and `start()`
keep the port and the record, so a test can take the server away and bring it back.
"""

from __future__ import annotations

import asyncio
import email.policy
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from email.message import EmailMessage
from email.parser import BytesParser
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword

from tests.peers.imap import free_port


@dataclass(frozen=True)
class Received:
    mail_from: str
    rcpt_tos: list[str]
    data: bytes

    @property
    def message(self) -> EmailMessage:
        parsed = BytesParser(policy=email.policy.default).parsebytes(self.data)
        assert isinstance(parsed, EmailMessage)
        return parsed

    @property
    def text(self) -> str:
        body = self.message.get_body(preferencelist=("plain",))
        return "" if body is None else str(body.get_content())  # type: ignore[attr-defined]


class _Handler:
    def __init__(self, peer: SmtpServer) -> None:
        self.peer = peer

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        received = Received(envelope.mail_from, list(envelope.rcpt_tos), bytes(envelope.content))
        with self.peer._lock:
            self.peer.messages.append(received)
        return "250 Message accepted for delivery"


class SmtpServer:
    def __init__(self, *, user: str | None = None, password: str | None = None) -> None:
        self.host = "127.0.0.1"
        self.port = free_port()
        self.user, self.password = user, password
        self.messages: list[Received] = []
        self.logins: list[str] = []
        self._lock = threading.Lock()
        self._controller: Controller | None = None

    def _authenticate(self, server: Any, session: Any, envelope: Any, mechanism: str,
                      auth_data: Any) -> AuthResult:
        ok = (isinstance(auth_data, LoginPassword)
              and auth_data.login.decode() == self.user
              and auth_data.password.decode() == self.password)
        if ok:
            self.logins.append(self.user or "")
            return AuthResult(success=True)
        # handled=False: aiosmtpd answers 535 itself (handled=True leaves the client hanging).
        return AuthResult(success=False, handled=False)

    def start(self) -> None:
        kwargs: dict[str, Any] = {}
        if self.user is not None:
            kwargs = {"authenticator": self._authenticate, "auth_required": True,
                      "auth_require_tls": False}
        self._controller = Controller(_Handler(self), hostname=self.host, port=self.port,
                                      ready_timeout=10, **kwargs)
        self._controller.start()

    def stop(self) -> None:
        controller, self._controller = self._controller, None
        if controller is not None:
            controller.stop()

    @property
    def running(self) -> bool:
        return self._controller is not None

    def received(self) -> list[Received]:
        with self._lock:
            return list(self.messages)

    async def wait_for(self, count: int, timeout: float = 15.0) -> list[Received]:
        """The first `count` messages, waiting for them at most `timeout` seconds."""
        async with asyncio.timeout(timeout):
            while len(self.received()) < count:
                await asyncio.sleep(0.02)
        return self.received()[:count]


@pytest.fixture
def smtp_server() -> Iterator[SmtpServer]:
    """An SMTP server that wants AUTH (user "threadline", password "smtp-test-password")."""
    server = SmtpServer(user="threadline", password="smtp-test-password")
    server.start()
    try:
        yield server
    finally:
        server.stop()
