"""Where audit lines go: a small interface, a file sink (default) and stdout.

A sink writes whole lines and raises ``OSError`` (or ``ValueError`` once
closed) when it cannot; the caller (``AuditLog``) turns that into a refusal.
Each ``write`` is one unbuffered ``os.write`` of a complete line, so a line is
with the kernel before the request goes on and concurrent writers never
interleave inside a line. ``sync`` makes what was written durable (fsync); it
blocks and is therefore called off the event loop. A Kafka, Kinesis or OTLP
sink only needs these few methods.

The file sink checks before each write that its path still names the file it
holds open: if the file was moved or removed (by an operator, logrotate or an
attacker) it reopens the path, and if that fails the write fails, so the proxy
refuses calls rather than writing into a file nobody will read. It also
rotates by size and age; the chain itself lives in ``AuditLog`` and simply
continues into the new file.

A restarted worker reads back only the last line of its file (``last_line``):
backwards from the end a block at a time to the newline before it, then the
line once, so a restart costs in proportion to that line, never to the file
or to the square of a huge line; a line over ``MAX_RESUME_LINE_BYTES`` (the
largest ``audit.max_record_bytes``) is not read at all.
"""

from __future__ import annotations

import os
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from stat import S_ISREG
from typing import BinaryIO, Protocol

from proxy.audit.bound import MAX_MAX_RECORD_BYTES

# The largest record the proxy writes (audit.max_record_bytes at its maximum).
MAX_RESUME_LINE_BYTES = MAX_MAX_RECORD_BYTES
_BLOCK = 64 * 1024


class AuditSink(Protocol):
    def write(self, line: bytes) -> None: ...

    def sync(self) -> None: ...

    def rotation_due(self) -> bool: ...

    def rotate(self) -> None: ...

    def last_line(self) -> bytes | None: ...

    def close(self) -> None: ...


class FileSink:
    def __init__(self, path: Path, *, max_bytes: int = 0, max_age_s: float = 0) -> None:
        self._path = path
        self._max_bytes = max_bytes
        self._max_age_s = max_age_s
        self._fd: int | None = None
        self._regular = True
        self._identity = (0, 0)
        self._size = 0
        self._opened = 0.0
        self._open()

    def _open(self) -> None:
        fd = os.open(self._path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
        stat = os.fstat(fd)
        self._fd, self._identity, self._size = fd, (stat.st_dev, stat.st_ino), stat.st_size
        # A device or pipe (e.g. /dev/null in benchmarks) cannot be fsynced or rotated.
        self._regular = S_ISREG(stat.st_mode)
        self._opened = time.monotonic()
        if self._regular and self._size and not self._ends_with_newline():
            # A torn last line (power loss mid-write): end it so the next record
            # starts on its own line; the verifier reports the torn one.
            self._write_all(b"\n")

    def _ends_with_newline(self) -> bool:
        with open(self._path, "rb") as existing:
            existing.seek(-1, os.SEEK_END)
            return existing.read(1) == b"\n"

    def _current_fd(self) -> int:
        if self._fd is None:
            raise ValueError("the audit sink is closed")
        try:
            stat = os.stat(self._path)
            moved = (stat.st_dev, stat.st_ino) != self._identity
        except FileNotFoundError:
            moved = True
        if moved:
            os.close(self._fd)
            self._fd = None
            self._open()
        assert self._fd is not None
        return self._fd

    def _write_all(self, data: bytes) -> None:
        assert self._fd is not None
        _write_fully(self._fd, data)
        self._size += len(data)

    def write(self, line: bytes) -> None:
        self._current_fd()
        self._write_all(line + b"\n")

    def sync(self) -> None:
        if self._fd is None:
            raise ValueError("the audit sink is closed")
        if self._regular:
            os.fsync(self._fd)

    def rotation_due(self) -> bool:
        if self._fd is None or not self._regular:
            return False
        too_big = self._max_bytes > 0 and self._size >= self._max_bytes
        too_old = self._max_age_s > 0 and time.monotonic() - self._opened >= self._max_age_s
        return too_big or too_old

    def rotate(self) -> None:
        """Move the current file aside (``PATH.<UTC time>``) and start a new one at PATH."""
        fd = self._current_fd()
        os.fsync(fd)
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")
        os.rename(self._path, self._path.with_name(f"{self._path.name}.{stamp}"))
        os.close(fd)
        self._fd = None
        self._open()

    def last_line(self) -> bytes | None:
        """The last line of the file; ValueError if it is too long to read back."""
        if not self._regular:
            return None
        with open(self._path, "rb") as existing:
            return last_line_of(existing, MAX_RESUME_LINE_BYTES)

    def close(self) -> None:
        if self._fd is not None:
            try:
                if self._regular:
                    os.fsync(self._fd)
            finally:
                os.close(self._fd)
                self._fd = None


class StdoutSink:
    """Lines to standard output (a container log driver or a pipe to a shipper)."""

    def __init__(self) -> None:
        self._closed = False

    def write(self, line: bytes) -> None:
        if self._closed:
            raise ValueError("the audit sink is closed")
        _write_fully(sys.stdout.fileno(), line + b"\n")

    def sync(self) -> None:
        if self._closed:
            raise ValueError("the audit sink is closed")

    def rotation_due(self) -> bool:
        return False

    def rotate(self) -> None:
        return None

    def last_line(self) -> bytes | None:
        return None

    def close(self) -> None:
        self._closed = True


def last_line_of(file: BinaryIO, limit: int, block: int = _BLOCK) -> bytes | None:
    """The last line of ``file`` that is not empty, without its newline (None: no line).

    Reads backwards a block at a time, keeping nothing but where the line ends,
    until the newline before it; then reads the line once. At most twice the
    line plus a block is read, whatever comes before it. ValueError, once more
    than ``limit`` bytes were scanned, for a line longer than ``limit``.
    """
    position = file.seek(0, os.SEEK_END)
    stop: int | None = None  # where the last line ends
    first = 0  # where it starts
    while position > 0:
        start = max(0, position - block)
        file.seek(start)
        chunk = file.read(position - start)
        position = start
        if stop is None:
            chunk = chunk.rstrip(b"\n")
            if not chunk:
                continue  # trailing newlines only so far
            stop = start + len(chunk)
        newline = chunk.rfind(b"\n")
        if newline >= 0:
            first = start + newline + 1
            break
        if stop - start > limit:
            break
    if stop is None:
        return None
    if stop - first > limit:
        raise ValueError(f"the last line is longer than {limit} bytes")
    file.seek(first)
    return file.read(stop - first)


def _write_fully(fd: int, data: bytes) -> None:
    # os.write may write less than asked (a pipe, a signal): loop until all is out.
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def worker_path(path: Path, worker: int) -> Path:
    """Worker 0 writes PATH; worker n writes ``stem-n.suffix`` beside it (one chain per file)."""
    if worker == 0:
        return path
    return path.with_name(f"{path.stem}-{worker}{path.suffix}")
