"""Every decoding mode on every model that caches: cached paths equal full recomputation."""

from __future__ import annotations

import pytest
import torch
from gen_models import decoder_net, prompt_list

from anyformer import AutoregressiveWrapper

# name -> (stack keywords, wrapper keywords)
VARIANTS = {
    "rotary": (dict(rotary_pos_emb=True), dict(use_abs_pos_emb=False)),
    "rotary xpos": (dict(rotary_pos_emb=True, rotary_xpos=True), dict(use_abs_pos_emb=False)),
    "alibi": (dict(alibi_pos_bias=True), dict(use_abs_pos_emb=False)),
    "t5 relative bias": (dict(rel_pos_bias=True), dict(use_abs_pos_emb=False)),
    "dynamic position bias": (dict(dynamic_pos_bias=True), dict(use_abs_pos_emb=False)),
    "grouped-query (1 kv head)": (dict(attn_kv_heads=1), dict()),
    "memory key/values": (dict(attn_num_mem_kv=2), dict()),
    "memory tokens": (dict(), dict(num_memory_tokens=2)),
    "qk norm": (dict(attn_qk_norm=True), dict()),
}
NEW = 24


@pytest.fixture(autouse=True)
def _no_grad():
    with torch.no_grad():
        yield


def variant(name, seed, depth=2):
    from anyformer import Decoder, TransformerWrapper

    stack_kw, wrapper_kw = VARIANTS[name]
    torch.manual_seed(seed)
    layers = Decoder(dim=32, depth=depth, heads=2, attn_dim_head=16, **stack_kw)
    net = TransformerWrapper(num_tokens=32, max_seq_len=64, attn_layers=layers, **wrapper_kw)
    return net.eval()


@pytest.mark.parametrize("name", list(VARIANTS))
def test_every_mode_equals_recomputation(name):
    net = variant(name, seed=0)
    assert net.can_cache_kv
    wrapper = AutoregressiveWrapper(net)
    prompts = prompt_list((3, 7, 5), seed=1)
    reference = wrapper.generate(prompts, NEW, temperature=0, cache_kv=False)

    spec = wrapper.generate(
        prompts, NEW, temperature=0, draft_model=decoder_net(seed=2, depth=1), draft_tokens=3
    )
    assert torch.equal(spec, reference), "speculative"

    streamed = torch.stack(list(wrapper.stream(prompts, NEW, temperature=0)), dim=1)
    assert torch.equal(streamed, reference), "stream"

    kw = dict(beams=3, return_beams_and_scores=True)
    cached, cached_scores = wrapper.beam_search(prompts, 12, cache_kv=True, **kw)
    uncached, uncached_scores = wrapper.beam_search(prompts, 12, cache_kv=False, **kw)
    assert torch.equal(cached, uncached), "beam search"
    torch.testing.assert_close(cached_scores, uncached_scores, atol=1e-5, rtol=0)

    amateur = variant(name, seed=3, depth=1)
    contrastive = [
        wrapper.generate(prompts, NEW, temperature=0, amateur_model=amateur, cache_kv=cache_kv)
        for cache_kv in (True, False)
    ]
    assert torch.equal(contrastive[0], contrastive[1]), "contrastive"


def test_sliding_window_past_max_seq_len_every_mode():
    # one layer and no absolute positions: masking keys older than the window is exactly
    # recomputation on the window, so cached and uncached decoding must agree
    def windowed(seed):
        from anyformer import Decoder, TransformerWrapper

        torch.manual_seed(seed)
        layers = Decoder(dim=32, depth=1, heads=2, attn_dim_head=16)
        return TransformerWrapper(
            num_tokens=32, max_seq_len=10, attn_layers=layers, use_abs_pos_emb=False
        ).eval()

    wrapper = AutoregressiveWrapper(windowed(0))
    prompts = prompt_list((3, 8), seed=4)
    kw = dict(beams=3, return_beams_and_scores=True)
    cached, _ = wrapper.beam_search(prompts, 20, cache_kv=True, **kw)
    uncached, _ = wrapper.beam_search(prompts, 20, cache_kv=False, **kw)
    assert torch.equal(cached, uncached)
    amateur = windowed(1)
    contrastive = [
        wrapper.generate(prompts, 20, temperature=0, amateur_model=amateur, cache_kv=cache_kv)
        for cache_kv in (True, False)
    ]
    assert torch.equal(contrastive[0], contrastive[1])
    streamed = torch.stack(list(wrapper.stream(prompts, 20, temperature=0)), dim=1)
    assert torch.equal(streamed, wrapper.generate(prompts, 20, temperature=0, cache_kv=False))
