"""A real IMAP server for tests: Dovecot from a self-contained configuration in a temp dir.

Runs in the foreground (`dovecot -F -c FILE`) as nobody, on a free port of 127.0.0.1, with a
static passdb (any user name, one password) and a maildir per user, so each test can use a
user of its own. `stop()` and `start()` keep the maildirs and the port: a restart mid-test is
a real server going away and coming back.

Needs Debian's dovecot-imapd (`apt-get install -y dovecot-imapd`); where the binary is missing
the fixture skips with the reason, unless THREADLINE_REQUIRE_SERVICES=1, where it fails.
"""

from __future__ import annotations

import grp
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import aioimaplib
import pytest

PASSWORD = "imap-test-password"
REQUIRE = os.environ.get("THREADLINE_REQUIRE_SERVICES") == "1"
DOVECOT = shutil.which("dovecot") or ("/usr/sbin/dovecot" if os.path.exists("/usr/sbin/dovecot")
                                      else None)
# As root, Dovecot runs as nobody (setpriv); otherwise as whoever runs the tests.
RUN_AS = (("nobody", "nogroup") if os.geteuid() == 0
          else (pwd.getpwuid(os.geteuid()).pw_name, grp.getgrgid(os.getegid()).gr_name))

_CONFIG = """\
protocols = imap
listen = 127.0.0.1
ssl = no
disable_plaintext_auth = no
auth_mechanisms = plain login
auth_failure_delay = 0
first_valid_uid = 1
base_dir = {root}/run
state_dir = {root}/state
log_path = {root}/dovecot.log
info_log_path = {root}/dovecot.log
default_login_user = {user}
default_internal_user = {user}
default_internal_group = {group}
mail_location = maildir:{root}/mail/%u
mail_fsync = always
passdb {{
  driver = static
  args = password={password}
}}
userdb {{
  driver = static
  args = uid={user} gid={group} home={root}/home/%u
}}
service imap-login {{
  chroot =
  inet_listener imap {{
    address = 127.0.0.1
    port = {port}
  }}
  inet_listener imaps {{
    port = 0
  }}
}}
service anvil {{
  chroot =
}}
service stats {{
  unix_listener stats-reader {{
    mode = 0600
  }}
  unix_listener stats-writer {{
    mode = 0600
  }}
}}
"""


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        pass


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class DovecotServer:
    """One Dovecot instance; its files live in a temp dir of its own, removed by `close()`.

    (Not under pytest's tmp_path: that is private to root, and Dovecot runs as nobody.)
    """

    def __init__(self, *, extra_config: str = "") -> None:
        self.root = Path(tempfile.mkdtemp(prefix="threadline-dovecot-"))
        self.extra_config = extra_config
        self.host = "127.0.0.1"
        self.port = free_port()
        self.password = PASSWORD
        self.config = self.root / "dovecot.conf"
        self._process: subprocess.Popen[bytes] | None = None

    def _prepare(self) -> None:
        for sub in ("run", "state", "mail", "home"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        self.config.write_text(_CONFIG.format(root=self.root, port=self.port, password=PASSWORD,
                                              user=RUN_AS[0], group=RUN_AS[1])
                               + self.extra_config)
        (self.root / "run" / "master.pid").unlink(missing_ok=True)
        if os.geteuid() == 0:
            shutil.chown(self.root, *RUN_AS)
            for parent, dirs, files in os.walk(self.root):
                for name in dirs + files:
                    shutil.chown(os.path.join(parent, name), *RUN_AS)

    def start(self, timeout: float = 10.0) -> None:
        assert DOVECOT is not None
        self._prepare()
        command = [DOVECOT, "-F", "-c", str(self.config)]
        if os.geteuid() == 0:
            command = ["setpriv", f"--reuid={RUN_AS[0]}", f"--regid={RUN_AS[1]}",
                       "--clear-groups", *command]
        # A session of its own, so stop() ends the whole tree: Dovecot's per-connection imap
        # processes outlive the master otherwise, and a client would not notice the outage.
        self._process = subprocess.Popen(command, stdin=subprocess.DEVNULL,
                                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                         start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                output = self._process.stdout.read().decode(errors="replace")  # type: ignore[union-attr]
                raise RuntimeError(f"dovecot exited ({self._process.returncode}): {output}"
                                   f"\n{self.log()}")
            try:
                with socket.create_connection((self.host, self.port), timeout=0.5) as sock:
                    sock.settimeout(2)
                    if sock.recv(100).startswith(b"* OK"):
                        return
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"dovecot did not answer on port {self.port} in {timeout}s\n"
                           f"{self.log()}")

    def stop(self, timeout: float = 10.0) -> None:
        process, self._process = self._process, None
        if process is None:
            return
        _signal_group(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            _signal_group(process.pid, signal.SIGKILL)
            process.wait(timeout)
        _signal_group(process.pid, signal.SIGKILL)  # children still draining
        if process.stdout is not None:
            process.stdout.close()
        # Until the listener is gone a client could still reach the dying server.
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                socket.create_connection((self.host, self.port), timeout=0.2).close()
            except OSError:
                return
            time.sleep(0.05)

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.root, ignore_errors=True)

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def log(self) -> str:
        path = self.root / "dovecot.log"
        return path.read_text(errors="replace")[-4000:] if path.exists() else ""

    async def client(self, user: str, mailbox: str | None = "INBOX") -> aioimaplib.IMAP4:
        """A logged-in client, with `mailbox` selected (None: none selected)."""
        imap = aioimaplib.IMAP4(self.host, self.port, timeout=10)
        await imap.wait_hello_from_server()
        response = await imap.login(user, self.password)
        assert response.result == "OK", response
        if mailbox is not None:
            response = await imap.select(mailbox)
            assert response.result == "OK", response
        return imap


def skip_without_dovecot() -> None:
    if DOVECOT is not None:
        return
    message = ("Dovecot is not installed (the dovecot binary is missing; "
               "apt-get install -y dovecot-imapd)")
    if REQUIRE:
        pytest.fail(message + "; THREADLINE_REQUIRE_SERVICES=1 forbids skipping", pytrace=False)
    pytest.skip(message)


@pytest.fixture(scope="session")
def dovecot() -> Iterator[DovecotServer]:
    """One Dovecot for the test run; each test takes a user (a maildir) of its own."""
    skip_without_dovecot()
    server = DovecotServer()
    try:
        server.start()
        yield server
    finally:
        server.close()
