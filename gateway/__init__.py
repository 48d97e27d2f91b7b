"""The conversation engine, the HTTP API, the CLI, wiring and lifecycle."""
