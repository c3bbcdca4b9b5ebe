"""Exception types that mean "the user asked for something that cannot be done" (CLI exit code 1)."""


class UserError(ValueError):
    """A bad argument, file or folder; the message names it and fits on one line."""
