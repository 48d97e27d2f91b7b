"""The web chat: a page where a person talks to the assistant, live."""

from gateway.webchat.tokens import Claims, TokenError, read_token, sign_token, verify_token

__all__ = ["Claims", "TokenError", "read_token", "sign_token", "verify_token"]
