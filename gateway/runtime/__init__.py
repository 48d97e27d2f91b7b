"""Wiring and lifecycle: open the stores, build the engine, run the channels and the server."""
