"""What one client may cost ``edgecv serve``: the limits' defaults, the decode-memory budget, giving memory back.

Light on purpose (no FastAPI, no uvicorn): the CLI reads the defaults from here for its flags. What each limit
does and its flag: docs/serve.md ("Limits: what one client may cost").
"""

from __future__ import annotations

import ctypes
import ctypes.util
import threading
from contextlib import contextmanager

KEEP_ALIVE_S = 5.0
HEADER_TIMEOUT_S = 10.0
BODY_TIMEOUT_S = 30.0
MAX_CONNECTIONS = 4096
MAX_DECODE_MB = 256.0
FD_RESERVE = 64  # descriptors kept for the process itself (model files, logs, the listening socket)
TRIM_AFTER_BYTES = 32 * 1024 * 1024  # a decode this large is followed by malloc_trim


class DecodeBusy(Exception):
    """The decode budget is taken by other requests right now: 503 + Retry-After."""


class DecodeTooLarge(Exception):
    """One image needs more decode memory than the whole budget: 413."""


class DecodeBudget:
    """Bytes of decoded pixels in flight across all requests (threads), bounded by ``limit`` bytes.

    :meth:`hold` never waits: a decode that does not fit now is refused (503), so a burst of large images costs
    at most ``limit`` of memory instead of queueing behind one another.
    """

    def __init__(self, limit: int):
        self.limit = int(limit)
        self.used = 0
        self._lock = threading.Lock()

    @contextmanager
    def hold(self, nbytes: int):
        n = int(nbytes)
        if n > self.limit:
            raise DecodeTooLarge(f"decoding this image needs about {n / 2**20:.0f} MB, more than the decode budget "
                                 f"of {self.limit / 2**20:.0f} MB (--max-decode-mb)")
        with self._lock:
            if self.used + n > self.limit:
                raise DecodeBusy(f"decode budget in use ({self.used / 2**20:.0f} of {self.limit / 2**20:.0f} MB, "
                                 f"this image needs {n / 2**20:.0f} MB)")
            self.used += n
        try:
            yield
        finally:
            with self._lock:
                self.used -= n
            if n >= TRIM_AFTER_BYTES:
                trim_memory()


_libc = None


def trim_memory() -> bool:
    """Return freed heap memory to the OS (glibc ``malloc_trim(0)``, every arena); False where there is none.

    glibc keeps freed memory of its heaps for reuse, and after a large ``free`` it raises its mmap threshold, so
    a decoding spike would otherwise stay in the server's RSS."""
    global _libc
    if _libc is None:
        name = ctypes.util.find_library("c")
        try:
            lib = ctypes.CDLL(name) if name else None
            _libc = lib if lib is not None and hasattr(lib, "malloc_trim") else False
        except OSError:
            _libc = False
    if not _libc:
        return False
    _libc.malloc_trim(0)
    return True


def connection_cap(wanted: int) -> int:
    """``wanted`` open connections, as far as the descriptor limit allows: the soft limit is raised towards the
    hard one first (a server needs one descriptor per connection; many systems default to 1024)."""
    try:
        import resource
    except ImportError:  # not POSIX
        return wanted
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = wanted + FD_RESERVE
    if soft != resource.RLIM_INFINITY and soft < need:
        new = need if hard == resource.RLIM_INFINITY else min(need, hard)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))
            soft = new
        except (ValueError, OSError):
            pass
    if soft == resource.RLIM_INFINITY:
        return wanted
    return max(1, min(wanted, soft - FD_RESERVE))
