"""Splitting stored file chunks into lines: boundaries anywhere, a too-long line reported but never held."""

from __future__ import annotations

import pytest

from batcher._files_store import iter_lines


@pytest.mark.parametrize("size", [1, 2, 3, 5, 7, 64])
def test_lines_survive_any_chunk_boundary(size: int) -> None:
    data = b'{"a": 1}\n\n{"b": "x\\ny"}\nlast-without-newline'
    chunks = iter(data[i : i + size] for i in range(0, len(data), size))
    assert list(iter_lines(chunks, max_line_bytes=100)) == [
        (1, b'{"a": 1}'),
        (2, b""),
        (3, b'{"b": "x\\ny"}'),
        (4, b"last-without-newline"),
    ]


def test_a_line_over_the_limit_is_reported_by_number_and_dropped() -> None:
    chunks = iter([b"short\n", b"x" * 40, b"x" * 40, b"\nnext\n", b"y" * 50])
    assert list(iter_lines(chunks, max_line_bytes=30)) == [(1, b"short"), (2, None), (3, b"next"), (4, None)]


def test_a_trailing_newline_adds_no_empty_line() -> None:
    assert list(iter_lines(iter([b"a\nb\n"]), max_line_bytes=10)) == [(1, b"a"), (2, b"b")]
