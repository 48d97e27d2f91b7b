"""Channel adapters: the contract, the loader and the supervisor that keeps them running.

A channel is one module `adapters/<name>.py` with a function
`create(config: dict, engine: Engine) -> Adapter`, enabled by a `channels.<name>` section in
the formation file. The core never imports an adapter by name; it loads what is configured.
"""

from __future__ import annotations

import asyncio
import importlib
import random
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import structlog

from gateway.messages import OutboundMessage  # noqa: F401  (used in the Protocol)

log = structlog.get_logger("threadline.channels")


class AdapterConfigError(Exception):
    """A channel's settings are missing or wrong; the message names the setting."""


class Adapter(Protocol):
    name: str

    async def run(self) -> None:
        """Serve the channel until cancelled; raising means it failed and is retried."""
