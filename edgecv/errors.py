"""Error types that the CLI maps to exit codes.

* :class:`UserError` — bad input (path, flag, data, checkpoint). The CLI prints one line on stderr and exits 2.
* :class:`CheckFailed` — the command ran but a check failed (budget, regression, validation). Exit 1.
* :class:`TrainingError` — training diverged (NaN/inf loss). Exit 1.
"""


class EdgecvError(Exception):
    exit_code = 1


class UserError(EdgecvError):
    exit_code = 2


class CheckFailed(EdgecvError):
    exit_code = 1


class TrainingError(EdgecvError):
    exit_code = 1
