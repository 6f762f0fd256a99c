"""The one exception class for errors a user can cause.

Every message names the problem and the fix. Raised before any output is written. (`Interrupted`
is not an error: it carries a signal to the command boundary.)
"""


class LsMergeError(Exception):
    """Bad input, bad configuration or a refused operation; the message says how to fix it."""


class Interrupted(BaseException):
    """SIGTERM or SIGINT arrived while a command ran (raised by the handler `lsmerge.cli.main`
    installs). A `BaseException`, like `KeyboardInterrupt`, so `except Exception` does not stop
    it: `with` blocks and `finally` clauses clean up on the way out to the command boundary."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum
