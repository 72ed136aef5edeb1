"""torch.compile readiness: the public forward traces into one graph (no graph breaks)."""

import torch
import torch._dynamo

from anyformer import AutoregressiveWrapper, Decoder, Encoder, TransformerWrapper


def _breaks(fn, *args, **kwargs) -> int:
    torch._dynamo.reset()
    return torch._dynamo.explain(fn)(*args, **kwargs).graph_break_count


def test_decoder_forward_has_no_graph_breaks():
    model = TransformerWrapper(
        num_tokens=64,
        max_seq_len=32,
        attn_layers=Decoder(dim=32, depth=2, heads=2, attn_flash=True),
    ).eval()
    assert _breaks(model, torch.randint(0, 64, (2, 16))) == 0


def test_encoder_with_mask_has_no_graph_breaks():
    model = TransformerWrapper(
        num_tokens=64, max_seq_len=32, attn_layers=Encoder(dim=32, depth=1, heads=2)
    ).eval()
    mask = torch.ones(2, 16, dtype=torch.bool)
    mask[0, 10:] = False
    assert _breaks(model, torch.randint(0, 64, (2, 16)), mask=mask) == 0


def test_training_loss_has_no_graph_breaks():
    model = TransformerWrapper(
        num_tokens=64, max_seq_len=32, attn_layers=Decoder(dim=32, depth=1, heads=2)
    )
    assert _breaks(AutoregressiveWrapper(model), torch.randint(0, 64, (2, 17))) == 0
