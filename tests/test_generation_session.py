"""generation/session.py: what the session hands the sampler."""

from __future__ import annotations

import torch

from anyformer import AutoregressiveWrapper, Decoder, TransformerWrapper


def test_a_bf16_model_gives_the_sampler_fp32_logits_equal_to_its_own_rounded_ones():
    torch.manual_seed(0)
    stack = Decoder(dim=32, depth=1, heads=2, rotary_pos_emb=True)
    lm = AutoregressiveWrapper(TransformerWrapper(num_tokens=64, max_seq_len=32, attn_layers=stack))
    lm = lm.to(torch.bfloat16)
    prompt = torch.randint(0, 64, (1, 5))
    seen: list[torch.Tensor] = []

    def record(logits: torch.Tensor) -> torch.Tensor:
        seen.append(logits)
        return logits

    lm.generate(prompt, 3, temperature=1.0, filter_logits_fn=record)
    assert [t.dtype for t in seen] == [torch.float32] * 3
    with torch.no_grad():
        first = lm.net(prompt)[:, -1]
    assert first.dtype == torch.bfloat16
    assert torch.equal(seen[0], first.float())  # the model's own logits, widened exactly
