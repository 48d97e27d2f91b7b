"""The web chat: a page where a person talks to the assistant, live."""

from gateway.webchat.tokens import TokenError, sign_token, verify_token

__all__ = ["TokenError", "sign_token", "verify_token"]
