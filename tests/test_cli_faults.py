"""Fault injection for the command line: kills, concurrent starts, users' folders, corrupt files.

Each test asserts that nothing the user had is lost (byte for byte), that what loads is one
complete save, and that every failure is one line on stderr, never a traceback.
"""

from __future__ import annotations

import ast
import errno
import json
import multiprocessing
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from anyformer import AutoregressiveWrapper, Decoder, TransformerWrapper, load_pretrained
from anyformer.cli import checkpoint as checkpoint_module
from anyformer.cli.checkpoint import (
    DELAY_ENV,
    STATE_NAME,
    list_checkpoints,
    resume_checkpoint,
    write_checkpoint,
)
from anyformer.cli.lock import LOCK_NAME
from anyformer.cli.main import main
from anyformer.cli.manifest import TEMP_PREFIX
from anyformer.cli.rundir import claim_run_dir

TINY = [
    "--preset", "tiny", "threads=1", "dim=16", "heads=2", "attn_dim_head=8", "seq_len=32",
    "batch_size=4", "eval_batches=1", "max_bytes=20000", "--quiet",
]  # fmt: skip


def snapshot(folder: Path) -> dict[str, bytes | str]:
    """Every file (bytes) and link (target) under ``folder``, hidden ones too."""
    out: dict[str, bytes | str] = {}
    for path in sorted(folder.rglob("*")):
        rel = path.relative_to(folder).as_posix()
        if path.is_symlink():
            out[rel] = "link:" + os.readlink(path)
        elif path.is_file():
            out[rel] = path.read_bytes()
        else:
            out[rel] = "dir"
    return out


def train(*args: str) -> int:
    return main(["train", *TINY, *args])


def one_line_error(err: str) -> str:
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.startswith("anyformer: error: ")]
    assert len(lines) == 1, err
    return lines[0]


def temporaries(run_dir: Path) -> list[str]:
    found = []
    for folder in (run_dir, run_dir / "checkpoints"):
        if folder.is_dir():
            found += [p.name for p in folder.iterdir() if p.name.startswith(TEMP_PREFIX)]
    return found


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> Path:
    """A run of 4 steps with checkpoints at steps 2 and 4."""
    run = tmp_path_factory.mktemp("finished") / "run"
    assert (
        train("steps=4", "save_every=2", "eval_every=4", "keep_checkpoints=0", "--out", str(run))
        == 0
    )
    return run


def copy_run(run: Path, tmp_path: Path) -> Path:
    target = tmp_path / "run"
    shutil.copytree(run, target, symlinks=True)
    return target


# --------------------------------------------------------------------------- users' data


def test_resume_into_another_run_is_refused_and_changes_nothing(finished_run, tmp_path, capsys):
    other = copy_run(finished_run, tmp_path)
    before = snapshot(other)
    assert main(["train", "--resume", str(finished_run), "--out", str(other), "--quiet"]) == 2
    assert f"--out '{other}' holds another run" in one_line_error(capsys.readouterr().err)
    assert snapshot(other) == before


def test_resume_into_a_users_folder_is_refused(finished_run, tmp_path, capsys):
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "thesis.tex").write_bytes(b"\\section{Intro}\n")
    before = snapshot(folder)
    assert main(["train", "--resume", str(finished_run), "--out", str(folder), "--quiet"]) == 2
    assert "neither empty nor an anyformer run (it holds 'thesis.tex')" in one_line_error(
        capsys.readouterr().err
    )
    assert snapshot(folder) == before


USERS_FOLDERS = {
    "git_under_checkpoints": {"checkpoints/.git/HEAD": b"ref: refs/heads/main\n"},
    "users_step_folder": {"checkpoints/step_0000002/model.safetensors": b"my own weights"},
    "loss_png": {"loss.png": b"\x89PNG my plot"},
    "someone_elses_log": {"log.jsonl": b"{}\n", "notes/run.txt": b"x"},
}


@pytest.mark.parametrize("name", list(USERS_FOLDERS))
def test_out_at_a_users_folder_is_refused_untouched(name, tmp_path, capsys):
    folder = tmp_path / "users"
    for rel, data in USERS_FOLDERS[name].items():
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        (folder / rel).write_bytes(data)
    before = snapshot(folder)
    assert train("steps=2", "--out", str(folder)) == 2
    line = one_line_error(capsys.readouterr().err)
    assert f"--out '{folder}' is a folder that is neither empty nor an anyformer run" in line
    assert snapshot(folder) == before


def test_out_that_is_a_file_is_one_line(tmp_path, capsys):
    file = tmp_path / "out.txt"
    file.write_bytes(b"keep me")
    assert train("steps=2", "--out", str(file)) == 2
    assert one_line_error(capsys.readouterr().err).endswith(
        f"--out '{file}' is a file, not a folder"
    )
    assert file.read_bytes() == b"keep me"


def test_latest_and_the_plot_are_written_only_where_ours(tmp_path):
    # a users' folder: its file named latest and its own latest link stay as they are
    users = tmp_path / "users"
    users.mkdir()
    (users / "latest").write_bytes(b"my notes about the latest experiment\n")
    other = tmp_path / "links"
    other.mkdir()
    os.symlink("/somewhere/else", other / "latest")
    (tmp_path / "empty").mkdir()
    assert train("steps=2", "eval_every=2", "--out", str(users / "a")) == 0
    assert train("steps=2", "eval_every=2", "--out", str(other / "a")) == 0
    assert train("steps=2", "eval_every=2", "--out", str(tmp_path / "empty" / "a")) == 0
    assert (users / "latest").read_bytes() == b"my notes about the latest experiment\n"
    assert os.readlink(other / "latest") == "/somewhere/else"
    assert not os.path.lexists(tmp_path / "empty" / "latest")  # not a runs folder of ours
    # a runs folder the tool created gets the link, and later runs there move it
    assert train("steps=2", "eval_every=2", "--out", str(tmp_path / "runs" / "a")) == 0
    assert os.readlink(tmp_path / "runs" / "latest") == "a"
    assert train("steps=2", "eval_every=2", "--out", str(tmp_path / "runs" / "b")) == 0
    assert os.readlink(tmp_path / "runs" / "latest") == "b"
    # a loss.png the run did not write, put into the run folder, is left alone
    run = tmp_path / "runs" / "b"
    (run / "loss.png").unlink()
    manifest = json.loads((run / "manifest.json").read_text())
    manifest["files"].remove("loss.png")
    (run / "manifest.json").write_text(json.dumps(manifest))
    (run / "loss.png").write_bytes(b"a user's plot")
    assert main(["train", "--resume", str(run), "steps=3", "--quiet"]) == 0
    assert (run / "loss.png").read_bytes() == b"a user's plot"


def test_hidden_folders_and_users_step_folders_in_a_run_survive(finished_run, tmp_path, capsys):
    run = copy_run(finished_run, tmp_path)
    root = run / "checkpoints"
    (root / ".git").mkdir()
    (root / ".git" / "HEAD").write_bytes(b"ref: refs/heads/main\n")
    (root / ".tmp-notes").write_bytes(b"a user's hidden file")
    (root / "step_0000000").mkdir()  # a user's folder under a checkpoint name, below the run
    (root / "step_0000000" / STATE_NAME).write_bytes(b"not ours")
    # a temporary of ours left by a killed write, older than the next start
    stale = root / f"{TEMP_PREFIX}999999-0123abcd-step_0000006"
    stale.mkdir()
    (stale / "model.safetensors").write_bytes(b"\0" * 1000)
    os.utime(stale, (time.time() - 60, time.time() - 60))
    users = {
        k: v for k, v in snapshot(root).items() if k.startswith((".git", ".tmp-", "step_0000000"))
    }
    args = [
        "train",
        "--resume",
        str(run),
        "steps=8",
        "save_every=2",
        "keep_checkpoints=1",
        "--quiet",
    ]
    assert main(args) == 0
    after = snapshot(root)
    assert {k: after.get(k) for k in users} == users  # byte-identical, never pruned
    assert not stale.exists()
    assert [s for s, _ in list_checkpoints(run) if s > 0] == [8]  # ours pruned to keep=1
    # a user's step_* folder where the run would write: refused before anything is written
    (root / "step_0000010").mkdir()
    (root / "step_0000010" / "mine.txt").write_bytes(b"mine")
    before = snapshot(run)
    assert main(["train", "--resume", str(run), "steps=10", "save_every=2", "--quiet"]) == 2
    line = one_line_error(capsys.readouterr().err)
    assert "step_0000010' was not written by this run" in line
    assert snapshot(run) == before


# --------------------------------------------------------------------------- the lock


def _train_in_child(argv: list[str], err: str) -> None:
    """A forked ``anyformer train`` (torch already imported: it starts at once)."""
    sys.stderr = open(err, "w")  # noqa: SIM115 - the process ends with os._exit
    sys.stdout = open(os.devnull, "w")  # noqa: SIM115
    status = main(["train", *TINY, *argv])
    sys.stderr.flush()
    os._exit(status)


def test_concurrent_starts_one_runs_the_other_names_the_holder(tmp_path):
    out = tmp_path / "run"
    endless = ["steps=100000", "save_every=100000", "eval_every=100000", "--out", str(out)]
    fork = multiprocessing.get_context("fork")
    procs = [
        fork.Process(target=_train_in_child, args=(endless, str(tmp_path / f"err{i}")))
        for i in range(2)
    ]
    for proc in procs:
        proc.start()
    try:
        deadline = time.time() + 60
        while time.time() < deadline and all(p.is_alive() for p in procs):
            time.sleep(0.02)
        assert not all(p.is_alive() for p in procs), "both are running: the folder is not locked"
        i = 0 if not procs[0].is_alive() else 1
        loser, winner = procs[i], procs[1 - i]
        loser.join()
        assert loser.exitcode == 1
        assert winner.is_alive()  # still training
        line = one_line_error((tmp_path / f"err{i}").read_text())
        host = socket.gethostname()
        holder = (
            f"run folder '{out}' is in use by another anyformer train (pid {winner.pid} on {host}"
        )
        assert holder in line
        lock = json.loads((out / LOCK_NAME).read_text())
        assert (lock["pid"], lock["host"]) == (winner.pid, host)
        while time.time() < deadline and '"train"' not in _text(out / "log.jsonl"):
            time.sleep(0.02)  # the winner is in its loop: SIGTERM then saves
        os.kill(winner.pid, signal.SIGTERM)  # saves, stops, and releases the lock
        winner.join(timeout=120)
        assert winner.exitcode == 130
    finally:
        for proc in procs:
            if proc.is_alive():
                proc.kill()
                proc.join()
    assert not (out / LOCK_NAME).exists()
    assert len(list_checkpoints(out)) == 1


def _text(file: Path) -> str:
    try:
        return file.read_text()
    except OSError:
        return ""


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_a_stale_lock_is_taken_over_saying_so(finished_run, tmp_path, capsys):
    run = copy_run(finished_run, tmp_path)
    pid = _dead_pid()
    stale = {"pid": pid, "host": socket.gethostname(), "since": "2026-01-01 00:00:00 UTC"}
    (run / LOCK_NAME).write_text(json.dumps(stale))
    assert main(["train", "--resume", str(run), "steps=5", "--quiet"]) == 0
    err = capsys.readouterr().err
    assert f"taking over the stale lock of '{run}' (pid {pid} on {socket.gethostname()}" in err
    assert not (run / LOCK_NAME).exists()  # released at the end
    assert [s for s, _ in list_checkpoints(run)] == [2, 4, 5]


def test_the_lock_is_released_when_the_run_fails(tmp_path, capsys, monkeypatch):
    calls = []
    real = checkpoint_module.save_pretrained

    def disk_full_on_second_save(model, path, **kwargs):
        calls.append(path)
        if len(calls) == 2:
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return real(model, path, **kwargs)

    monkeypatch.setattr(checkpoint_module, "save_pretrained", disk_full_on_second_save)
    out = tmp_path / "run"
    assert train("steps=4", "save_every=2", "eval_every=4", "--out", str(out)) == 1
    line = one_line_error(capsys.readouterr().err)
    assert "cannot write the checkpoint of step 4" in line and "No space left on device" in line
    assert not (out / LOCK_NAME).exists()
    assert temporaries(out) == []
    ((step, folder),) = list_checkpoints(out)
    assert step == 2 and checkpoint_module.checkpoint_problem(folder) is None
    # the previous checkpoint is the one a clean run writes at step 2
    monkeypatch.setattr(checkpoint_module, "save_pretrained", real)
    assert train("steps=2", "save_every=2", "eval_every=4", "--out", str(tmp_path / "clean")) == 0
    a = load_pretrained(folder).state_dict()
    b = load_pretrained(tmp_path / "clean" / "checkpoints" / "step_0000002").state_dict()
    assert all(torch.equal(a[k], b[k]) for k in b)
    # and the run resumes from it
    assert main(["train", "--resume", str(out), "--quiet"]) == 0
    assert [s for s, _ in list_checkpoints(out)][-1] == 4


# --------------------------------------------------------------------------- corrupt files


def _truncate(file: Path) -> None:
    file.write_bytes(file.read_bytes()[: file.stat().st_size // 2])


CORRUPTIONS = {
    "truncated_weights": lambda c: _truncate(c / "model.safetensors"),
    "garbage_config": lambda c: (c / "config.json").write_bytes(b"\xff{not json"),
    "garbage_trainer_state": lambda c: (c / STATE_NAME).write_bytes(b"PK\x03\x04garbage"),
    "trainer_state_of_another_kind": lambda c: torch.save({"step": 4}, c / STATE_NAME),
    "garbage_train_config": lambda c: (c / "train_config.json").write_bytes(b"[1, 2"),
    "weights_missing": lambda c: (c / "model.safetensors").unlink(),
}


@pytest.mark.parametrize("kind", list(CORRUPTIONS))
def test_resume_skips_a_corrupt_newest_checkpoint(kind, finished_run, tmp_path, capsys):
    run = copy_run(finished_run, tmp_path)
    newest = run / "checkpoints" / "step_0000004"
    CORRUPTIONS[kind](newest)
    assert main(["train", "--resume", str(run), "steps=6", "--quiet"]) == 0
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert f"skipping corrupt checkpoint '{newest}'" in err
    assert f"resuming from '{run / 'checkpoints' / 'step_0000002'}'" in err
    records = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if r["event"] == "train"] == [1, 2, 3, 4, 5, 6]
    assert checkpoint_module.checkpoint_problem(run / "checkpoints" / "step_0000004") is None


@pytest.mark.parametrize("kind", ["truncated_weights", "garbage_trainer_state"])
def test_corrupt_checkpoints_everywhere_are_one_line(kind, finished_run, tmp_path, capsys):
    run = copy_run(finished_run, tmp_path)
    for _, folder in list_checkpoints(run):
        CORRUPTIONS[kind](folder)
    before = snapshot(run)
    newest = run / "checkpoints" / "step_0000004"
    assert main(["train", "--resume", str(run), "--quiet"]) == 1
    line = one_line_error(capsys.readouterr().err)
    assert f"run folder '{run}' has no intact checkpoint ('{newest}':" in line
    assert main(["train", "--resume", str(newest), "--out", str(tmp_path / "new"), "--quiet"]) == 1
    assert f"cannot resume from '{newest}'" in one_line_error(capsys.readouterr().err)
    assert snapshot(run) == before
    if kind == "truncated_weights":  # the reading commands: one line too
        for command in (["eval", str(run)], ["generate", str(run)], ["info", str(run)]):
            assert main(command) == 1, command
            assert str(newest) in one_line_error(capsys.readouterr().err)


def test_garbage_log_manifest_and_run_json(finished_run, tmp_path, capsys):
    run = copy_run(finished_run, tmp_path)
    with open(run / "log.jsonl", "ab") as f:
        f.write(
            b'\xff\xfe garbage\n{"step": "x", "event": "train"}\n[1]\n{"step": 3, "bpb": "y"}\n'
        )
    assert main(["train", "--resume", str(run), "steps=5", "--quiet"]) == 0
    records = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if r["event"] == "train"] == [1, 2, 3, 4, 5]
    (run / "manifest.json").write_bytes(b"\x00\x01 not json")
    before = snapshot(run)
    assert main(["train", "--resume", str(run), "steps=6", "--quiet"]) == 1
    assert "manifest.json: unreadable run manifest" in one_line_error(capsys.readouterr().err)
    assert snapshot(run) == before
    # a run stopped before its first checkpoint restarts from run.json: garbage there is one line
    restart = tmp_path / "restart"
    restart.mkdir()
    (restart / "run.json").write_bytes(b"\xff\xfe")
    assert main(["train", "--resume", str(restart), "--quiet"]) == 1
    assert "run.json: unreadable run configuration" in one_line_error(capsys.readouterr().err)


# --------------------------------------------------------------------------- kill -9


def _model(value: float) -> torch.nn.Module:
    net = TransformerWrapper(
        num_tokens=256,
        max_seq_len=16,
        attn_layers=Decoder(dim=16, depth=1, heads=2, attn_dim_head=8),
    )
    with torch.no_grad():
        for p in net.parameters():
            p.fill_(value)
    return AutoregressiveWrapper(net)


STATE_EXTRA = {
    k: 0 for k in ("tokens", "train_seconds", "optimizer", "scheduler", "scaler", "sampler", "rng")
}


def _write_forever(run_dir: str, first_step: int) -> None:
    """A child: claim the run folder, then write checkpoints first_step, first_step + 1, ..."""
    fd = os.open(os.devnull, os.O_WRONLY)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    run = Path(run_dir)
    claim = claim_run_dir(run, run, first_step - 1, default=False)
    step = first_step
    while True:
        state = {"step": step, **STATE_EXTRA}
        write_checkpoint(run, step, _model(float(step)), state, {"train": {}}, 2, claim.manifest)
        step += 1


def _wait_for_writing(run: Path, newest: int, stale: set[str], timeout: float = 60.0) -> None:
    """Until the child has a write under way (a new temporary) or done (a step past ``newest``)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = list_checkpoints(run)
        if set(temporaries(run)) - stale or (found and found[-1][0] > newest):
            return
        time.sleep(0.002)
    raise AssertionError(f"the child wrote nothing in {timeout} s")


def _check_complete(run: Path) -> int:
    """Every checkpoint taken as valid is one complete save: weights and state of its step."""
    found = list_checkpoints(run)
    for step, folder in found:
        model = load_pretrained(folder)
        assert all(torch.all(p == float(step)) for p in model.parameters()), folder
        assert torch.load(folder / STATE_NAME, weights_only=True)["step"] == step
    if not found:
        return 0
    assert resume_checkpoint(run) == found[-1][1]
    return found[-1][0]


def test_kill_9_during_checkpoint_writes(tmp_path, monkeypatch):
    """24 SIGKILLs at random moments of a loop of checkpoint writes (seeded)."""
    run = tmp_path / "run"
    run.mkdir()
    _model(0.0)  # import and warm up here: the forked children start at once
    monkeypatch.setenv(DELAY_ENV, "0.005")  # each write takes 15 ms or more
    rng = random.Random(15)
    fork = multiprocessing.get_context("fork")
    newest, progress, in_write = 0, [], 0
    for _ in range(24):
        child = fork.Process(target=_write_forever, args=(str(run), newest + 1))
        stale = set(temporaries(run))  # left by the last kill; the child's claim removes them
        child.start()
        _wait_for_writing(run, newest, stale)  # a loaded machine may start the child late
        time.sleep(rng.uniform(0.05, 0.4))
        os.kill(child.pid, signal.SIGKILL)
        child.join()
        assert child.exitcode == -signal.SIGKILL
        in_write += bool(temporaries(run))
        step = _check_complete(run)
        assert step >= newest  # never backwards: the previous checkpoint is intact
        newest = step
        progress.append(step)
    assert in_write >= 10, in_write  # most kills cut a write short
    assert progress[-1] > 12, progress  # writes completed between the kills
    time.sleep(0.01)
    claim = claim_run_dir(run, run, newest, default=False)  # the next start cleans up
    claim.release()
    assert temporaries(run) == []
    assert not [p for p in (run / "checkpoints").iterdir() if p.name.startswith(".")]


# --------------------------------------------------------------------------- --data


def _read_in_child(*reads: tuple[Path, int]) -> list:
    """``read_text_bytes`` in a child with a timeout: a hang fails the test, not the suite."""
    code = (
        "import sys\nfrom anyformer.data.files import read_text_bytes\nout = []\n"
        f"for path, n in {[(str(p), n) for p, n in reads]!r}:\n"
        "    try: out.append(read_text_bytes(path, max_bytes=n))\n"
        "    except ValueError as e: out.append(str(e))\n"
        "print(repr(out))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return ast.literal_eval(proc.stdout)


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")
def test_data_folder_with_a_fifo_and_a_link_to_dev_zero_completes(tmp_path):
    folder = tmp_path / "data"
    folder.mkdir()
    (folder / "a.txt").write_bytes(b"hello\n")
    os.mkfifo(folder / "b.fifo")
    os.symlink("/dev/zero", folder / "c.txt")
    (folder / "d.txt").write_bytes(b"x" * 5000)
    os.symlink(folder / "a.txt", folder / "e.txt")  # a link to a regular file is read
    (folder / "f").symlink_to(folder / "b.fifo")
    got = _read_in_child(
        (folder, 1000), (folder, 10**6), (folder / "b.fifo", 1000), (folder / "c.txt", 1000)
    )
    assert got[0] == (b"hello\n" + b"x" * 5000)[:1000]
    assert got[1] == b"hello\n" + b"x" * 5000 + b"\nhello\n"
    for message, alone in zip(got[2:], ("b.fifo", "c.txt")):  # given alone: refused, promptly
        assert (
            message
            == f"data path '{folder / alone}' is not a regular file (a FIFO, device or socket)"
        )
