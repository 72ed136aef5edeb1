"""anyformer train's configuration: presets, config files, key=value overrides, errors."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest

from anyformer.cli.config import PRESETS, TrainConfig, preset
from anyformer.cli.errors import CLIError
from anyformer.cli.main import build_parser, main
from anyformer.cli.model import build_model, check_model
from anyformer.cli.overrides import (
    build_train_config,
    load_config_file,
    parse_overrides,
    parse_value,
    resolve_layers,
)
from anyformer.cli.train import WarmupCosine


def resolve(*overrides: str, config: str | None = None, preset_name: str | None = None):
    layer = resolve_layers(preset_name, config, list(overrides), {})
    return build_train_config(layer), layer["model"]


def test_key_value_overrides_reach_config_and_model():
    config, model = resolve(
        "steps=7", "batch_size=4", "seq_len=32", "lr=0.01", "eval_every=3", "save_every=5",
        "seed=11", "dim=48", "depth=3", "heads=6", "ff_glu=true", "tie_embedding=true",
    )  # fmt: skip
    assert (config.steps, config.batch_size, config.seq_len) == (7, 4, 32)
    assert (config.lr, config.eval_every, config.save_every, config.seed) == (0.01, 3, 5, 11)
    net = build_model(config, model).net
    assert (net.attn_layers.dim, net.attn_layers.depth, net.attn_layers.heads) == (48, 3, 6)
    assert net.attn_layers.config.feedforward.glu is True
    assert net.to_logits.weight is net.token_emb.emb.weight  # tie_embedding reached the wrapper
    assert net.max_seq_len == 32 and net.num_tokens == 256  # byte-level defaults


def test_config_file_then_overrides_win(tmp_path):
    file = tmp_path / "run.toml"
    file.write_text('steps = 9\nprompt = "class "\ndepth = 2\n[model]\ndim = 40\nheads = 5\n')
    config, model = resolve("dim=64", "heads=4", config=str(file))
    assert config.steps == 9 and config.prompt == "class "
    built = check_model(config, model)
    assert built["attn_layers"]["dim"] == 64  # the override beats the file
    assert built["attn_layers"]["heads"] == 4
    assert built["attn_layers"]["depth"] == 2  # a model keyword at the file's top level


def test_yaml_file(tmp_path):
    file = tmp_path / "run.yaml"
    file.write_text("steps: 12\nmodel:\n  dim: 32\n  heads: 2\n  attn_flash: true\n")
    config, model = resolve(config=str(file))
    built = check_model(config, model)
    assert config.steps == 12
    assert built["attn_layers"]["dim"] == 32
    assert built["attn_layers"]["attention"]["flash"] is True


def test_yaml_without_pyyaml_says_what_to_do(tmp_path, monkeypatch):
    file = tmp_path / "run.yml"
    file.write_text("steps: 3\n")
    monkeypatch.setitem(sys.modules, "yaml", None)
    with pytest.raises(CLIError, match=r"reading YAML needs PyYAML \(pip install pyyaml\)"):
        load_config_file(file)


def test_preset_then_overrides():
    config, model = resolve("steps=5", preset_name="tiny")
    assert config.steps == 5
    assert config.seq_len == PRESETS["tiny"]["seq_len"]
    assert model == PRESETS["tiny"]["model"]


@pytest.mark.parametrize(
    ("items", "message"),
    [
        (["stpes=5"], "unknown key 'stpes'.*Did you mean 'steps'"),
        (["attn_flsh=true"], "Did you mean 'attn_flash'"),
        (["dmi=64"], "Did you mean 'dim'"),
        (["batch_sise=8"], "Did you mean 'batch_size'"),
        (["steps=abc"], "steps=abc: expected an integer"),
        (["lr=fast"], "lr=fast: expected a number"),
        (["compile=maybe"], "compile=maybe: expected true or false"),
        (["steps=0"], "steps must be >= 1, got 0"),
        (["precision=bf61"], "precision must be .* Did you mean 'bf16'"),
        (["dim=30", "heads=4", "attn_dim_head=abc"], "model: .*dim_head"),
        (["seq_len=64", "max_seq_len=32"], r"max_seq_len \(32\) must be >= seq_len \(64\)"),
        (["num_tokens=100"], "num_tokens must be an int >= 256"),
        (["logits_dim=10"], r"logits_dim must be left unset \(it is num_tokens = 256 .*got 10"),
        (['embed_num_tokens={"genre": 4}'], "embed_num_tokens is not supported by anyformer train"),
        (["steps"], "expected key=value"),
    ],
)
def test_bad_keys_fail_with_one_clear_message(items, message):
    with pytest.raises(CLIError, match=message):
        config, model = resolve(*items)
        check_model(config, model)


def test_unknown_preset_suggests():
    with pytest.raises(CLIError, match=r"unknown preset 'tinny'.*Did you mean 'tiny'"):
        preset("tinny")


def test_values_are_typed():
    assert parse_value("true") is True and parse_value("Off") is False
    assert parse_value("none") is None
    assert parse_value("3") == 3 and isinstance(parse_value("3"), int)
    assert parse_value("2.5e-3") == 0.0025
    assert parse_value("[1, 2]") == [1, 2]
    assert parse_value('{"type": 2}') == {"type": 2}
    assert parse_value("swish") == "swish"
    layer = parse_overrides(["steps=1e3", "prompt=123", "top_k=none", "model.heads=2"])
    assert layer["steps"] == 1000 and isinstance(layer["steps"], int)
    assert layer["prompt"] == "123"  # a text option keeps the text
    assert layer["top_k"] is None
    assert layer["model"] == {"heads": 2}


def test_batch_must_divide_over_processes_and_micro_batches():
    from anyformer.cli.data import shard_sizes

    assert shard_sizes(TrainConfig(batch_size=12, grad_accum=3), world=2) == (6, 2)
    with pytest.raises(CLIError, match=r"batch_size \(10\) must be divisible .* \(2 x 3 = 6\)"):
        shard_sizes(TrainConfig(batch_size=10, grad_accum=3), world=2)


def test_warmup_cosine_schedule_by_hand():
    schedule = WarmupCosine(warmup=10, total=110, min_ratio=0.1)
    assert schedule(0) == pytest.approx(0.1)  # (0 + 1) / 10
    assert schedule(9) == pytest.approx(1.0)
    assert schedule(10) == pytest.approx(1.0)  # cosine starts at its top
    assert schedule(60) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5)))
    assert schedule(110) == pytest.approx(0.1)
    assert schedule(500) == pytest.approx(0.1)  # stays at the floor
    assert TrainConfig(steps=1000).warmup_steps == 50 and TrainConfig(warmup=0).warmup_steps == 0


def test_cli_errors_are_one_line(capsys):
    assert main(["train", "stpes=5"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("anyformer: error: unknown key 'stpes'")
    assert main(["train", "--data", "/no/such/file.txt", "--preset", "tiny"]) == 2
    assert capsys.readouterr().err == (
        "anyformer: error: data path '/no/such/file.txt' does not exist\n"
    )
    assert main(["generate", "/no/such/run"]) == 2
    assert capsys.readouterr().err == "anyformer: error: '/no/such/run' does not exist\n"


def test_options_may_come_before_overrides(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["generate", "x", "steps=3"])  # only train takes key=value
    assert main(["train", "--list-keys", "steps=3"]) == 0
    assert "steps " in capsys.readouterr().out


def test_help_has_no_empty_defaults():
    parser = build_parser()
    sub = parser._subparsers._group_actions[0].choices
    for name in ("train", "generate", "eval", "info"):
        text = sub[name].format_help()
        assert "(default: None)" not in text and "(default: False)" not in text
    assert "(default: auto)" in sub["generate"].format_help()


def test_python_dash_m_anyformer_help():
    proc = subprocess.run(
        [sys.executable, "-m", "anyformer", "train", "--help"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert "--resume DIR" in proc.stdout and "key=value" in proc.stdout


def test_a_config_file_that_is_not_utf8_is_one_line(tmp_path, capsys):
    file = tmp_path / "c.toml"
    file.write_bytes(b"steps = 3\n# caf\xe9\n")
    assert main(["train", "--config", str(file)]) == 2
    assert capsys.readouterr().err == (
        f"anyformer: error: config file '{file}' is not UTF-8 text (byte 0xe9 at offset 15)\n"
    )


def test_none_resets_a_model_keyword_to_the_librarys_default(tmp_path):
    config, model = resolve("attn_dim_head=none")  # the default preset sets 32
    assert "attn_dim_head" not in model
    assert check_model(config, model)["attn_layers"]["attention"]["dim_head"] == 64  # library's
    file = tmp_path / "run.yaml"
    file.write_text("model:\n  ff_mult: null\n")  # YAML's null is none too
    config, model = resolve(config=str(file))
    assert "ff_mult" not in model
    assert check_model(config, model)["attn_layers"]["feedforward"]["mult"] == 4.0


def test_a_model_table_says_which_preset_keys_it_keeps(tmp_path, capsys):
    file = tmp_path / "run.toml"
    file.write_text("steps = 1\n[model]\ndim = 32\ndepth = 1\nheads = 2\n")
    args = ["train", "--config", str(file), "ff_mult=2", "seq_len=16", "batch_size=2"]
    args += ["eval_batches=1", "sample_len=0", "max_bytes=5000", "threads=1"]
    assert main([*args, "--out", str(tmp_path / "r")]) == 0
    # the default preset's model keys the file and the overrides leave in place, named
    assert (
        "model: attn_dim_head=32, rotary_pos_emb=true, ff_glu=true, ff_swish=true, "
        "attn_flash=true, use_rmsnorm=true, ff_no_bias=true from the preset 'default' "
        f"({file} does not set them; set one to none "
        "for the library's default)\n"
    ) in capsys.readouterr().out
    run = json.loads((tmp_path / "r" / "run.json").read_text())
    assert run["model"]["attn_dim_head"] == 32 and run["model"]["ff_mult"] == 2
