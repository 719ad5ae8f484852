"""The run folder's writer lock: one process writes a run folder (or a sweep folder) at a time.

The writer holds an exclusive ``fcntl.flock`` on ``RUN/.lock`` and writes its pid into the file. The
kernel drops the lock when the process ends however it ends (kill -9 included), so a lock file left by
a dead process is simply taken over; a live holder is named in the one-line refusal.

    with RunLock("runs/add8"):           # a ValueError naming the holder's pid if another process writes
        ...
"""

from __future__ import annotations

import errno
import fcntl
import os
from pathlib import Path

LOCK_NAME = ".lock"


def holds_files(folder: Path | str) -> bool:
    """Whether ``folder`` is a directory holding anything besides the writer lock's file."""
    folder = Path(folder)
    return folder.is_dir() and any(p.name != LOCK_NAME for p in folder.iterdir())


class RunLock:
    def __init__(self, run_dir: Path | str, create: bool = False, what: str = "run folder"):
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / LOCK_NAME
        self.create, self.what = create, what  # what: the folder's kind, as the errors name it
        self._fd: int | None = None

    def acquire(self) -> "RunLock":
        """Take the lock (creating the run folder first if ``create``); a ValueError if another process
        holds it, or if the folder is missing and not to be created."""
        if not self.create and not self.run_dir.is_dir():
            raise ValueError(f"no {self.what} at {self.run_dir}")
        if self.create and self.run_dir.exists() and not self.run_dir.is_dir():
            raise ValueError(f"{self.run_dir} is not a directory; choose another --out")
        try:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise ValueError(f"cannot write the {self.what} {self.run_dir}: {exc.strerror or exc}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise ValueError(f"{self.run_dir} is being written by another process (pid {holder}); "
                                 "wait for it to finish or stop it") from None
            raise ValueError(f"cannot lock the {self.what} {self.run_dir}: {exc.strerror or exc}") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing drops the flock; the file stays (removing it would race a new writer)
            self._fd = None

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
