"""The one exception the CLI turns into a single line and exit code 2."""


class UserError(ValueError):
    """Bad input from the user: the message names the problem and the fix. A ValueError, as Python and
    scikit-learn expect of a bad value."""
