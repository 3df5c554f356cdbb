"""Private files and directories: created 0600 / 0700, and refused when others can write them.

A terminal's data directory holds its private keys, the keys its operator
verified (pins) and what it was told; a server's holds the directory of
device keys that every terminal checks against its pins. Whoever can write
either can swap a key. So both are created for their owner alone (never
briefly wider), and a process refuses to start on one that others may write,
saying which ``chmod`` fixes it. Others *reading* a terminal's files is
refused as well (they are secrets); a server's files hold no secret, so that
is only warned about.

SQLite gives a database's ``-wal`` and ``-shm`` files the mode of the
database file itself, so creating the database file first, 0600, is enough.
"""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path

from parley.core.errors import ErrorCode, LocalError

log = logging.getLogger("parley.files")


def private_dir(path: Path) -> Path:
    """Create `path` (and its parents) for its owner only; an existing one is checked."""
    if not path.exists():
        path.mkdir(parents=True, mode=0o700)
        os.chmod(path, 0o700)  # mkdir's mode is cut by the umask, never widened
    return path


def create_private_file(path: Path) -> None:
    """Create `path` empty with mode 0600, unless it exists."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return
    os.close(fd)


def write_private_file(path: Path, data: bytes) -> None:
    """Create `path` with mode 0600 (never briefly wider), flushed to disk."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)


def replace_private_file(path: Path, data: bytes) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.unlink(missing_ok=True)
    write_private_file(tmp, data)
    os.replace(tmp, path)


def check_private(paths: list[Path], *, what: str, secret: bool) -> None:
    """Refuse paths others may write (or, if `secret`, read); warn of others reading.

    `paths` are a data directory and the files in it that matter; missing ones
    are skipped.
    """
    for path in paths:
        try:
            info = path.stat()
        except FileNotFoundError:
            continue
        mode = stat.S_IMODE(info.st_mode)
        if info.st_uid != os.getuid():
            raise LocalError(
                f"{path} belongs to another user (uid {info.st_uid}); refusing to use {what}"
                " that someone else controls", code=ErrorCode.BAD_CONFIG,
                hint=f"run Parley as the user that owns it, or 'chown -R {os.getuid()}"
                     f" {path}' if it should be yours")
        fix = f"chmod {'700' if path.is_dir() else '600'} {path}"
        if mode & 0o022 or (secret and mode & 0o077):
            kind = "writable" if mode & 0o022 else "readable"
            raise LocalError(
                f"{path} is {kind} by other users (mode {mode:o}); refusing to use {what}"
                " that others could change" + (" or read" if secret else ""),
                code=ErrorCode.BAD_CONFIG,
                hint=f"run '{fix}' (and check who may have changed or copied it)")
        if mode & 0o077:
            log.warning("%s is readable by other users (mode %o); run '%s'", path, mode, fix)


LOCK_FILE = "lock"


class DataLock:
    """One process at a time on a data directory: a second is refused, naming the first.

    ``flock`` on ``lock`` in the directory (0600), holding the owner's PID; the
    kernel lets go when the process ends, however it ends, so a crash leaves
    nothing to clean up. A refused process has touched nothing of the first
    one's (it takes the lock before it opens anything else).
    """

    def __init__(self, data_dir: Path, what: str, *, secret: bool) -> None:
        self.path = data_dir / LOCK_FILE
        self.data_dir = data_dir
        self.what = what
        self.secret = secret
        self._fd: int | None = None

    def acquire(self) -> DataLock:
        import fcntl

        private_dir(self.data_dir)
        # A directory others may write could hold a lock file of theirs: refused first.
        check_private([self.data_dir], what=f"the data of {self.what}", secret=self.secret)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode) or info.st_nlink != 1 or \
                info.st_uid != os.getuid():
            os.close(fd)
            raise LocalError(f"{self.path} is not a lock file of this user's",
                             code=ErrorCode.BAD_CONFIG, hint=f"remove {self.path}")
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            text = os.read(fd, 32).decode(errors="replace").strip()
            holder = text if text.isdigit() else "unknown"  # printed: digits only
            os.close(fd)
            raise LocalError(f"{self.what} in {self.data_dir} is already running"
                             f" (PID {holder})", code=ErrorCode.BUSY,
                             hint=f"stop it first (kill {holder}), or give this one"
                                  " another --data") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # and with it the lock
            self._fd = None

    def __enter__(self) -> DataLock:
        return self.acquire()

    def __exit__(self, *_exc: object) -> None:
        self.release()
