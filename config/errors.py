"""The one root of Threadline's errors. Imports nothing."""


class ThreadlineError(Exception):
    """Every error Threadline raises on purpose derives from this: a caller (the CLI, the
    API's handlers, the supervisor) can tell "we said no, and why" from a crash."""
