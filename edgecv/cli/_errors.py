"""How the CLI reports a failure: exit codes and one-line messages (the contract: docs/errors.md).

An :class:`~edgecv.errors.EdgecvError` is one line with its own exit code; an OS error on a file is one line,
exit 2; anything else is a bug: one line naming the command, the exception and a log file holding the full
traceback, exit 1. ``--debug`` (or ``EDGECV_DEBUG=1``) shows the traceback instead.
"""

from __future__ import annotations

import errno
import os
import sys
import tempfile
import time
import traceback
from pathlib import Path

import click

from edgecv.distributed import launched_by_torchrun, rank
from edgecv.errors import UserError

_DEBUG = False
# errnos that describe the machine or a path the user gave, not a bug
_ENV_ERRNOS = {errno.ENOSPC, errno.EROFS, errno.EACCES, errno.EPERM, errno.EDQUOT, errno.ENOTDIR, errno.EISDIR,
               errno.ENOENT, errno.EEXIST, errno.ENAMETOOLONG, errno.EMFILE}


def debug_option(f):
    def cb(ctx, param, value):
        global _DEBUG
        _DEBUG = _DEBUG or bool(value)
        return value

    return click.option("--debug", is_flag=True, expose_value=False, is_eager=True, callback=cb,
                        help="Show the full traceback of an unexpected error (or set EDGECV_DEBUG=1).")(f)


def debug_enabled() -> bool:
    return _DEBUG or os.environ.get("EDGECV_DEBUG", "").strip().lower() in ("1", "true", "yes", "on")


def fail(msg: str, code: int) -> None:
    """Print ``edgecv: error[ [rank N]]: msg`` on stderr and exit with ``code``."""
    try:
        where = f" [rank {rank()}]" if launched_by_torchrun() else ""
    except UserError:  # a malformed WORLD_SIZE: that is the error being reported
        where = ""
    click.echo(f"edgecv: error{where}: {msg}", err=True)
    sys.exit(code)


def os_error_message(e: OSError) -> str | None:
    """One line for an OS error on a path the user gave (full disk, permission, missing path), else None."""
    if e.errno not in _ENV_ERRNOS:
        return None
    what = e.strerror or str(e)
    return f"{e.filename}: {what}" if e.filename else what


def _command(argv: list[str] | None) -> str:
    args = sys.argv[1:] if argv is None else argv
    return next((a for a in args if not a.startswith("-")), "edgecv")


def write_log(exc: BaseException, argv: list[str] | None) -> Path | None:
    """Write the command line and the full traceback to a new log file; its path (None if nothing is writable)."""
    from edgecv import __version__

    text = (f"edgecv {__version__}  {time.strftime('%Y-%m-%d %H:%M:%S')}  pid {os.getpid()}  rank {rank()}\n"
            f"command: edgecv {' '.join(sys.argv[1:] if argv is None else argv)}\n\n"
            + "".join(traceback.format_exception(type(exc), exc, exc.__traceback__)))
    name = f"edgecv-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.log"
    dirs = [os.environ.get("EDGECV_LOG_DIR"), os.path.join(os.environ.get("EDGECV_CACHE") or
                                                           Path.home() / ".cache" / "edgecv", "logs"),
            tempfile.gettempdir()]
    for d in filter(None, dirs):
        try:
            Path(d).mkdir(parents=True, exist_ok=True)
            p = Path(d) / name
            p.write_text(text)
            return p
        except OSError:
            continue
    return None


def unexpected(exc: Exception, argv: list[str] | None) -> None:
    """The safety net: one line (what failed, the log file, --debug) and exit 1; with --debug re-raise it."""
    if debug_enabled():
        raise exc
    log = write_log(exc, argv)
    first = (str(exc).strip().splitlines() or [""])[0][:200]
    what = f"{type(exc).__name__}: {first}" if first else type(exc).__name__
    where = f"full traceback in {log}; " if log else ""
    fail(f"unexpected error in '{_command(argv)}': {what} ({where}rerun with --debug to show it)", 1)
