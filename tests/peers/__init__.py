"""Local stand-in servers that speak each platform's wire protocol, for tests."""
