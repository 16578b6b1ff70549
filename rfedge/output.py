"""Where results go: stdout, a regular file replaced atomically, or anything else streamed.

- A regular file, or a path that does not exist yet: written to a temporary file beside it and
  renamed over it only when everything was written; an existing file keeps its permission bits
  (and owner, where the process may set it), a new one gets ``0666 & ~umask`` as ``open`` gives.
- A symbolic link: the file it points to is replaced; the link stays a link.
- Anything else that exists (a device such as ``/dev/null``, a FIFO, a socket): opened and
  written in place, never replaced or removed.
- A failed write (a full disk, a closed pipe) or an interruption removes the temporary file and
  leaves the target as it was; write errors become :class:`~rfedge.errors.OutputError`.
"""

from __future__ import annotations

import errno
import os
import stat
import sys
import tempfile
from pathlib import Path
from typing import IO

from .errors import OutputError, UsageError

STDOUT = "-"


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


class AtomicOutput:
    """A context manager giving a text stream for ``path`` (``None`` or ``-``: stdout)."""

    def __init__(self, path: str | os.PathLike | None, option: str = "--output", binary: bool = False):
        self.path = None if path is None or str(path) == STDOUT else Path(path)
        self.option = option
        self.binary = binary
        self._tmp: Path | None = None
        self._fh: IO[str] | None = None

    def _describe(self) -> str:
        return "standard output" if self.path is None else f"{self.option} {self.path}"

    def __enter__(self) -> IO[str]:
        if self.path is None:
            return sys.stdout.buffer if self.binary else sys.stdout
        target = Path(os.path.realpath(self.path))  # a link's target is replaced, the link stays
        if target.exists() and not target.is_file():
            if target.is_dir():
                raise UsageError(f"{self._describe()}: is a directory; pass a file name")
            self._fh = self._open_stream(target)  # a device, FIFO or socket: written in place
            return self._fh
        if not target.parent.is_dir():
            raise UsageError(f"{self._describe()}: directory {target.parent} does not exist")
        try:
            fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
        except OSError as e:
            raise OutputError(f"{self._describe()}: cannot write in {target.parent} ({e.strerror})") from None
        self._tmp, self._target = Path(tmp), target
        self._fh = os.fdopen(fd, "wb") if self.binary else os.fdopen(fd, "w", encoding="utf-8")
        return self._fh

    def _open_stream(self, target: Path) -> IO[str]:
        try:
            return open(target, "wb") if self.binary else open(target, "w", encoding="utf-8")
        except OSError as e:
            raise OutputError(f"{self._describe()}: cannot open for writing ({e.strerror})") from None

    def _keep_metadata(self) -> None:
        """The replacement gets the replaced file's mode and owner, or a new file's default mode."""
        try:
            st = os.stat(self._target)
        except FileNotFoundError:
            os.chmod(self._tmp, 0o666 & ~_umask())
            return
        os.chmod(self._tmp, stat.S_IMODE(st.st_mode))
        if hasattr(os, "chown") and (st.st_uid, st.st_gid) != (os.getuid(), os.getgid()):
            try:
                os.chown(self._tmp, st.st_uid, st.st_gid)
            except PermissionError:
                pass  # an unprivileged user replaces a file with its own ownership, as editors do

    def __exit__(self, exc_type, exc, tb) -> bool:
        try:
            if self.path is None:
                if exc_type is None:
                    flush_stdout()
            else:
                self._close(replace=exc_type is None)
        finally:
            if self._tmp is not None:
                self._tmp.unlink(missing_ok=True)
        if exc_type is not None and issubclass(exc_type, OSError) and not issubclass(exc_type, BrokenPipeError):
            raise OutputError(f"{self._describe()}: write failed ({exc.strerror or exc})") from None
        return False

    def _close(self, replace: bool) -> None:
        try:
            self._fh.close()
        except OSError as e:
            if replace:
                raise OutputError(f"{self._describe()}: write failed ({e.strerror})") from None
        if self._tmp is not None and replace:
            self._keep_metadata()
            os.replace(self._tmp, self._target)
            self._tmp = None


def flush_stdout() -> None:
    """Flush stdout; a reader that went away is BrokenPipeError, a full device an OutputError."""
    try:
        sys.stdout.flush()
    except BrokenPipeError:
        raise
    except OSError as e:
        if e.errno == errno.EPIPE:
            raise BrokenPipeError(e.errno, e.strerror) from None
        raise OutputError(f"standard output: write failed ({e.strerror})") from None


class Terminated(BaseException):
    """SIGTERM or SIGHUP arrived: unwinds like KeyboardInterrupt, so temporary files are removed."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


def raise_on_termination() -> None:
    """Turn SIGTERM and SIGHUP into :class:`Terminated` in the main thread (a CLI process's choice)."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        return

    def handler(signum, _frame):
        raise Terminated(signum)

    for sig in (signal.SIGTERM, getattr(signal, "SIGHUP", None)):
        if sig is not None:
            signal.signal(sig, handler)
