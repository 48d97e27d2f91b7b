"""Figures a test measured, printed at the end of the run (with or without -s) by the
terminal-summary hook in tests/conftest.py."""

from __future__ import annotations

from collections.abc import Iterable

import pytest

_SECTIONS = pytest.StashKey[list[tuple[str, list[str]]]]()


def report(config: pytest.Config, title: str, lines: Iterable[str]) -> None:
    config.stash.setdefault(_SECTIONS, []).append((title, list(lines)))


def sections(config: pytest.Config) -> list[tuple[str, list[str]]]:
    return config.stash.get(_SECTIONS, [])
