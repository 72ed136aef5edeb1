"""Every option is checked before any work and named as the user typed it (issue 20, item 4)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from anyformer.cli.errors import CLIError
from anyformer.cli.main import build_parser, main
from anyformer.cli.overrides import build_train_config, resolve_layers

MISSING = "no-such-run"  # were the option checked late, the error would name this folder


@pytest.mark.parametrize(
    ("command", "option", "value", "message"),
    [
        ("generate", "--top-p", "2", "must be in (0, 1], got 2"),
        ("generate", "--top-p", "0", "must be in (0, 1], got 0"),
        ("generate", "--top-k", "0", "must be >= 1, got 0"),
        ("generate", "--top-k", "1.5", "expected an integer, got '1.5'"),
        ("generate", "--min-p", "1.5", "must be in [0, 1], got 1.5"),
        ("generate", "--temperature", "-1", "must be >= 0, got -1"),
        ("generate", "--temperature", "nan", "expected a finite number, got 'nan'"),
        ("generate", "--max-new-tokens", "0", "must be >= 1, got 0"),
        ("generate", "--seed", "-1", "must be in [0, 2**63), got -1"),
        ("generate", "--prompt", "", "must not be empty"),
        ("eval", "--batches", "0", "must be >= 1, got 0"),
        ("eval", "--batches", "x", "expected an integer, got 'x'"),
    ],
)
def test_bad_option_is_named_as_typed_before_any_work(command, option, value, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([command, MISSING, option, value])
    assert exit_info.value.code == 2
    out, err = capsys.readouterr()
    assert out == ""  # nothing printed first (generate used to print the prompt)
    assert err.endswith(f"anyformer {command}: error: argument {option}: {message}\n")


def test_eval_data_is_checked_before_the_model_loads(capsys):
    assert main(["eval", MISSING, "--data", "no-such-text.txt"]) == 2
    assert capsys.readouterr().err == "anyformer: error: --data 'no-such-text.txt' does not exist\n"


@given(st.floats(allow_nan=False, allow_infinity=False, width=64))
def test_top_p_accepts_exactly_the_interval_zero_to_one(p):
    parser = build_parser()
    if 0.0 < p <= 1.0:
        assert parser.parse_args(["generate", "d", "--top-p", repr(p)]).top_p == p
    else:
        with pytest.raises(SystemExit):
            parser.parse_args(["generate", "d", "--top-p", repr(p)])


@pytest.mark.parametrize(
    ("item", "message"),
    [
        ("top_p=2", "top_p must be in (0, 1] or none, got 2.0"),
        ("top_k=0", "top_k must be >= 1 or none, got 0"),
        ("min_p=1.5", "min_p must be in [0, 1] or none, got 1.5"),
        ("beta1=1", "beta1 must be in [0, 1), got 1.0"),
        ("beta2=-0.5", "beta2 must be in [0, 1), got -0.5"),
        ("seed=-1", "seed must be in [0, 2**63), got -1"),
        ("prompt=", "prompt must not be empty (or set sample_len=0 for no sample)"),
    ],
)
def test_training_keys_of_the_final_sample_are_checked_before_training(item, message):
    with pytest.raises(CLIError) as error:
        build_train_config(resolve_layers(None, None, [item], {}))
    assert str(error.value) == message


@pytest.mark.parametrize("command", ["train", "generate", "eval", "info"])
def test_help_has_no_markup(command):
    sub = build_parser()._subparsers._group_actions[0].choices[command]  # type: ignore[union-attr]
    text = sub.format_help()
    assert "``" not in text and ":mod:" not in text and ":class:" not in text
    assert text.startswith(f"usage: anyformer {command}")
