"""The base of every error a user can cause and fix (bad file, wrong setting, missing input).

Step scripts print such an error as one line and exit non-zero, without a traceback.
"""


class UserError(Exception):
    """An error whose message names the file, line or setting to fix."""
