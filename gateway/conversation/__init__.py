"""The conversation core: every transport hands a message to the same engine."""
