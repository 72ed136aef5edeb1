"""The main job, short: `anyformer train` then `anyformer generate`, `eval` and `info` on the run."""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys

import pytest
import torch

from anyformer import load_pretrained
from anyformer.cli.checkpoint import STATE_NAME, list_checkpoints
from anyformer.cli.main import main
from anyformer.cli.sampling import can_cache
from anyformer.data import load_splits
from anyformer.quantize import prepare_for_decoding

TINY = ["--preset", "tiny", "threads=1", "attn_flash=true"]


def anyformer(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "anyformer", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """The CI version of the README's first command: a real `anyformer train` process."""
    out = tmp_path_factory.mktemp("t") / "runs" / "run"  # runs/ made by the tool: latest too
    proc = anyformer("train", *TINY, "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    return out, proc.stdout


def records(run_dir, event):
    lines = (run_dir / "log.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["event"] == event]


def test_train_prints_result_folder_and_sample(run):
    out, stdout = run
    evals = records(out, "eval")
    match = re.search(r"final validation bits per byte: (\d+\.\d{3}) after 30 steps", stdout)
    assert match and float(match.group(1)) == pytest.approx(evals[-1]["val_bpb"], abs=5e-4)
    assert f"run folder: {out}" in stdout
    sample = stdout.split("---\n", 1)[1].rsplit("\n---", 1)[0]
    assert sample.startswith("def ") and len(sample.encode("utf-8", "replace")) >= 30
    assert (out.parent / "latest").resolve() == out.resolve()


def test_log_has_every_step_and_each_evaluation(run):
    out, _ = run
    train = records(out, "train")
    assert [r["step"] for r in train] == list(range(1, 31))
    assert all(r["bpb"] == pytest.approx(r["loss"] / math.log(2)) for r in train)
    assert [r["step"] for r in records(out, "eval")] == [0, 10, 20, 30]
    # an untrained byte model predicts about uniformly: log2(256) = 8 bits
    assert records(out, "eval")[0]["val_bpb"] == pytest.approx(8.0, abs=0.5)
    assert records(out, "eval")[-1]["val_bpb"] < 7.0
    # warm-up over round(5% of 30) = 2 steps, then cosine down to 10% of lr = 3e-3
    assert train[0]["lr"] == pytest.approx(1.5e-3)
    assert train[1]["lr"] == pytest.approx(3e-3)
    assert train[29]["lr"] == pytest.approx(3e-3 * (0.1 + 0.45 * (1 + math.cos(math.pi * 27 / 28))))


def test_plot_and_checkpoints(run):
    out, _ = run
    assert (out / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    steps = [step for step, _ in list_checkpoints(out)]
    assert steps == [20, 30]  # save_every=10, the newest 2 kept
    state = torch.load(out / "checkpoints" / "step_0000030" / STATE_NAME, weights_only=True)
    assert state["step"] == 30 and state["tokens"] == 30 * 8 * 64
    assert not [p for p in (out / "checkpoints").iterdir() if p.name.startswith(".")]


def test_generate_equals_library_generate(run):
    out, _ = run
    proc = anyformer(
        "generate", str(out), "--prompt", "import os\n", "--max-new-tokens", "80",
        "--temperature", "0.7", "--top-k", "12", "--seed", "5", "--device", "cpu",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    lm = load_pretrained(out / "checkpoints" / "step_0000030")
    prompt = torch.tensor(list(b"import os\n"))
    expected = lm.generate(
        prompt, 80, temperature=0.7, filter_logits_fn="top_k", filter_kwargs={"k": 12},
        generator=torch.Generator().manual_seed(5), cache_kv=can_cache(lm.net, 90),
    )  # fmt: skip
    text = "import os\n" + bytes(expected.tolist()).decode("utf-8", errors="replace") + "\n"
    assert proc.stdout == text


@pytest.mark.parametrize(
    ("flags", "dtype", "quantize"),
    [(["--dtype", "bf16"], "bf16", None), (["--quantize", "int4"], None, "int4")],
)
def test_generate_decodes_in_the_format_asked(run, capsys, flags, dtype, quantize):
    out, _ = run
    args = [
        "generate",
        str(out),
        "--prompt",
        "def ",
        "--max-new-tokens",
        "24",
        "--temperature",
        "0",
    ]
    assert main([*args, "--device", "cpu", *flags]) == 0
    printed = capsys.readouterr().out
    lm = load_pretrained(out / "checkpoints" / "step_0000030")
    plain = lm.generate(torch.tensor(list(b"def ")), 24, temperature=0.0)
    low = prepare_for_decoding(lm, dtype, quantize)
    expected = low.generate(torch.tensor(list(b"def ")), 24, temperature=0.0)
    assert printed == "def " + bytes(expected.tolist()).decode("utf-8", errors="replace") + "\n"
    # the weights really were converted: the converted copy's logits differ from fp32's
    x = torch.tensor([list(b"def x(a, b):")])
    assert not torch.equal(low(x).float(), lm(x))
    assert plain.shape == expected.shape


def test_generate_refuses_an_unknown_format(run, capsys):
    out, _ = run
    with pytest.raises(SystemExit) as e:
        main(["generate", str(out), "--quantize", "int3"])
    assert e.value.code == 2
    assert "argument --quantize: invalid choice: 'int3' (choose from" in capsys.readouterr().err


def test_generate_repeats_the_runs_sample(run, capsys):
    out, stdout = run
    assert main(["generate", str(out), "--device", "cpu"]) == 0
    again = capsys.readouterr().out
    sample = stdout.split("---\n", 1)[1].rsplit("\n---", 1)[0]
    assert again == sample + "\n"


def test_eval_equals_the_last_logged_evaluation(run, capsys):
    out, _ = run
    assert main(["eval", str(out), "--device", "cpu"]) == 0
    printed = float(re.search(r"validation bits per byte: (\d+\.\d+)", capsys.readouterr().out)[1])
    assert printed == pytest.approx(records(out, "eval")[-1]["val_bpb"], abs=1e-4)


def test_eval_on_other_data(run, tmp_path, capsys):
    out, _ = run
    text = tmp_path / "text.txt"
    text.write_bytes(b"aaaa" * 3000)
    assert main(["eval", str(out), "--data", str(text), "--batches", "1"]) == 0
    printed = float(re.search(r"validation bits per byte: (\d+\.\d+)", capsys.readouterr().out)[1])
    # an independent computation: the mean next-byte loss over the 8 validation windows
    lm = load_pretrained(out / "checkpoints" / "step_0000030")
    window = torch.tensor(list(b"a" * 65))[None].expand(8, -1)  # every window is all 'a'
    with torch.no_grad():
        assert printed == pytest.approx(float(lm(window)) / math.log(2), abs=1e-4)


def test_info(run, capsys):
    out, _ = run
    assert main(["info", str(out)]) == 0
    text = capsys.readouterr().out
    lm = load_pretrained(out / "checkpoints" / "step_0000030")
    count = sum(p.numel() for p in lm.parameters())
    assert f"parameters: {count:,}" in text
    assert "attn_layers.dim = 32" in text and "attn_layers.attention.flash = true" in text
    assert re.search(r"0  self-attention\s+fused: F.scaled_dot_product_attention", text)
    assert re.search(r"1  feedforward", text)
    assert "training: step 30" in text


def test_quiet_prints_only_the_result(tmp_path):
    proc = anyformer("train", *TINY, "steps=2", "--quiet", "--out", str(tmp_path / "q"))
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert len(lines) == 2 and lines[0].startswith("final validation bits per byte:")
    assert lines[1] == f"run folder: {tmp_path / 'q'}"
    assert proc.stderr == ""  # no progress bar


def test_the_run_is_deterministic(tmp_path, capsys):
    for name in ("a", "b"):
        assert main(["train", *TINY, "steps=3", "--quiet", "--out", str(tmp_path / name)]) == 0
    a, b = (records(tmp_path / n, "train") for n in ("a", "b"))
    assert [r["loss"] for r in a] == [r["loss"] for r in b]


def test_data_flag_reads_a_text_file(tmp_path, capsys):
    corpus, _ = load_splits(max_bytes=30_000)
    text = tmp_path / "corpus.txt"
    text.write_bytes(bytes(corpus.tolist()))
    out = tmp_path / "d"
    assert main(["train", *TINY, "steps=2", "--quiet", "--data", str(text), "--out", str(out)]) == 0
    run = json.loads((out / "run.json").read_text())
    assert run["data"] == str(text) and run["train"]["data"] == str(text)


def test_out_of_memory_is_one_line_with_what_to_try(tmp_path, monkeypatch, capsys):
    from anyformer.cli import train

    def no_memory(self):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(train.Trainer, "train_step", no_memory)
    assert main(["train", *TINY, "--quiet", "--out", str(tmp_path / "oom")]) == 1
    assert capsys.readouterr().err == (
        "anyformer: error: out of memory on cpu with batch_size=8 (micro-batch 8 x seq_len 64): "
        "try grad_accum=2 (same batch, half the memory)\n"
    )


def test_a_corrupt_checkpoint_is_one_line(run, tmp_path, capsys):
    import shutil

    out, _ = run
    broken = tmp_path / "broken"
    shutil.copytree(out / "checkpoints" / "step_0000030", broken)
    weights = broken / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    assert main(["generate", str(broken), "--max-new-tokens", "4"]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"anyformer: error: {weights}: corrupt or unreadable safetensors file")
    assert err.count("\n") == 1


@pytest.mark.parametrize("command", ["eval", "generate"])
def test_byte_commands_refuse_a_model_without_256_tokens(command, tmp_path, capsys):
    from anyformer import AutoregressiveWrapper, Decoder, TransformerWrapper, save_pretrained

    net = TransformerWrapper(num_tokens=100, max_seq_len=16, attn_layers=Decoder(dim=8, depth=1))
    save_pretrained(AutoregressiveWrapper(net), tmp_path / "m")
    assert main([command, str(tmp_path / "m")]) == 2
    assert capsys.readouterr().err == (
        f"anyformer: error: anyformer {command} reads and writes bytes, so it needs a model of "
        f"at least 256 tokens in and out; '{tmp_path / 'm'}' has num_tokens=100, logits_dim=100\n"
    )


def test_console_script_entry_point():
    import importlib
    from pathlib import Path

    pyproject = Path(__file__).resolve().parents[1] / "pyproject.toml"
    section = pyproject.read_text().split("[project.scripts]\n", 1)[1].split("\n\n", 1)[0]
    target = dict(line.replace('"', "").split(" = ") for line in section.splitlines())["anyformer"]
    module, _, name = target.partition(":")
    assert getattr(importlib.import_module(module), name) is main.__globals__["cli"]
