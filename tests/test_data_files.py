"""--data: a text file, a folder of text files, .gz and .bz2; the split is the last fraction."""

from __future__ import annotations

import bz2
import gzip

import pytest

from anyformer.data.files import load_text_splits, read_text_bytes


def test_text_file_and_split(tmp_path):
    file = tmp_path / "a.txt"
    file.write_bytes(bytes(range(1, 101)))
    train, val = load_text_splits(file, val_fraction=0.1)
    assert bytes(train.tolist()) == bytes(range(1, 91))
    assert bytes(val.tolist()) == bytes(range(91, 101))


def test_folder_is_read_in_sorted_order_with_newlines(tmp_path):
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "z.py").write_bytes(b"z = 1")
    (tmp_path / "a.txt").write_bytes(b"alpha\n")
    (tmp_path / "b" / "c.md").write_bytes(b"# c")
    (tmp_path / ".hidden").write_bytes(b"secret")
    (tmp_path / "image.png").write_bytes(b"\x89PNG\x00\x00binary")
    assert read_text_bytes(tmp_path) == b"alpha\n# c\nz = 1\n"


def test_compressed_files(tmp_path):
    text = b"def f(x):\n    return x\n" * 50
    with gzip.open(tmp_path / "t.txt.gz", "wb") as f:
        f.write(text)
    with bz2.open(tmp_path / "t.txt.bz2", "wb") as f:
        f.write(text)
    assert read_text_bytes(tmp_path / "t.txt.gz") == text
    assert read_text_bytes(tmp_path / "t.txt.bz2", max_bytes=10) == text[:10]


def test_errors_name_the_path(tmp_path):
    with pytest.raises(ValueError, match=r"data path '.*nope' does not exist"):
        read_text_bytes(tmp_path / "nope")
    (tmp_path / "bad.gz").write_bytes(b"not gzip")
    with pytest.raises(ValueError, match=r"cannot read data file .*bad\.gz"):
        read_text_bytes(tmp_path / "bad.gz")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="holds no text files"):
        read_text_bytes(tmp_path / "empty")
    (tmp_path / "tiny.txt").write_bytes(b"ab")
    with pytest.raises(ValueError, match="too few to split"):
        load_text_splits(tmp_path / "tiny.txt", val_fraction=0.05)


def test_reading_stops_at_max_bytes(tmp_path):
    """A 16 MB file with max_bytes=1000: at most one small chunk is ever held in memory."""
    import tracemalloc

    big = tmp_path / "big.txt"
    big.write_bytes(b"abcdefgh" * (2 << 20))
    with gzip.open(tmp_path / "big.txt.gz", "wb", compresslevel=1) as f:
        f.write(b"z" * (16 << 20))  # a small file that inflates to 16 MB
    for path, expected in ((big, b"abcdefgh" * 125), (tmp_path / "big.txt.gz", b"z" * 1000)):
        tracemalloc.start()
        data = read_text_bytes(path, max_bytes=1000)
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        assert data == expected
        assert peak < 1 << 20, (path, peak)  # far below the 16 MB the file holds


def test_a_binary_file_is_refused_alone_and_skipped_in_a_folder(tmp_path):
    (tmp_path / "text.txt").write_bytes(b"words\n")
    (tmp_path / "blob.bin").write_bytes(b"\x7fELF\x00\x01" + b"x" * 100)
    assert read_text_bytes(tmp_path) == b"words\n"
    with pytest.raises(ValueError, match=r"data file '.*blob\.bin' looks binary \(a NUL byte"):
        read_text_bytes(tmp_path / "blob.bin")
    late = tmp_path / "late.txt"  # a NUL after the first 8 KiB: text, alone or in a folder
    late.write_bytes(b"y" * 9000 + b"\x00")
    assert read_text_bytes(late) == b"y" * 9000 + b"\x00"
