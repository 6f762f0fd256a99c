"""The one exception class for errors a user can cause.

Every message names the problem and the fix. Raised before any output is written.
"""


class LsMergeError(Exception):
    """Bad input, bad configuration or a refused operation; the message says how to fix it."""
