"""Error types that the CLI maps to exit codes (the contract: docs/errors.md).

* :class:`UserError` — bad input (path, flag, data, checkpoint, device). The CLI prints one line on stderr and exits 2.
* :class:`OutputError` — an output could not be written (disk full, a parent path that is a file, read-only). Exit 2.
  Also an :class:`OSError`, so code that handles OS errors keeps working.
* :class:`CheckFailed` — the command ran but a check failed (budget, regression, validation). Exit 1.
* :class:`TrainingError` — training diverged (NaN/inf loss). Exit 1.

Anything else reaching the CLI is a bug: one line, the traceback in a log file, exit 1.
"""


class EdgecvError(Exception):
    exit_code = 1


class UserError(EdgecvError):
    exit_code = 2


class OutputError(UserError, OSError):
    """Writing ``path`` failed; ``str()`` is the one-line message, ``path`` the output that was not written."""

    def __init__(self, path, reason: str):
        super().__init__(f"cannot write {path}: {reason}")
        self.path = str(path)
        self.reason = reason

    def __str__(self) -> str:
        return self.args[0]


class CheckFailed(EdgecvError):
    exit_code = 1


class TrainingError(EdgecvError):
    exit_code = 1
