"""The application's user errors."""


class UsageError(ValueError):
    """A command cannot start as asked (a bad option, a missing or unreadable input, an output folder it must
    not touch); the message says what was received and what is expected. Raised before anything is read or
    written; the CLI prints it as one line and exits with status 2. A ValueError, for callers of the API."""
