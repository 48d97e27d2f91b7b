"""Adapters talk to the core only through the narrow Conversations port, and the core never
imports an adapter."""

import ast
import inspect
from pathlib import Path

from gateway.conversation.ports import Conversations

ROOT = Path(__file__).parent.parent
PORT = {name for name, _ in inspect.getmembers(Conversations) if not name.startswith("_")}
PORT |= set(Conversations.__annotations__)


def test_the_port_is_small():
    assert sorted(PORT) == ["accept", "formation", "handle", "link_by_email", "owner"]


def test_adapters_use_only_the_port():
    misuse = []
    for path in sorted((ROOT / "adapters").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Attribute)
                    and node.value.attr == "engine" and node.attr not in PORT):
                misuse.append(f"{path.name}:{node.lineno} engine.{node.attr}")
    assert misuse == []


def test_the_core_never_imports_an_adapter():
    found = []
    for folder in ("gateway", "identity", "memory", "config"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text())):
                names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                         else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
                found += [f"{path.relative_to(ROOT)}: {n}" for n in names
                          if n.split(".")[0] == "adapters"]
    assert found == []
