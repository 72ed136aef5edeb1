"""`anyformer export-hf`: a tiny run trained with the quick start's recipe exports to a folder
that transformers loads and that continues a prompt with the same 20 greedy bytes; models that
map onto no family, and existing folders, are one-line errors."""

from __future__ import annotations

import json

import pytest
import torch
from hf_models import hf_greedy, our_greedy

from anyformer.cli.common import load_model
from anyformer.cli.config import PRESETS
from anyformer.cli.main import main
from anyformer.cli.model import net_of

transformers = pytest.importorskip("transformers")

SHAPE = {"dim": 32, "depth": 2, "heads": 2, "attn_dim_head": 16, "ff_mult": 3}
SHORT = ["--preset", "tiny", "--quiet", "threads=1", "steps=6", "eval_every=3", "save_every=3"]
SHORT += ["sample_len=0", "max_bytes=50000"]


def _keys(model: dict) -> list[str]:
    return [f"{k}={json.dumps(v)}" for k, v in model.items()]


def _train(out, model: dict) -> None:
    assert main(["train", *SHORT, "--out", str(out), *_keys(model)]) == 0


@pytest.fixture(scope="module")
def quick_start_run(tmp_path_factory):
    """A few steps of the quick start's recipe (its model keywords, smaller dims)."""
    recipe = {**PRESETS["default"]["model"], **SHAPE}
    out = tmp_path_factory.mktemp("runs") / "quick"
    _train(out, recipe)
    return out


def test_quick_start_recipe_exports_and_generates_the_same_bytes(quick_start_run, tmp_path, capsys):
    out = tmp_path / "hf"
    assert main(["export-hf", str(quick_start_run), str(out)]) == 0
    printed = capsys.readouterr().out
    assert f"wrote {out} from {quick_start_run}" in printed
    assert "LlamaForCausalLM (llama): config.json, model.safetensors" in printed
    hf = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
    _, lm = load_model(str(quick_start_run), "cpu")
    prompt = torch.tensor([list(b"def main(")])
    ours = our_greedy(net_of(lm).eval(), prompt, 20)
    assert torch.equal(hf_greedy(hf, prompt, 20), ours)
    with torch.no_grad():
        ids = torch.randint(0, 256, (2, 40), generator=torch.Generator().manual_seed(0))
        diff = (net_of(lm)(ids) - hf(ids).logits).abs().max().item()
    assert diff < 1e-4


def test_sharded_export_from_the_command_line(quick_start_run, tmp_path):
    out = tmp_path / "hf"
    assert main(["export-hf", str(quick_start_run), str(out), "--max-shard-size", "20KB"]) == 0
    index = json.loads((out / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 1
    hf = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
    _, lm = load_model(str(quick_start_run), "cpu")
    ids = torch.randint(0, 256, (1, 30), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert (net_of(lm)(ids) - hf(ids).logits).abs().max().item() < 1e-4


def test_existing_output_folder_is_a_one_line_error(quick_start_run, tmp_path, capsys):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    assert main(["export-hf", str(quick_start_run), str(out)]) == 2
    err = capsys.readouterr().err
    assert (
        err == f"anyformer: error: {out} exists and is not empty; refusing to overwrite it: "
        "write to a new or empty folder\n"
    )
    assert [p.name for p in out.iterdir()] == ["keep.txt"]


def test_a_model_without_a_family_names_the_option(tmp_path, capsys):
    run = tmp_path / "run"
    _train(run, {**SHAPE, "rotary_pos_emb": True, "use_rmsnorm": False})  # LayerNorm, biases
    capsys.readouterr()
    assert main(["export-hf", str(run), str(tmp_path / "hf")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"anyformer: error: cannot export '{run}")
    assert (
        "the closest, Llama, differs in: " in err and "use_rmsnorm=False (Llama needs True)" in err
    )
    assert err.count("\n") == 1 and not (tmp_path / "hf").exists()


def test_missing_source_is_a_one_line_error(tmp_path, capsys):
    assert main(["export-hf", str(tmp_path / "nothing"), str(tmp_path / "hf")]) == 2
    assert "does not exist" in capsys.readouterr().err
