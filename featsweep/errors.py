"""The one exception type for bad input: its message says what went wrong and how to fix it."""


class FeatsweepError(Exception):
    """A user-facing error. The entry point prints its message on one line, without a traceback."""
