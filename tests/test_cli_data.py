"""``--data``: a binary file is not text, given alone or in a folder (issue 20, item 5)."""

from __future__ import annotations

import json

from anyformer.cli.main import main

TINY = ["train", "--preset", "tiny", "threads=1", "steps=1", "eval_batches=1", "--quiet"]
BINARY = bytes(range(256)) * 200  # NUL bytes in its first 8 KiB


def test_a_binary_file_alone_is_refused(tmp_path, capsys):
    (tmp_path / "blob.bin").write_bytes(BINARY)
    assert main([*TINY, "--data", str(tmp_path / "blob.bin"), "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"anyformer: error: data file '{tmp_path / 'blob.bin'}' looks binary")
    assert not (tmp_path / "r").exists()


def test_a_folder_of_binaries_only_is_refused(tmp_path, capsys):
    (tmp_path / "d").mkdir()
    for name in ("a.bin", "b.bin"):
        (tmp_path / "d" / name).write_bytes(BINARY)
    assert main([*TINY, "--data", str(tmp_path / "d"), "--out", str(tmp_path / "r")]) == 2
    assert capsys.readouterr().err == (
        f"anyformer: error: data folder '{tmp_path / 'd'}' holds no text files\n"
    )


def test_a_folder_trains_on_its_text_and_skips_its_binaries(tmp_path, capsys):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "a.bin").write_bytes(BINARY)
    (tmp_path / "d" / "b.txt").write_bytes(b"x = 1\n" * 2000)  # 12,000 bytes of text
    out = tmp_path / "r"
    args = [a for a in TINY if a != "--quiet"]
    assert main([*args, "sample_len=0", "--data", str(tmp_path / "d"), "--out", str(out)]) == 0
    assert json.loads((out / "run.json").read_text())["data"] == str(tmp_path / "d")
    # the text alone (12,000 bytes, newline-terminated): the last 5% is the validation split
    assert f"data: {tmp_path / 'd'}, 11,400 train / 600 validation bytes" in capsys.readouterr().out
