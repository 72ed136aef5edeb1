"""--data: a text file, a folder of text files, .gz and .bz2; the split is the last fraction."""

from __future__ import annotations

import bz2
import gzip

import pytest

from anyformer.data.files import load_text_splits, read_text_bytes


def test_text_file_and_split(tmp_path):
    file = tmp_path / "a.txt"
    file.write_bytes(bytes(range(100)))
    train, val = load_text_splits(file, val_fraction=0.1)
    assert bytes(train.tolist()) == bytes(range(90))
    assert bytes(val.tolist()) == bytes(range(90, 100))


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
