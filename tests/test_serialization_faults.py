"""Fault injection for model folders: kill -9 during save_pretrained, crashes at every step,
user files, leftovers, tampered config.json (tied_weights, dtypes, sizes) and corrupt files.

Every test asserts that what loads is one complete save (weights and config of the same save)
and that nothing the user put in the folder is lost; broken folders raise one ValueError that
names the file and the entry.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

import anyformer.serialization as ser
from anyformer import AutoregressiveWrapper, Decoder, TransformerWrapper
from anyformer.serialization import (
    CONFIG_NAME,
    TORCH_WEIGHTS_NAME,
    WEIGHTS_NAME,
    clean_leftovers,
    load_pretrained,
    save_pretrained,
)

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="fault injection forks")


def lm(seed: int, **stack) -> TransformerWrapper:
    torch.manual_seed(seed)
    layers = Decoder(dim=16, depth=1, heads=2, **{"attn_dim_head": 8, **stack})
    return TransformerWrapper(num_tokens=64, max_seq_len=16, attn_layers=layers).eval()


def saves() -> tuple[AutoregressiveWrapper, AutoregressiveWrapper]:
    """Two saves of one architecture that differ in weights and in config.json (pad_value)."""
    return AutoregressiveWrapper(lm(1), pad_value=1), AutoregressiveWrapper(lm(2), pad_value=2)


def which_save(folder: Path, candidates) -> int:
    """Index of the candidate the folder holds, asserting weights and config agree."""
    loaded = load_pretrained(folder)
    state = loaded.net.state_dict()
    matches = [
        i
        for i, c in enumerate(candidates)
        if all(torch.equal(state[k], v) for k, v in c.net.state_dict().items())
    ]
    assert len(matches) == 1, "the weights are not exactly one of the saves"
    assert loaded.pad_value == candidates[matches[0]].pad_value, "weights and config differ"
    return matches[0]


USER_FILES = {"notes.txt": b"mine", "sub/data.bin": b"\x00" * 100, ".hidden": b"h"}


def add_user_files(folder: Path) -> None:
    for name, data in USER_FILES.items():
        (folder / name).parent.mkdir(exist_ok=True)
        (folder / name).write_bytes(data)


def assert_user_files(folder: Path) -> None:
    for name, data in USER_FILES.items():
        assert (folder / name).read_bytes() == data, name


def siblings(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.parent.iterdir() if p.name != folder.name)


def _fork(body) -> int:
    """Run ``body()`` in a forked child (exit status 0 when it returns); returns the pid."""
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        code = 0
        try:
            torch.set_num_threads(1)
            body()
        except BaseException:
            code = 3
        finally:
            os._exit(code)
    return pid


# --------------------------------------------------------------------------- kill -9


def test_kill_9_at_random_points_leaves_one_complete_save(tmp_path):
    a, b = saves()
    folder = tmp_path / "m"
    save_pretrained(a, folder)
    add_user_files(folder)
    start = time.perf_counter()
    save_pretrained(b, folder)
    save_time = time.perf_counter() - start
    rng = random.Random(15)
    kills, seen, leftovers = 24, [], 0
    for kill in range(kills):
        ready_r, ready_w = os.pipe()

        def loop(first=kill % 2, ready=ready_w) -> None:
            os.write(ready, b"1")
            for i in range(first, 10**9):
                save_pretrained((a, b)[i % 2], folder)

        pid = _fork(loop)
        os.close(ready_w)
        os.read(ready_r, 1)
        os.close(ready_r)
        time.sleep(rng.uniform(0, 6 * save_time))
        os.kill(pid, signal.SIGKILL)
        _, status = os.waitpid(pid, 0)
        assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
        seen.append(which_save(folder, (a, b)))
        assert_user_files(folder)
        assert sorted(os.listdir(folder)) == sorted(
            [CONFIG_NAME, WEIGHTS_NAME, "notes.txt", "sub", ".hidden"]
        )
        leftovers += bool(siblings(folder))
    assert len(seen) == kills >= 20
    save_pretrained(a, folder)  # the next save removes what the killed ones left
    assert siblings(folder) == []
    assert which_save(folder, (a, b)) == 0
    assert_user_files(folder)
    print(f"\n{kills} kills: saves seen {seen.count(0)}x A, {seen.count(1)}x B; "
          f"{leftovers} left a temporary beside the folder")  # fmt: skip


_STEPS = ("rename", "fsync", "link", "mkdir", "chmod")


def _crash_at(step: int, exchange: bool):
    """Patch the file-system calls of a save so that call number ``step`` exits the process
    (as kill -9 would: no clean-up runs)."""
    calls = [0]

    def counted(fn):
        def wrapper(*args, **kwargs):
            if calls[0] == step:
                os._exit(9)
            calls[0] += 1
            return fn(*args, **kwargs)

        return wrapper

    for name in _STEPS:
        setattr(os, name, counted(getattr(os, name)))
    shutil.rmtree = counted(shutil.rmtree)
    ser._exchange = counted(ser._exchange if exchange else lambda a, b: False)


@pytest.mark.parametrize("exchange", [True, False], ids=["renameat2-exchange", "two-renames"])
def test_a_crash_at_every_file_system_step_leaves_one_complete_save(tmp_path, exchange):
    a, b = saves()
    folder = tmp_path / "m"
    save_pretrained(a, folder)
    add_user_files(folder)
    outcomes, between = [], 0
    for step in range(200):

        def crash(step=step) -> None:
            _crash_at(step, exchange)
            save_pretrained(b, folder)

        _, status = os.waitpid(_fork(crash), 0)
        code = os.waitstatus_to_exitcode(status)
        assert code in (0, 9)
        outcomes.append(which_save(folder, (a, b)))  # loads even between the two renames
        if not folder.exists():  # killed between the two renames: the old save set aside
            assert not exchange and outcomes[-1] == 0
            between += 1
            assert_user_files(next(tmp_path.glob(f".m{ser._ASIDE_MARK}*")))
        else:
            assert_user_files(folder)
        if code == 0:
            break
        save_pretrained(a, folder)  # restore A; this save also removes the leftovers
        assert siblings(folder) == []
        assert which_save(folder, (a, b)) == 0
    assert outcomes[-1] == 1 and len(outcomes) >= 8  # every step crashed once, then done
    assert 0 in outcomes and 1 in outcomes[:-1]  # a crash after the swap keeps the new save
    assert between == (0 if exchange else 1)


def test_a_crash_while_saving_into_an_empty_folder_leaves_nothing_loadable_and_is_redone(
    tmp_path,
):
    """An empty folder (such as the CLI's own checkpoint temporary) is written in place,
    config.json last: a crash leaves no loadable half, and the next save replaces it."""
    a, b = saves()
    folder = tmp_path / "m"
    complete = 0
    for step in range(200):
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir()

        def crash(step=step) -> None:
            _crash_at(step, exchange=True)
            save_pretrained(b, folder)

        _, status = os.waitpid(_fork(crash), 0)
        code = os.waitstatus_to_exitcode(status)
        assert siblings(folder) == []  # nothing beside the folder
        if (folder / CONFIG_NAME).exists():
            assert which_save(folder, (a, b)) == 1
            complete += 1
        else:
            with pytest.raises(ValueError, match=r"config\.json: missing"):
                load_pretrained(folder)
        save_pretrained(a, folder)  # replaces the half
        assert which_save(folder, (a, b)) == 0
        assert sorted(os.listdir(folder)) == [CONFIG_NAME, WEIGHTS_NAME]
        if code == 0:
            break
    assert code == 0 and step >= 3 and complete >= 1


def test_the_fallback_swap_is_undone_by_the_next_save(tmp_path):
    a, b = saves()
    folder = tmp_path / "m"
    save_pretrained(a, folder)
    # what a kill between the two renames of the fallback leaves: the old folder set aside
    aside = tmp_path / f".m{ser._ASIDE_MARK}999999999-x.tmp"
    os.rename(folder, aside)
    assert which_save(folder, (a, b)) == 0  # load finds the complete old save
    assert clean_leftovers(folder) == [] and folder.is_dir() and not aside.exists()
    assert which_save(folder, (a, b)) == 0


def test_leftovers_of_dead_processes_are_removed_and_live_ones_kept(tmp_path):
    folder = tmp_path / "m"
    dead_pid = _fork(lambda: None)
    os.waitpid(dead_pid, 0)
    dead = tmp_path / f".m{ser._SAVE_MARK}{dead_pid}-abc.tmp"
    live = tmp_path / f".m{ser._SAVE_MARK}{os.getppid()}-abc.tmp"  # a running process
    other = tmp_path / f".other{ser._SAVE_MARK}{dead_pid}-abc.tmp"  # another folder's
    for p in (dead, live, other):
        p.mkdir()
        (p / WEIGHTS_NAME).write_bytes(b"x" * 10)
    save_pretrained(lm(0), folder)
    assert siblings(folder) == sorted([live.name, other.name])


# --------------------------------------------------------------------------- user data


def test_foreign_files_are_carried_into_the_new_save(tmp_path):
    folder = tmp_path / "m"
    save_pretrained(lm(1), folder)
    add_user_files(folder)
    os.symlink("notes.txt", folder / "link")
    inode = (folder / "notes.txt").stat().st_ino
    save_pretrained(lm(2), folder)
    assert_user_files(folder)
    assert os.readlink(folder / "link") == "notes.txt"
    assert (folder / "notes.txt").stat().st_ino == inode  # a hard link, not a copy
    assert torch.equal(load_pretrained(folder).token_emb.emb.weight, lm(2).token_emb.emb.weight)


def test_a_folder_that_is_not_a_model_folder_is_refused_untouched(tmp_path):
    folder = tmp_path / "data"
    folder.mkdir()
    (folder / "train.txt").write_text("precious")
    (folder / CONFIG_NAME).write_text('{"model_type": "gpt2"}')  # e.g. a Hugging Face folder
    for save in (lambda: save_pretrained(lm(0), folder), lambda: lm(0).save_pretrained(folder)):
        with pytest.raises(ValueError, match=r"is not an anyformer model folder.*refusing"):
            save()
    assert sorted(os.listdir(folder)) == [CONFIG_NAME, "train.txt"]
    assert (folder / "train.txt").read_text() == "precious"
    assert siblings(folder) == []
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="exists and is not a directory"):
        save_pretrained(lm(0), tmp_path / "file")


def test_an_empty_folder_and_a_symlinked_folder_are_saved_into(tmp_path):
    (tmp_path / "empty").mkdir()
    save_pretrained(lm(1), tmp_path / "empty")
    assert sorted(os.listdir(tmp_path / "empty")) == [CONFIG_NAME, WEIGHTS_NAME]
    os.symlink("empty", tmp_path / "alias")
    save_pretrained(lm(2), tmp_path / "alias")
    assert (tmp_path / "alias").is_symlink()  # the link stays; its target holds the new save
    got = load_pretrained(tmp_path / "empty").token_emb.emb.weight
    assert torch.equal(got, lm(2).token_emb.emb.weight)


@pytest.mark.parametrize("first_safe", [True, False])
def test_switching_the_format_leaves_one_weights_file(tmp_path, first_safe):
    folder = tmp_path / "m"
    save_pretrained(lm(1), folder, safe_serialization=first_safe)
    save_pretrained(lm(2), folder, safe_serialization=not first_safe)
    expected = TORCH_WEIGHTS_NAME if first_safe else WEIGHTS_NAME
    assert sorted(os.listdir(folder)) == sorted([CONFIG_NAME, expected])
    got = load_pretrained(folder).token_emb.emb.weight
    assert torch.equal(got, lm(2).token_emb.emb.weight)


def test_a_folder_with_both_weights_files_is_refused(tmp_path):
    folder = tmp_path / "m"
    save_pretrained(lm(1), folder)
    torch.save(load_file(folder / WEIGHTS_NAME), folder / TORCH_WEIGHTS_NAME)
    with pytest.raises(ValueError, match=r"holds both model\.safetensors and pytorch_model\.bin"):
        load_pretrained(folder)


# --------------------------------------------------------------------------- tampered config.json


@pytest.fixture
def tied_folder(tmp_path):
    path = tmp_path / "m"
    torch.manual_seed(0)
    model = TransformerWrapper(
        num_tokens=64, max_seq_len=16, tie_embedding=True,
        attn_layers=Decoder(dim=16, depth=1, heads=2, rotary_pos_emb=True),
    )  # fmt: skip
    save_pretrained(model, path)
    assert "to_logits.weight" not in load_file(path / WEIGHTS_NAME)  # stored once
    return path


def _edit(folder: Path, edit) -> None:
    data = json.loads((folder / CONFIG_NAME).read_text())
    edit(data)
    (folder / CONFIG_NAME).write_text(json.dumps(data))


@pytest.mark.parametrize(
    "tied, message",
    [
        (  # a self-alias must not hide the missing head (it would stay random)
            {"to_logits.weight": "to_logits.weight"},
            r"'to_logits\.weight': 'to_logits\.weight': ties a parameter to itself",
        ),
        (  # an alias of another shape would change the output shape
            {"to_logits.weight": "attn_layers.layers.0.branch.to_out.weight"},
            r"'to_logits\.weight': .*shapes differ \(\(64, 16\) vs \(16, 128\)\)",
        ),
        (  # a method name would rebind the method
            {"forward": "token_emb.emb.weight"},
            r"'forward': 'token_emb\.emb\.weight': 'forward' is not a parameter of the model",
        ),
        (
            {"to_logits.weight": "attn_layers.rotary.inv_freq"},
            r"'attn_layers\.rotary\.inv_freq' is not a parameter of the model",
        ),
        (
            {"to_logits.weight": "token_emb.emb.weight", "token_emb.max_norm": "token_emb"},
            r"'token_emb\.max_norm' is not a parameter of the model",
        ),
        (
            {"token_emb.emb.weight": "to_logits.weight"},
            r"the weights file does not hold 'to_logits\.weight'",
        ),
        (
            {"to_logits.weight": "token_emb.emb.weight", "attn_layers.final_norm.weight": "x"},
            r"'x' is not a parameter of the model",
        ),
    ],
    ids=["self-alias", "shape", "forward", "buffer", "attribute", "alias-of-missing", "no-such"],
)
def test_tied_weights_are_validated(tied_folder, tied, message):
    _edit(tied_folder, lambda d: d.update(tied_weights=tied))
    with pytest.raises(ValueError, match=r"config\.json: tied_weights entry .*" + message):
        load_pretrained(tied_folder)


def test_a_tie_to_a_stored_alias_is_refused(tmp_path):
    folder = tmp_path / "m"
    save_pretrained(lm(0), folder)  # untied: both tensors stored
    _edit(folder, lambda d: d.update(tied_weights={"to_logits.weight": "token_emb.emb.weight"}))
    with pytest.raises(ValueError, match=r"the weights file holds 'to_logits\.weight' as well"):
        load_pretrained(folder)


@pytest.mark.parametrize(
    "dtype, message",
    [
        (torch.int64, "is stored as torch.int64, the model expects torch.float32"),
        (torch.bool, "is stored as torch.bool, the model expects torch.float32"),
        (torch.float16, "is stored as torch.float16, the model expects torch.float32"),
    ],
)
@pytest.mark.parametrize("safe", [True, False])
def test_a_tensor_of_another_dtype_is_refused_not_cast(tmp_path, dtype, message, safe):
    folder = tmp_path / "m"
    save_pretrained(lm(0), folder, safe_serialization=safe)
    file = folder / (WEIGHTS_NAME if safe else TORCH_WEIGHTS_NAME)
    tensors = load_file(file) if safe else torch.load(file, weights_only=True)
    tensors["to_logits.weight"] = torch.ones(64, 16, dtype=dtype)
    save_file(tensors, file) if safe else torch.save(tensors, file)
    with pytest.raises(ValueError, match=rf"tensor 'to_logits\.weight' {message}"):
        load_pretrained(folder)


def test_a_model_mixing_parameter_dtypes_is_refused_at_save(tmp_path):
    model = lm(0)
    model.to_logits.half()
    with pytest.raises(ValueError, match=r"mix floating dtypes .*'to_logits\.weight' is float16"):
        save_pretrained(model, tmp_path / "m")
    assert not (tmp_path / "m").exists()


def test_a_config_far_larger_than_its_weights_fails_fast(tmp_path):
    folder = tmp_path / "m"
    save_pretrained(lm(0), folder)
    _edit(folder, lambda d: d["config"]["attn_layers"].update(depth=100_000))
    for load in (load_pretrained, TransformerWrapper.from_pretrained):
        start = time.perf_counter()
        with pytest.raises(ValueError, match=r"larger than its weights.*depth=100000"):
            load(folder)
        assert time.perf_counter() - start < 2.0
    _edit(folder, lambda d: d["config"]["attn_layers"].update(depth=1, dim=1_000_000))
    start = time.perf_counter()
    with pytest.raises(ValueError, match=r"larger than its weights.*dim=1000000"):
        load_pretrained(folder)
    assert time.perf_counter() - start < 2.0


def test_a_config_of_another_shape_fails_before_the_weights_are_read(tmp_path, monkeypatch):
    folder = tmp_path / "m"
    save_pretrained(lm(0), folder)
    _edit(folder, lambda d: d["config"]["attn_layers"].update(depth=2))
    monkeypatch.setattr(ser, "read_weights", lambda *a: pytest.fail("weights were read"))
    with pytest.raises(ValueError, match=r"missing tensor 'attn_layers\.layers\.2\.pre_norm"):
        load_pretrained(folder)


# --------------------------------------------------------------------------- corrupt files


def _corrupt_cases():
    def header_length(folder: Path) -> None:
        data = (folder / WEIGHTS_NAME).read_bytes()
        (folder / WEIGHTS_NAME).write_bytes((10**9).to_bytes(8, "little") + data[8:])

    def config(text: bytes):
        return lambda folder: (folder / CONFIG_NAME).write_bytes(text)

    def edit(**changes):
        return lambda folder: _edit(folder, lambda d: d.update(changes))

    return {
        "config-garbage": (config(b"\x00\xff garbage"), r"config\.json: corrupt or unreadable"),
        "config-not-utf8": (config('{"a": "é"}'.encode("latin-1")), r"corrupt or unreadable"),
        "config-list": (config(b"[1, 2]"), r"not an anyformer model config"),
        "config-deep": (config(b"[" * 100_000), r"corrupt or unreadable JSON"),
        "dtype-int": (edit(dtype=5), r"'dtype' must be a dtype name or null, got 5"),
        "dtype-name": (edit(dtype="int64"), r"'dtype' must name a floating torch dtype"),
        "dtype-attr": (edit(dtype="nn"), r"'dtype' must name a floating torch dtype"),
        "class-int": (edit(**{"class": 5}), r"'class' must be a class name, got 5"),
        "tied-list": (edit(tied_weights=["a"]), r"'tied_weights' must be an object"),
        "tied-target": (edit(tied_weights={"a": 1}), r"entry 'a' must name a stored tensor"),
        "wrapper-str": (edit(wrapper="x"), r"'wrapper' must be an object or null"),
        "version-str": (edit(format_version="1"), r"'format_version' must be an integer"),
        "depth-str": (
            lambda f: _edit(f, lambda d: d["config"]["attn_layers"].update(depth="x")),
            r"cannot rebuild TransformerWrapper",
        ),
        "weights-empty": (
            lambda f: (f / WEIGHTS_NAME).write_bytes(b""),
            r"model\.safetensors: corrupt or unreadable",
        ),
        "weights-header-only": (
            lambda f: (f / WEIGHTS_NAME).write_bytes((f / WEIGHTS_NAME).read_bytes()[:4]),
            r"model\.safetensors: corrupt or unreadable",
        ),
        "weights-header-length": (header_length, r"header length 1000000000 exceeds"),
        "weights-truncated-data": (
            lambda f: (f / WEIGHTS_NAME).write_bytes((f / WEIGHTS_NAME).read_bytes()[:-100]),
            r"outside the \d+ bytes of data \(a truncated file\?\)",
        ),
        "weights-missing": (lambda f: (f / WEIGHTS_NAME).unlink(), r"no weights file"),
        "weights-a-folder": (
            lambda f: ((f / WEIGHTS_NAME).unlink(), (f / WEIGHTS_NAME).mkdir()),
            r"no weights file",
        ),
    }


@pytest.mark.parametrize("case", list(_corrupt_cases()))
def test_corrupt_folders_raise_one_value_error(tmp_path, case):
    folder = tmp_path / "m"
    save_pretrained(AutoregressiveWrapper(lm(0)), folder)
    corrupt, message = _corrupt_cases()[case]
    corrupt(folder)
    with pytest.raises(ValueError, match=message):
        load_pretrained(folder)


def test_a_truncated_torch_weights_file_raises(tmp_path):
    folder = tmp_path / "m"
    save_pretrained(lm(0), folder, safe_serialization=False)
    data = (folder / TORCH_WEIGHTS_NAME).read_bytes()
    (folder / TORCH_WEIGHTS_NAME).write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=r"pytorch_model\.bin: corrupt or unreadable"):
        load_pretrained(folder)


def test_an_unknown_wrapper_raises(tmp_path):
    folder = tmp_path / "m"
    save_pretrained(AutoregressiveWrapper(lm(0)), folder)
    _edit(folder, lambda d: d["wrapper"].update({"class": "Nope"}))
    with pytest.raises(ValueError, match=r"config\.json: unknown wrapper .*'Nope'"):
        load_pretrained(folder)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(pytest.main([__file__, "-q", "-s"]))


class _ReadsValues(torch.nn.Module):
    """A registered class whose constructor reads tensor values (impossible on meta)."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.proj = torch.nn.Linear(width, width)
        self.scale = float(torch.ones(width).sum().item())

    def config_dict(self) -> dict:
        return {"width": self.proj.in_features}

    @classmethod
    def from_config(cls, config: dict) -> _ReadsValues:
        return cls(config["width"])


def test_a_class_that_cannot_be_built_on_meta_is_checked_on_the_cpu(tmp_path):
    ser.register_model_class(_ReadsValues)
    try:
        torch.manual_seed(0)
        model = _ReadsValues(3)
        save_pretrained(model, tmp_path / "m")
        loaded = load_pretrained(tmp_path / "m")
        assert loaded.scale == 3.0 and torch.equal(loaded.proj.weight, model.proj.weight)
        _edit(tmp_path / "m", lambda d: d["config"].update(width=100_000))
        with pytest.raises(ValueError, match=r"larger than its weights.*width=100000"):
            load_pretrained(tmp_path / "m")
    finally:
        ser.MODEL_CLASSES.pop("_ReadsValues")
