"""User-facing errors.

Every problem caused by the user's input (a missing file, an unknown column, a bad config key)
is raised as :class:`DeltatuneError` with a one-line message that names the file, row or
column and says what to do. The CLI prints the message alone (no traceback) and exits with
status 2.
"""


class DeltatuneError(Exception):
    """A problem with the user's input, config or environment, explained in one line.

    Raised instead of a bare library exception wherever the user can fix the cause.
    The message must name the offending file/row/column/key and the remedy.
    """

    exit_code = 2

    def __init__(self, message: str):
        super().__init__(" ".join(str(message).split()))
