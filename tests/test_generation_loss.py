"""The next-token loss: the value of a float64 hand computation, and no extra copy of the logits."""

from __future__ import annotations

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from anyformer import AutoregressiveWrapper, Decoder, TransformerWrapper, XLAutoregressiveWrapper

V = 97


def net(seed=0, max_seq_len=16, **kwargs):
    torch.manual_seed(seed)
    stack = Decoder(dim=16, depth=1, heads=2)
    return TransformerWrapper(num_tokens=V, max_seq_len=max_seq_len, attn_layers=stack, **kwargs)


def hand_loss(logits, target, ignore_index=-100):
    """Mean of logsumexp(l) - l[target] over the scored positions, in float64 by hand."""
    lg = logits.detach().double().reshape(-1, logits.shape[-1])
    t = target.reshape(-1)
    keep = t != ignore_index
    lg, t = lg[keep], t[keep]
    picked = lg[torch.arange(len(t)), t]
    return (lg.exp().sum(-1).log() - picked).mean()


class _NewFullSize(TorchDispatchMode):
    """Records the ops that allocate a new tensor of exactly `numel` elements."""

    def __init__(self, numel):
        super().__init__()
        self.numel, self.ops = numel, []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        inputs = tree_flatten((args, kwargs))[0]
        storages = {t.untyped_storage().data_ptr() for t in inputs if isinstance(t, torch.Tensor)}
        for t in tree_flatten(out)[0]:
            if (
                isinstance(t, torch.Tensor)
                and t.numel() == self.numel
                and t.untyped_storage().data_ptr() not in storages
            ):
                self.ops.append(func.__name__)
        return out


def test_loss_equals_float64_hand_computation_with_ignore_index():
    wrapper = AutoregressiveWrapper(net(), ignore_index=5)
    x = torch.randint(0, V, (3, 12), generator=torch.Generator().manual_seed(1))
    x[0, 4] = x[2, 7] = 5  # two targets not scored
    loss = wrapper(x)
    inp = x[:, :-1].masked_fill(x[:, :-1] == 5, 0)  # the wrapper feeds pad_value there
    logits = wrapper.net(inp)
    expected = hand_loss(logits, x[:, 1:], ignore_index=5)
    assert loss.dtype == torch.float32
    assert abs(loss.item() - expected.item()) < 1e-5 * expected.item()


def test_float64_model_loss_is_computed_in_float64():
    # before: .float() cut float64 logits to float32 (an error of about 1e-7 relative)
    wrapper = AutoregressiveWrapper(net().double())
    x = torch.randint(0, V, (2, 10), generator=torch.Generator().manual_seed(2))
    loss = wrapper(x)
    expected = hand_loss(wrapper.net(x[:, :-1]), x[:, 1:])
    assert loss.dtype == torch.float64
    assert abs(loss.item() - expected.item()) < 1e-12


def test_bfloat16_logits_are_scored_in_float32():
    from anyformer.generation.loss import token_cross_entropy

    logits = torch.randn(2, 5, V, generator=torch.Generator().manual_seed(3)).bfloat16()
    target = torch.randint(0, V, (2, 5), generator=torch.Generator().manual_seed(4))
    loss = token_cross_entropy(logits, target, -100)
    assert loss.dtype == torch.float32
    assert abs(loss.item() - hand_loss(logits, target).item()) < 1e-5


def test_forward_and_backward_make_no_extra_full_size_copy():
    # b * n * V elements: the head's logits (mm), log_softmax's output, nll_loss's gradient and
    # log_softmax's gradient. The transposed (b, V, n) layout used before added a fifth: a clone
    # of the whole gradient in the backward.
    wrapper = AutoregressiveWrapper(net())
    x = torch.randint(0, V, (3, 12), generator=torch.Generator().manual_seed(5))
    with _NewFullSize(3 * 11 * V) as seen:
        wrapper(x).backward()
    assert len(seen.ops) == 4, seen.ops
    assert "clone" not in " ".join(seen.ops)


def test_xl_loss_equals_float64_hand_computation_per_segment():
    model = net(max_seq_len=4, max_mem_len=4)
    wrapper = XLAutoregressiveWrapper(model)
    x = torch.randint(0, V, (2, 9), generator=torch.Generator().manual_seed(6))
    loss = wrapper(x)
    inp, target = x[:, :-1], x[:, 1:]
    first, mems = model(inp[:, :4], return_mems=True)
    second = model(inp[:, 4:], mems=mems)
    expected = (hand_loss(first, target[:, :4]) + hand_loss(second, target[:, 4:])) / 2
    assert abs(loss.item() - expected.item()) < 1e-5 * expected.item()
