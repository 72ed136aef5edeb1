"""Bad inputs to public forwards raise TypeError/ValueError naming the argument, the expectation
and what was received."""

import re

import pytest
import torch

from anyformer import (
    AutoregressiveWrapper,
    CrossAttender,
    Decoder,
    Encoder,
    PrefixDecoder,
    TransformerWrapper,
    ViTransformerWrapper,
    XTransformer,
)

NUM_TOKENS = 10
MAX_SEQ_LEN = 8
DIM = 32


def wrapper(stack=None, **kwargs):
    stack = stack if stack is not None else Decoder(dim=DIM, depth=1, heads=2)
    return TransformerWrapper(
        num_tokens=NUM_TOKENS, max_seq_len=MAX_SEQ_LEN, attn_layers=stack, **kwargs
    )


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return wrapper().eval()


@pytest.fixture(scope="module")
def tokens():
    return torch.randint(0, NUM_TOKENS, (2, 4))


@pytest.fixture(scope="module")
def xtransformer():
    return XTransformer(
        dim=DIM,
        enc_num_tokens=NUM_TOKENS,
        enc_max_seq_len=MAX_SEQ_LEN,
        enc_depth=1,
        enc_heads=2,
        dec_num_tokens=NUM_TOKENS,
        dec_max_seq_len=MAX_SEQ_LEN,
        dec_depth=1,
        dec_heads=2,
    ).eval()


def bool_mask(*shape):
    return torch.ones(*shape, dtype=torch.bool)


# --------------------------------------------------------------------------------------------
# token ids


def test_token_id_too_large(model):
    with pytest.raises(ValueError, match=r"^x holds token id 10, .*num_tokens=10"):
        model(torch.tensor([[1, 10]]))


def test_negative_token_id(model):
    with pytest.raises(ValueError, match=r"^x holds token id -3, .*\[0, 10\).*num_tokens=10"):
        model(torch.tensor([[-3, 1]]))


def test_float_token_tensor_with_whole_numbers_equals_long(model, tokens):
    # x-transformers accepts float ids (torch.zeros(2, 16) as a prompt is common); bitwise equal
    assert torch.equal(model(tokens.float()), model(tokens))
    assert torch.equal(model(tokens.double()), model(tokens))


def test_float_token_tensor_with_fractions(model, tokens):
    with pytest.raises(ValueError, match=r"^x holds 1\.5, which is not a token id.*torch\.float32"):
        model(torch.tensor([[1.5, 2.0]]))
    with pytest.raises(ValueError, match=r"^x holds nan"):
        model(torch.full((1, 2), float("nan")))


def test_bool_token_tensor(model, tokens):
    with pytest.raises(ValueError, match=r"^x must be .*dtype torch\.bool"):
        model(tokens > 3)


def test_token_tensor_wrong_rank(model, tokens):
    with pytest.raises(ValueError, match=r"^x must be a \(batch, seq_len\).*got shape \(4,\)"):
        model(tokens[0])


def test_token_list_is_type_error(model):
    with pytest.raises(TypeError, match=r"^x must be .*got list"):
        model([[1, 2]])


def test_valid_extreme_token_ids_run(model):
    out = model(torch.tensor([[0, NUM_TOKENS - 1]]))
    assert out.shape == (1, 2, NUM_TOKENS)


# --------------------------------------------------------------------------------------------
# sequence length vs absolute positions


def test_sequence_longer_than_max_seq_len(model):
    x = torch.randint(0, NUM_TOKENS, (1, MAX_SEQ_LEN + 1))
    with pytest.raises(ValueError, match=r"sequence length 9 exceeds max_seq_len=8"):
        model(x)
    assert model(x[:, :MAX_SEQ_LEN]).shape == (1, MAX_SEQ_LEN, NUM_TOKENS)


def test_no_abs_pos_emb_allows_long_sequences():
    m = wrapper(use_abs_pos_emb=False)
    assert m.pos_emb is None
    assert m(torch.randint(0, NUM_TOKENS, (1, 3 * MAX_SEQ_LEN))).shape == (1, 24, NUM_TOKENS)


def test_scaled_sinusoidal_allows_long_sequences():
    m = wrapper(scaled_sinu_pos_emb=True)
    assert m(torch.randint(0, NUM_TOKENS, (1, 20))).shape == (1, 20, NUM_TOKENS)


# --------------------------------------------------------------------------------------------
# masks


def test_wrapper_mask_wrong_shape(model, tokens):
    with pytest.raises(ValueError, match=r"^mask must be a torch\.bool tensor of shape \(2, 4\)"):
        model(tokens, mask=bool_mask(2, 5))


def test_wrapper_mask_wrong_dtype(model, tokens):
    with pytest.raises(ValueError, match=r"^mask must be a torch\.bool .*dtype torch\.float32"):
        model(tokens, mask=torch.ones(2, 4))


def test_wrapper_mask_not_a_tensor(model, tokens):
    with pytest.raises(TypeError, match=r"^mask must be a torch\.bool tensor .*got list"):
        model(tokens, mask=[[True] * 4] * 2)


def test_encoder_stack_mask_wrong_shape_and_dtype():
    enc = Encoder(dim=DIM, depth=1, heads=2)
    h = torch.randn(2, 4, DIM)
    with pytest.raises(ValueError, match=r"^mask must be .*shape \(2, 4\).*got shape \(2, 5\)"):
        enc(h, mask=bool_mask(2, 5))
    with pytest.raises(ValueError, match=r"^mask must be .*dtype torch\.int64"):
        enc(h, mask=torch.ones(2, 4, dtype=torch.long))
    assert enc(h, mask=bool_mask(2, 4)).shape == (2, 4, DIM)


def test_stack_input_wrong_width():
    enc = Encoder(dim=DIM, depth=1, heads=2)
    with pytest.raises(
        ValueError, match=r"^x must be a float tensor .*last dimension 32.*\(2, 4, 16\)"
    ):
        enc(torch.randn(2, 4, 16))
    with pytest.raises(ValueError, match=r"^x must be a float tensor .*dtype torch\.int64"):
        enc(torch.ones(2, 4, DIM, dtype=torch.long))


def test_xtransformer_mask_wrong_shape_and_dtype(xtransformer, tokens):
    with pytest.raises(ValueError, match=r"^mask must be .*shape \(2, 4\).*got shape \(2, 5\)"):
        xtransformer(tokens, tokens, mask=bool_mask(2, 5))
    with pytest.raises(ValueError, match=r"^mask must be .*dtype torch\.float32"):
        xtransformer(tokens, tokens, mask=torch.ones(2, 4))
    assert xtransformer(tokens, tokens, mask=bool_mask(2, 4)).shape == ()


def test_xtransformer_bad_target_ids(xtransformer, tokens):
    with pytest.raises(ValueError, match=r"^x holds token id 12, .*num_tokens=10"):
        xtransformer(tokens, torch.full((2, 4), 12))


# --------------------------------------------------------------------------------------------
# context / cross-attention


def test_context_missing_with_cross_attend():
    stack = Decoder(dim=DIM, depth=1, heads=2, cross_attend=True)
    with pytest.raises(ValueError, match=r"^context is required: .*cross_attend=True"):
        stack(torch.randn(1, 4, DIM))
    m = wrapper(stack)
    with pytest.raises(ValueError, match=r"^context is required: .*cross_attend=True"):
        m(torch.randint(0, NUM_TOKENS, (1, 4)))


def test_context_missing_on_cross_attender():
    with pytest.raises(ValueError, match=r"context is required"):
        CrossAttender(dim=DIM, depth=1)(torch.randn(1, 4, DIM))


def test_context_given_without_cross_attend(model, tokens):
    with pytest.raises(ValueError, match=r"^context was given .*cross_attend=False"):
        model(tokens, context=torch.randn(2, 3, DIM))
    with pytest.raises(ValueError, match=r"^context was given .*Encoder has cross_attend=False"):
        Encoder(dim=DIM, depth=1)(torch.randn(1, 4, DIM), context=torch.randn(1, 3, DIM))


def test_context_wrong_last_dim():
    stack = Decoder(dim=DIM, depth=1, heads=2, cross_attend=True)
    with pytest.raises(ValueError, match=r"^context must be .*last dimension 32.*\(2, 3, 16\)"):
        stack(torch.randn(2, 4, DIM), context=torch.randn(2, 3, 16))


def test_context_wrong_last_dim_with_dim_context():
    stack = Decoder(dim=DIM, depth=1, heads=2, cross_attend=True, cross_attn_dim_context=48)
    with pytest.raises(ValueError, match=r"^context must be .*last dimension 48.*\(2, 3, 32\)"):
        stack(torch.randn(2, 4, DIM), context=torch.randn(2, 3, DIM))
    assert stack(torch.randn(2, 4, DIM), context=torch.randn(2, 3, 48)).shape == (2, 4, DIM)


def test_context_wrong_batch():
    stack = Decoder(dim=DIM, depth=1, heads=2, cross_attend=True)
    with pytest.raises(ValueError, match=r"^context must have batch size 2 .*\(3, 3, 32\)"):
        stack(torch.randn(2, 4, DIM), context=torch.randn(3, 3, DIM))


def test_context_mask_wrong_shape():
    stack = Decoder(dim=DIM, depth=1, heads=2, cross_attend=True)
    ctx = torch.randn(2, 3, DIM)
    with pytest.raises(
        ValueError, match=r"^context_mask must be .*shape \(2, 3\) \(batch, context_len\).*\(2, 4\)"
    ):
        stack(torch.randn(2, 4, DIM), context=ctx, context_mask=bool_mask(2, 4))
    with pytest.raises(ValueError, match=r"^context_mask must be .*dtype torch\.float32"):
        stack(torch.randn(2, 4, DIM), context=ctx, context_mask=torch.ones(2, 3))


# --------------------------------------------------------------------------------------------
# attn_mask


def test_attn_mask_wrong_shape():
    enc = Encoder(dim=DIM, depth=1, heads=2)
    h = torch.randn(2, 4, DIM)
    with pytest.raises(ValueError, match=r"^attn_mask must be .*i=4, j=4.*got shape \(4, 5\)"):
        enc(h, attn_mask=bool_mask(4, 5))
    with pytest.raises(ValueError, match=r"^attn_mask must be .*h in \(1, 2\).*\(3, 4, 4\)"):
        enc(h, attn_mask=bool_mask(3, 4, 4))
    with pytest.raises(ValueError, match=r"^attn_mask must be .*b in \(1, 2\).*\(5, 2, 4, 4\)"):
        enc(h, attn_mask=bool_mask(5, 2, 4, 4))
    with pytest.raises(ValueError, match=r"^attn_mask must be .*dtype torch\.float32"):
        enc(h, attn_mask=torch.ones(4, 4))
    for shape in [(4, 4), (2, 4, 4), (1, 1, 4, 4), (2, 2, 4, 4)]:
        assert enc(h, attn_mask=bool_mask(*shape)).shape == (2, 4, DIM)


def test_attn_mask_wrong_shape_through_wrapper(tokens):
    m = wrapper(Encoder(dim=DIM, depth=1, heads=2))
    with pytest.raises(ValueError, match=r"^attn_mask must be .*got shape \(3, 3\)"):
        m(tokens, attn_mask=bool_mask(3, 3))


def test_prefix_decoder_bad_prefix_len():
    stack = PrefixDecoder(dim=DIM, depth=1, heads=2)
    h = torch.randn(2, 4, DIM)
    with pytest.raises(ValueError, match=r"^prefix_attn_len must be >= 0, got -1"):
        stack(h, prefix_attn_len=-1)
    with pytest.raises(ValueError, match=r"^prefix_attn_len must be an int or a \(batch,\)"):
        stack(h, prefix_attn_len=torch.tensor([1, 2, 3]))


# --------------------------------------------------------------------------------------------
# prepend_embeds, sum_embeds, embed_ids, pos


def test_prepend_embeds_wrong_width(model, tokens):
    with pytest.raises(
        ValueError, match=r"^prepend_embeds must be .*last dimension 32.*\(2, 3, 16\)"
    ):
        model(tokens, prepend_embeds=torch.randn(2, 3, 16))


def test_prepend_embeds_wrong_batch_and_mask(model, tokens):
    with pytest.raises(ValueError, match=r"^prepend_embeds must have batch size 2"):
        model(tokens, prepend_embeds=torch.randn(1, 3, DIM))
    with pytest.raises(ValueError, match=r"^prepend_mask must be .*shape \(2, 3\).*\(2, 4\)"):
        model(tokens, prepend_embeds=torch.randn(2, 3, DIM), prepend_mask=bool_mask(2, 4))
    with pytest.raises(ValueError, match=r"^prepend_mask was given without prepend_embeds"):
        model(tokens, prepend_mask=bool_mask(2, 3))


def test_sum_embeds_wrong_shape(model, tokens):
    with pytest.raises(ValueError, match=r"^sum_embeds must be .*last dimension 32"):
        model(tokens, sum_embeds=torch.randn(2, 4, 16))
    with pytest.raises(ValueError, match=r"^sum_embeds must have shape \(2, 4, 32\)"):
        model(tokens, sum_embeds=torch.randn(2, 5, DIM))


@pytest.fixture(scope="module")
def typed_model():
    return wrapper(embed_num_tokens={"type": 3, "seg": 2})


def test_embed_ids_missing_a_name(typed_model, tokens):
    ids = torch.zeros(2, 4, dtype=torch.long)
    with pytest.raises(
        ValueError, match=re.escape("exactly the embeddings ['seg', 'type'] (embed_num_tokens)")
    ) as info:
        typed_model(tokens, embed_ids={"type": ids})
    assert "got ['type']" in str(info.value)
    with pytest.raises(ValueError, match=re.escape("got []")):
        typed_model(tokens)
    with pytest.raises(ValueError, match=re.escape("got ['other', 'seg', 'type']")):
        typed_model(tokens, embed_ids={"type": ids, "seg": ids, "other": ids})


def test_embed_ids_out_of_range_and_shape(typed_model, tokens):
    ok = torch.zeros(2, 4, dtype=torch.long)
    with pytest.raises(ValueError, match=r"^embed_ids\['type'\] holds token id 3.*num_tokens=3"):
        typed_model(tokens, embed_ids={"type": torch.full((2, 4), 3), "seg": ok})
    with pytest.raises(ValueError, match=r"^embed_ids\['seg'\] must have shape \(2, 4\)"):
        typed_model(tokens, embed_ids={"type": ok, "seg": ok[:, :3]})
    assert typed_model(tokens, embed_ids={"type": ok, "seg": ok}).shape == (2, 4, NUM_TOKENS)


def test_embed_ids_given_to_model_without_them(model, tokens):
    with pytest.raises(ValueError, match=re.escape("exactly the embeddings []")):
        model(tokens, embed_ids={"type": torch.zeros(2, 4, dtype=torch.long)})


def test_pos_out_of_range(model, tokens):
    with pytest.raises(ValueError, match=r"^pos holds position 8, outside \[0, 8\).*max_seq_len"):
        model(tokens, pos=torch.tensor([0, 1, 2, 8]))
    with pytest.raises(ValueError, match=r"^pos holds position -1"):
        model(tokens, pos=torch.tensor([0, 1, 2, -1]))


def test_pos_wrong_shape_or_dtype(model, tokens):
    with pytest.raises(
        ValueError,
        match=r"^pos must be a torch\.long tensor of shape \(4,\) or \(2, 4\), got \(3,\)",
    ):
        model(tokens, pos=torch.tensor([0, 1, 2]))
    with pytest.raises(ValueError, match=r"^pos must be a torch\.long tensor"):
        model(tokens, pos=torch.arange(4).float())


# --------------------------------------------------------------------------------------------
# ViTransformerWrapper images


@pytest.fixture(scope="module")
def vit():
    return ViTransformerWrapper(
        image_size=32, patch_size=8, num_classes=5, attn_layers=Encoder(dim=DIM, depth=1, heads=2)
    ).eval()


@pytest.mark.parametrize(
    "shape",
    [
        (1, 1, 32, 32),
        (1, 3, 64, 64),
        (1, 3, 30, 30),
        (3, 32, 32),
        (1, 4, 32, 32),
        (0, 3, 32, 32),
        (1, 3, 0, 32),
        (1, 3, 32, 0),
    ],
)
def test_vit_rejects_bad_images(vit, shape):
    pattern = (
        r"^img must be a float tensor of shape \(batch, 3, H, W\) with batch >= 1, H, W "
        rf"positive multiples of patch_size=8 and H\*W <= 32\*32, got {re.escape(str(shape))}"
    )
    with pytest.raises(ValueError, match=pattern):
        vit(torch.randn(*shape))


def test_vit_rejects_integer_image(vit):
    with pytest.raises(ValueError, match=r"^img must be a float tensor"):
        vit(torch.zeros(1, 3, 32, 32, dtype=torch.uint8))


def test_vit_accepts_good_image(vit):
    assert vit(torch.randn(2, 3, 32, 32)).shape == (2, 5)


def test_vit_conflicting_return_flags(vit):
    with pytest.raises(ValueError, match="at most one of return_embeddings and return_logits"):
        vit(torch.randn(1, 3, 32, 32), return_embeddings=True, return_logits_and_embeddings=True)


def test_vit_image_size_not_divisible():
    with pytest.raises(
        ValueError, match=r"image_size \(30\) must be divisible by patch_size \(8\)"
    ):
        ViTransformerWrapper(image_size=30, patch_size=8, attn_layers=Encoder(dim=DIM, depth=1))


# --------------------------------------------------------------------------------------------
# AutoregressiveWrapper


def test_autoregressive_forward_needs_two_positions(model):
    ar = AutoregressiveWrapper(model)
    with pytest.raises(
        ValueError, match=r"^x must be a \(batch, seq_len \+ 1\) token tensor .*got \(2, 1\)"
    ):
        ar(torch.randint(0, NUM_TOKENS, (2, 1)))
    with pytest.raises(ValueError, match=r"got \(5,\)"):
        ar(torch.randint(0, NUM_TOKENS, (5,)))
    assert ar(torch.randint(0, NUM_TOKENS, (2, 2))).shape == ()


def test_autoregressive_mask_wrong_shape(model):
    ar = AutoregressiveWrapper(model)
    with pytest.raises(ValueError, match=r"^mask must be .*shape \(2, 5\) \(batch, seq_len \+ 1\)"):
        ar(torch.randint(0, NUM_TOKENS, (2, 5)), mask=bool_mask(2, 4))


def test_autoregressive_bad_ids(model):
    ar = AutoregressiveWrapper(model)
    with pytest.raises(ValueError, match=r"^x holds token id 11.*num_tokens=10"):
        ar(torch.full((2, 5), 11))


def test_generate_argument_checks(model):
    ar = AutoregressiveWrapper(model)
    prompt = torch.randint(0, NUM_TOKENS, (2, 3))
    with pytest.raises(ValueError, match=r"^seq_len must be an int >= 1, got 0"):
        ar.generate(prompt, 0)
    with pytest.raises(ValueError, match=r"^temperature must be .*>= 0, got -1"):
        ar.generate(prompt, 2, temperature=-1.0)
    with pytest.raises(ValueError, match=r"^prompts holds token id 10"):
        ar.generate(torch.full((1, 2), NUM_TOKENS), 2)
    with pytest.raises(ValueError, match=r"^prompt_lens must lie in \[1, 3\]"):
        ar.generate(prompt, 2, prompt_lens=torch.tensor([0, 3]))


# --------------------------------------------------------------------------------------------
# empty inputs and integer dtypes


EMPTY = "must hold at least one row and one position"


@pytest.mark.parametrize("shape", [(0, 3), (2, 0)])
def test_empty_token_ids_raise(model, shape):
    x = torch.zeros(*shape, dtype=torch.long)
    with pytest.raises(ValueError, match=rf"^x {EMPTY} .*got shape {re.escape(str(shape))}"):
        model(x)
    if shape[0] == 0:  # the loss wrapper: (batch, seq_len + 1) with seq_len >= 1
        with pytest.raises(ValueError, match=rf"^x {EMPTY} .*got shape \(0, 3\)"):
            AutoregressiveWrapper(model)(x)
    with pytest.raises(ValueError, match=rf"^prompts {EMPTY} .*got shape \(0, 3\)"):
        AutoregressiveWrapper(model).generate(torch.zeros(0, 3, dtype=torch.long), 2)


def test_empty_inputs_of_xtransformer(xtransformer, tokens):
    with pytest.raises(ValueError, match=rf"^src {EMPTY} .*got shape \(2, 0\)"):
        xtransformer(tokens[:, :0], tokens)
    with pytest.raises(ValueError, match=rf"^src {EMPTY} .*got shape \(0, 4\)"):
        xtransformer.generate(tokens[:0], tokens[:0, :1], 2)
    with pytest.raises(ValueError, match=rf"^x {EMPTY} .*got shape \(0, 4\)"):
        xtransformer.decoder(tokens[:0])


def test_empty_continuous_input():
    from anyformer import ContinuousAutoregressiveWrapper, ContinuousTransformerWrapper

    net = ContinuousTransformerWrapper(
        dim_in=4, dim_out=4, max_seq_len=MAX_SEQ_LEN, attn_layers=Decoder(dim=DIM, depth=1)
    )
    for shape in ((0, 3, 4), (2, 0, 4)):
        with pytest.raises(ValueError, match=rf"^x {EMPTY} .*got shape {re.escape(str(shape))}"):
            net(torch.zeros(*shape))
    with pytest.raises(ValueError, match=rf"^start_tokens {EMPTY} .*got shape \(1, 0, 4\)"):
        ContinuousAutoregressiveWrapper(net).generate(torch.zeros(1, 0, 4), 2)


@pytest.mark.parametrize("dtype", [torch.uint8, torch.int8, torch.int16, torch.int32])
def test_small_integer_ids_equal_long_ids(model, tokens, dtype):
    # uint8 (bytes) and other integer ids are converted to torch.long: the same logits and loss
    assert torch.equal(model(tokens.to(dtype)), model(tokens))
    ar = AutoregressiveWrapper(model)
    assert torch.equal(ar(tokens.to(dtype)), ar(tokens))
    prompt = tokens[:, :2]
    out = ar.generate(prompt.to(dtype), 3, temperature=0)
    assert out.dtype == torch.long
    assert torch.equal(out, ar.generate(prompt, 3, temperature=0))


def test_negative_int8_id_is_out_of_range(model):
    with pytest.raises(ValueError, match=r"^x holds token id -1, .*num_tokens=10"):
        model(torch.tensor([[1, -1]], dtype=torch.int8))


def test_uint8_ids_through_xtransformer(xtransformer, tokens):
    as_long = xtransformer(tokens, tokens)
    assert torch.equal(xtransformer(tokens.to(torch.uint8), tokens.to(torch.uint8)), as_long)


# --------------------------------------------------------------------------------------------
# the token-id range check without a host sync


def test_training_forward_on_cpu_keeps_the_exact_message():
    train_model = wrapper().train()
    with pytest.raises(ValueError, match=r"^x holds token id 12, .*num_tokens=10"):
        AutoregressiveWrapper(train_model)(torch.tensor([[1, 12, 3]]))


def test_training_forward_off_the_cpu_reads_nothing_on_the_host():
    # meta tensors stand for an accelerator: any host read (.item(), int(), bool()) raises
    # "Tensor.item() cannot be called on meta tensors"; the asynchronous check does not read
    with torch.device("meta"):
        meta_model = wrapper().train()
    x = torch.empty(2, 5, dtype=torch.long, device="meta")
    loss = AutoregressiveWrapper(meta_model)(x)
    assert loss.shape == () and loss.device.type == "meta"
    assert meta_model(x[:, :4]).shape == (2, 4, NUM_TOKENS)
    meta_model.eval()  # eval forwards keep the exact (host) check
    with pytest.raises(RuntimeError, match="meta tensors"):
        meta_model(x)


def test_asynchronous_check_still_fails_on_a_bad_id():
    from anyformer.checks import check_token_ids

    # on the CPU torch._assert_async raises at once, with the message
    with pytest.raises(RuntimeError, match=r"x holds a token id outside the vocabulary \[0, 10\)"):
        check_token_ids("x", torch.tensor([[1, 10]]), NUM_TOKENS, sync=False)
    check_token_ids("x", torch.tensor([[0, 9]]), NUM_TOKENS, sync=False)  # in range: no error
