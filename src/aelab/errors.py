"""The one exception the CLI turns into a single line and exit code 2."""


class UserError(ValueError):
    """Bad input from the user: the message names the problem and the fix, on one line (a line break in text
    quoted from a damaged file is shown escaped, never as a second line). A ValueError, as Python and
    scikit-learn expect of a bad value."""

    def __init__(self, message: str):
        super().__init__(str(message).replace("\r", "\\r").replace("\n", "\\n"))
