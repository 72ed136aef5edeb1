"""The training loop as the user sees it: the final progress line once, and a second Ctrl-C that
says which checkpoint a resume starts from (issue 20, item 7)."""

from __future__ import annotations

from anyformer.cli import train
from anyformer.cli.checkpoint import list_checkpoints
from anyformer.cli.hints import command
from anyformer.cli.main import main

TINY = ["--preset", "tiny", "threads=1", "sample_len=4", "eval_batches=1"]


def test_the_final_progress_line_is_drawn_once(tmp_path, capsys):
    assert main(["train", *TINY, "steps=6", "eval_every=3", "--out", str(tmp_path / "r")]) == 0
    captured = capsys.readouterr()
    frames = captured.err.replace("\r", "\n").splitlines()
    assert sum(frame.startswith("100%|") for frame in frames) == 1, captured.err
    assert sum(" 6/6 [" in frame for frame in frames) == 1
    assert captured.out.count("step      6/6 | val bpb") == 1


def test_a_second_ctrl_c_says_which_checkpoint_a_resume_starts_from(tmp_path, capsys, monkeypatch):
    real = train.Trainer.train_step

    def interrupted_at_step_5(self):
        if self.step == 4:  # the second Ctrl-C arrives during step 5
            raise KeyboardInterrupt
        return real(self)

    monkeypatch.setattr(train.Trainer, "train_step", interrupted_at_step_5)
    monkeypatch.chdir(tmp_path)
    args = ["train", *TINY, "steps=8", "save_every=3", "eval_every=4", "--quiet", "--out", "r"]
    assert main(args) == 130
    assert [s for s, _ in list_checkpoints(tmp_path / "r")] == [3]
    assert capsys.readouterr().err == (
        f"anyformer: stopped at once at step 4 without saving: {command()} train --resume r "
        "continues from the checkpoint of step 3 (r/checkpoints/step_0000003)\n"
    )


def test_a_second_ctrl_c_before_any_checkpoint_says_the_run_starts_again(
    tmp_path, capsys, monkeypatch
):
    def at_once(self):
        raise KeyboardInterrupt

    monkeypatch.setattr(train.Trainer, "train_step", at_once)
    monkeypatch.chdir(tmp_path)
    assert main(["train", *TINY, "steps=8", "--quiet", "--out", "r"]) == 130
    assert capsys.readouterr().err == (
        f"anyformer: stopped at once at step 0, before the first checkpoint: {command()} train "
        "--resume r starts the run again from step 0\n"
    )
    monkeypatch.undo()
    monkeypatch.chdir(tmp_path)
    assert main(["train", "--resume", "r", "--quiet"]) == 0  # as said: from step 0
    assert [s for s, _ in list_checkpoints(tmp_path / "r")][-1] == 8
