"""Write the secrets a Threadline deployment needs, once: `python make-secrets.py DIR`.

Creates DIR/secrets.env (NAME=value lines for the formation file's `${{ secrets.NAME }}`,
read through THREADLINE_SECRETS_FILE) and DIR/postgres-password (for the PostgreSQL image's
POSTGRES_PASSWORD_FILE). Existing files are kept as they are, so running it again never
changes a key that stored data depends on. Standard library only: it runs in the gateway
image as compose's one-shot `secrets` service, and on any machine with Python.
"""

from __future__ import annotations

import base64
import os
import secrets
import sys
from pathlib import Path


def generate() -> dict[str, str]:
    return {
        # Hex: it goes into a postgresql:// URL unescaped.
        "POSTGRES_PASSWORD": secrets.token_hex(24),
        "IDENTITY_SECRET": secrets.token_urlsafe(32),
        # A Fernet key: 32 random bytes, url-safe base64.
        "CREDENTIALS_KEY": base64.urlsafe_b64encode(os.urandom(32)).decode(),
        "ADMIN_KEY": "tla_" + secrets.token_urlsafe(24),
        "CLIENT_KEY": "tlc_" + secrets.token_urlsafe(24),
        "WEBCHAT_SECRET": secrets.token_urlsafe(32),
    }


def _write_new(path: Path, text: str) -> bool:
    """Write a file readable by its owner alone, unless it exists; True when written."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return False
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
    return True


def main(folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    values = generate()
    lines = "".join(f"{name}={value}\n" for name, value in values.items())
    wrote = _write_new(folder / "secrets.env", "# Written by make-secrets.py; keep it private.\n"
                       + lines)
    if wrote:
        _write_new(folder / "postgres-password", values["POSTGRES_PASSWORD"])
    elif not (folder / "postgres-password").exists():
        # Keep the two files in step: the password the database got is the one in secrets.env.
        for line in (folder / "secrets.env").read_text().splitlines():
            if line.startswith("POSTGRES_PASSWORD="):
                _write_new(folder / "postgres-password", line.split("=", 1)[1].strip())
    print(f"{folder}/secrets.env: {'written' if wrote else 'kept as it was'}")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python make-secrets.py DIR")
    main(Path(sys.argv[1]))
