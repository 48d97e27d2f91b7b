"""Per-user and per-session memory."""
