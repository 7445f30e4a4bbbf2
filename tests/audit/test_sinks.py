"""proxy.audit.sinks: the last line, read back in proportion to its own length."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from proxy.audit.sinks import MAX_RESUME_LINE_BYTES, FileSink, last_line_of


class CountingFile(io.BytesIO):
    """A file that counts the bytes read from it."""

    def __init__(self, data: bytes) -> None:
        super().__init__(data)
        self.bytes_read = 0

    def read(self, size: int | None = -1, /) -> bytes:
        data = super().read(size)
        self.bytes_read += len(data)
        return data


@pytest.mark.parametrize(
    ("data", "last"),
    [
        (b"", None),
        (b"\n", None),
        (b"\n\n\n", None),
        (b"one", b"one"),
        (b"one\n", b"one"),
        (b"one\ntwo\n", b"two"),
        (b"one\ntwo", b"two"),
        (b"one\ntwo\n\n\n", b"two"),
        (b"one\n\ntwo\n", b"two"),
        (b"a" * 50 + b"\n" + b"b" * 23 + b"\n", b"b" * 23),
        (b"x\n" + b"\n" * 40, b"x"),
    ],
)
@pytest.mark.parametrize("block", [1, 2, 7, 64 * 1024])
def test_last_line_of(data: bytes, last: bytes | None, block: int) -> None:
    assert last_line_of(io.BytesIO(data), 1000, block) == last


@pytest.mark.parametrize("line_bytes", [1, 100, 5_000, 3_000_000])
@pytest.mark.parametrize("before_bytes", [0, 10, 10_000_000])
def test_the_last_line_costs_in_proportion_to_itself(line_bytes: int, before_bytes: int) -> None:
    # Whatever precedes it, and however long it is: at most twice the line plus a block.
    block = 4096
    before = b"p" * (before_bytes - 1) + b"\n" if before_bytes else b""
    file = CountingFile(before + b"L" * line_bytes + b"\n")
    assert last_line_of(file, MAX_RESUME_LINE_BYTES, block) == b"L" * line_bytes
    assert file.bytes_read <= 2 * line_bytes + 2 * block


@pytest.mark.parametrize("line_bytes", [1001, 50_000])
def test_a_line_over_the_limit_is_not_read(line_bytes: int) -> None:
    file = CountingFile(b"ok\n" + b"L" * line_bytes + b"\n")
    with pytest.raises(ValueError, match="longer than 1000 bytes"):
        last_line_of(file, 1000, 100)
    assert file.bytes_read <= 1000 + 2 * 100  # the scan stops past the limit


def test_a_line_at_the_limit_is_read() -> None:
    assert last_line_of(io.BytesIO(b"ok\n" + b"L" * 1000), 1000, 100) == b"L" * 1000


def test_file_sink_reads_its_last_line(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    sink = FileSink(path)
    assert sink.last_line() is None
    sink.write(b"first")
    sink.write(b"second " * 100_000)
    assert sink.last_line() == b"second " * 100_000
    sink.close()
