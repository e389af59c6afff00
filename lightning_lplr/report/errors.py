"""Exit statuses of ``lightning-lplr`` and the one exception type the report raises.

Every failure the report anticipates is a :class:`ReportError` carrying a one-line
message and an exit status; the command line prints ``lightning-lplr: error: <message>``
on stderr and exits with that status, never with a traceback.

* ``EXIT_OK = 0``: the report was written.
* ``EXIT_INTERNAL = 1``: an unexpected error (a bug); ``--debug`` shows the traceback.
* ``EXIT_USAGE = 2``: a bad command line (argparse's own status).
* ``EXIT_NOT_FOUND = 3``: a path does not exist or cannot be opened.
* ``EXIT_NO_DATA = 4``: no runs found, or no run holds a key under the prefix.
* ``EXIT_BAD_INPUT = 5``: a corrupt or truncated event file, a malformed CSV.
* ``EXIT_MISSING_DEPENDENCY = 6``: ``--plot`` without matplotlib installed.
* ``EXIT_OUTPUT = 7``: the plot file cannot be written.

Example:
    >>> err = ReportError("no runs under 'logs'", EXIT_NO_DATA)
    >>> err.exit_code, str(err)
    (4, "no runs under 'logs'")
"""

from __future__ import annotations

__all__ = [
    "EXIT_BAD_INPUT",
    "EXIT_INTERNAL",
    "EXIT_MISSING_DEPENDENCY",
    "EXIT_NOT_FOUND",
    "EXIT_NO_DATA",
    "EXIT_OK",
    "EXIT_OUTPUT",
    "EXIT_USAGE",
    "ReportError",
]

EXIT_OK = 0
EXIT_INTERNAL = 1
EXIT_USAGE = 2
EXIT_NOT_FOUND = 3
EXIT_NO_DATA = 4
EXIT_BAD_INPUT = 5
EXIT_MISSING_DEPENDENCY = 6
EXIT_OUTPUT = 7


class ReportError(Exception):
    """An anticipated failure of the report: a one-line message and the exit status to use.

    Args:
        message: one line saying what is wrong and, where possible, what to do.
        exit_code: one of the ``EXIT_*`` statuses of this module.
    """

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code
