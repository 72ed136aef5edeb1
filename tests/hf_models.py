"""Tiny Hugging Face models with random weights (built from configs, nothing downloaded) and the
comparisons the conversion tests share."""

from __future__ import annotations

import pytest
import torch

transformers = pytest.importorskip("transformers")

from anyformer import AutoregressiveWrapper  # noqa: E402

VOCAB = 97
TOL = 1e-4  # acceptance: float32 outputs agree to 1e-4


def _seeded(cls, config, seed):
    torch.manual_seed(seed)
    return cls(config).eval()


def tiny_gpt2(seed=0, arch="GPT2LMHeadModel", **overrides):
    kwargs = dict(
        n_embd=32, n_layer=2, n_head=4, vocab_size=VOCAB, n_positions=64,
        bos_token_id=None, eos_token_id=None, initializer_range=0.1,
    )  # fmt: skip
    kwargs.update(overrides)
    return _seeded(getattr(transformers, arch), transformers.GPT2Config(**kwargs), seed)


def tiny_bert(seed=0, **overrides):
    kwargs = dict(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=48,
        vocab_size=VOCAB, max_position_embeddings=64, type_vocab_size=2, initializer_range=0.1,
    )  # fmt: skip
    kwargs.update(overrides)
    return _seeded(transformers.BertModel, transformers.BertConfig(**kwargs), seed)


def _llama_kwargs(overrides):
    kwargs = dict(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        intermediate_size=48, vocab_size=VOCAB, max_position_embeddings=128,
        bos_token_id=None, eos_token_id=None, pad_token_id=None, initializer_range=0.1,
    )  # fmt: skip
    kwargs.update(overrides)
    return kwargs


def tiny_llama(seed=0, arch="LlamaForCausalLM", **overrides):
    config = transformers.LlamaConfig(**_llama_kwargs(overrides))
    return _seeded(getattr(transformers, arch), config, seed)


def tiny_qwen2(seed=0, arch="Qwen2ForCausalLM", **overrides):
    config = transformers.Qwen2Config(**_llama_kwargs(overrides))
    return _seeded(getattr(transformers, arch), config, seed)


def padded_batch(lens=(12, 7, 10), seed=1, vocab=VOCAB):
    """Right-padded token ids (b, max(lens)) and their keep mask."""
    g = torch.Generator().manual_seed(seed)
    n = max(lens)
    ids = torch.randint(0, vocab, (len(lens), n), generator=g)
    mask = torch.arange(n)[None] < torch.tensor(lens)[:, None]
    return ids, mask


def max_diff(a, b, mask=None):
    """max |a - b| over the kept positions."""
    diff = (a.double() - b.double()).abs()
    return (diff[mask] if mask is not None else diff).max().item()


@torch.no_grad()
def hf_greedy(hf_model, prompt, steps):
    out = hf_model.generate(
        prompt,
        attention_mask=torch.ones_like(prompt),
        max_new_tokens=steps,
        min_new_tokens=steps,
        do_sample=False,
        eos_token_id=None,
        pad_token_id=0,
    )
    return out[:, prompt.shape[1] :]


@torch.no_grad()
def our_greedy(model, prompt, steps):
    return AutoregressiveWrapper(model).generate(prompt, steps, temperature=0.0)


def same_parameters(a, b):
    """Same keys, shapes, dtypes and values (bitwise)."""
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for name in sa:
        assert sa[name].dtype == sb[name].dtype, name
        assert torch.equal(sa[name], sb[name]), name
