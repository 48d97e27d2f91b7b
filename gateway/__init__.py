"""The conversation engine, the HTTP API, the CLI, wiring and lifecycle."""

__version__ = "0.1.0"
