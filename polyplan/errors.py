"""The one base class for errors a user caused and can fix.

The CLI prints ``str(error)`` as one line on stderr and exits non-zero; anything that is not a
``UserError`` is a bug and keeps its traceback."""


class UserError(ValueError):
    """Bad input, a missing file or model, an unsupported setting: say what and how to fix it."""
