"""The usage patterns of the x-transformers README, shrunk to run fast on CPU, and the
TransformerWrapper options: each gives its documented output shape or measurable effect."""

import copy
import io
import math
import pickle

import pytest
import torch

from anyformer import (
    AutoregressiveWrapper,
    CrossAttender,
    Decoder,
    Encoder,
    LayerIntermediates,
    TransformerWrapper,
    ViTransformerWrapper,
    XTransformer,
)
from anyformer.nn.embeddings import AbsolutePositionalEmbedding, ScaledSinusoidalEmbedding

DIM = 32


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def decoder_lm(**kwargs):
    stack_kw = kwargs.pop("stack", {})
    return TransformerWrapper(
        num_tokens=64,
        max_seq_len=32,
        attn_layers=Decoder(dim=DIM, depth=2, heads=2, **stack_kw),
        **kwargs,
    ).eval()


def tokens(b=2, n=8, num_tokens=64):
    return torch.randint(0, num_tokens, (b, n))


# --------------------------------------------------------------------------------------------
# README patterns


def test_readme_decoder_only():
    model = TransformerWrapper(
        num_tokens=256, max_seq_len=1024, attn_layers=Decoder(dim=64, depth=2, heads=4)
    )
    x = torch.randint(0, 256, (1, 128))
    assert model(x).shape == (1, 128, 256)


def test_readme_encoder_only_with_mask():
    model = TransformerWrapper(
        num_tokens=256, max_seq_len=1024, attn_layers=Encoder(dim=64, depth=2, heads=4)
    ).eval()
    x = torch.randint(0, 256, (1, 128))
    mask = torch.ones_like(x).bool()
    out = model(x, mask=mask)
    assert out.shape == (1, 128, 256)
    # an all-True mask hides nothing: the same logits as no mask
    torch.testing.assert_close(out, model(x), atol=1e-5, rtol=1e-5)


def test_readme_encoder_mask_hides_padding():
    model = TransformerWrapper(
        num_tokens=256, max_seq_len=64, attn_layers=Encoder(dim=DIM, depth=2, heads=2)
    ).eval()
    x = torch.randint(0, 256, (1, 10))
    mask = torch.arange(10)[None] < 6
    y = x.clone()
    y[:, 6:] = (y[:, 6:] + 1) % 256  # change only masked-out tokens
    torch.testing.assert_close(model(x, mask=mask)[:, :6], model(y, mask=mask)[:, :6])


def test_readme_encoder_decoder():
    model = XTransformer(
        dim=DIM,
        enc_num_tokens=256,
        enc_depth=2,
        enc_heads=2,
        enc_max_seq_len=1024,
        dec_num_tokens=256,
        dec_depth=2,
        dec_heads=2,
        dec_max_seq_len=1024,
        tie_token_emb=True,
    )
    assert model.encoder.token_emb is model.decoder.net.token_emb
    src = torch.randint(0, 256, (1, 64))
    src_mask = torch.ones_like(src).bool()
    tgt = torch.randint(0, 256, (1, 64))
    loss = model(src, tgt, mask=src_mask)
    assert loss.shape == ()
    assert loss.dtype == torch.float32
    assert abs(loss.item() - math.log(256)) < 1.0
    loss.backward()
    enc_grads = [p.grad for n, p in model.encoder.named_parameters() if "attn_layers" in n]
    assert enc_grads and all(g is not None for g in enc_grads)
    assert sum(g.abs().sum().item() for g in enc_grads) > 0


def test_readme_simple_vit():
    model = ViTransformerWrapper(
        image_size=256,
        patch_size=32,
        num_classes=1000,
        attn_layers=Encoder(dim=DIM, depth=2, heads=2),
    )
    img = torch.randn(1, 3, 256, 256)
    assert model(img).shape == (1, 1000)
    assert model(img, return_embeddings=True).shape == (1, 64, DIM)
    logits, embeds = model(img, return_logits_and_embeddings=True)
    assert logits.shape == (1, 1000) and embeds.shape == (1, 64, DIM)


def test_vit_register_tokens():
    model = ViTransformerWrapper(
        image_size=64,
        patch_size=16,
        num_classes=10,
        num_register_tokens=4,
        attn_layers=Encoder(dim=DIM, depth=1, heads=2),
    ).eval()
    assert model.register_tokens.shape == (4, DIM)
    img = torch.randn(2, 3, 64, 64)
    assert model(img).shape == (2, 10)
    assert model(img, return_embeddings=True).shape == (2, 16, DIM)  # registers dropped
    # registers take part in attention: changing them changes the patch outputs
    before = model(img, return_embeddings=True)
    with torch.no_grad():
        model.register_tokens.add_(1.0)
    assert not torch.allclose(before, model(img, return_embeddings=True))


def test_readme_image_to_caption():
    encoder = ViTransformerWrapper(
        image_size=256, patch_size=32, attn_layers=Encoder(dim=DIM, depth=1, heads=2)
    )
    decoder = TransformerWrapper(
        num_tokens=256,
        max_seq_len=1024,
        attn_layers=Decoder(dim=DIM, depth=1, heads=2, cross_attend=True),
    )
    img = torch.randn(1, 3, 256, 256)
    caption = torch.randint(0, 256, (1, 128))
    encoded = encoder(img, return_embeddings=True)
    assert encoded.shape == (1, 64, DIM)
    # no num_classes: the mean-pooled features, as x-transformers returns them
    torch.testing.assert_close(encoder(img), encoded.mean(dim=1), atol=1e-6, rtol=0)
    assert decoder(caption, context=encoded).shape == (1, 128, 256)


def pali_parts():
    encoder = ViTransformerWrapper(
        image_size=64, patch_size=16, attn_layers=Encoder(dim=DIM, depth=1, heads=2)
    )
    pali = XTransformer(
        dim=DIM,
        enc_num_tokens=256,
        enc_depth=1,
        enc_heads=2,
        enc_max_seq_len=64,
        dec_num_tokens=256,
        dec_depth=1,
        dec_heads=2,
        dec_max_seq_len=64,
    )
    return encoder, pali


def test_readme_pali():
    encoder, pali = pali_parts()
    pali.eval()
    img = torch.randn(1, 3, 64, 64)
    prompt = torch.randint(0, 256, (1, 32))
    prompt_mask = torch.ones(1, 32).bool()
    output_text = torch.randint(0, 256, (1, 32))
    img_embeds = encoder(img, return_embeddings=True)
    assert img_embeds.shape == (1, 16, DIM)
    loss = pali(prompt, output_text, mask=prompt_mask, src_prepend_embeds=img_embeds)
    assert loss.shape == ()
    plain = pali(prompt, output_text, mask=prompt_mask)
    assert not torch.isclose(loss, plain)
    loss.backward()
    assert encoder.patch_to_embedding[1].weight.grad is not None
    assert encoder.patch_to_embedding[1].weight.grad.abs().sum() > 0


def test_readme_xtransformer_generate():
    _, model = pali_parts()
    seq_in = torch.randint(0, 256, (2, 20))
    seq_out_start = torch.randint(0, 256, (2, 1))
    out = model.generate(seq_in, seq_out_start, 10)
    assert out.shape == (2, 10)
    assert out.dtype == torch.long
    assert int(out.min()) >= 0 and int(out.max()) < 256
    masked = model.generate(seq_in, seq_out_start, 5, mask=torch.ones(2, 20, dtype=torch.bool))
    assert masked.shape == (2, 5)


def test_readme_cross_attender():
    model = CrossAttender(dim=DIM, depth=2, heads=2)
    nodes = torch.randn(1, 32, DIM)
    nodes_mask = torch.ones(1, 32).bool()
    neighbors = torch.randn(1, 5, DIM)
    neighbor_mask = torch.ones(1, 5).bool()
    out = model(nodes, context=neighbors, mask=nodes_mask, context_mask=neighbor_mask)
    assert out.shape == (1, 32, DIM)
    assert model.layer_types == ("c", "f", "c", "f")


def test_autoregressive_wrapper_train_and_generate():
    num_tokens = 256
    net = TransformerWrapper(
        num_tokens=num_tokens, max_seq_len=64, attn_layers=Decoder(dim=DIM, depth=2, heads=2)
    )
    model = AutoregressiveWrapper(net)
    x = torch.randint(0, num_tokens, (4, 33))
    loss = model(x)
    assert loss.shape == ()
    assert loss.item() > 0
    assert abs(loss.item() - math.log(num_tokens)) < 1.0
    loss.backward()
    assert net.token_emb.emb.weight.grad is not None
    loss2, (logits, _) = model(x, return_outputs=True)  # x-transformers: (loss, (logits, cache))
    assert logits.shape == (4, 32, num_tokens)
    # the loss is next-token cross-entropy: logits at i against token i + 1, written out
    manual = torch.nn.functional.cross_entropy(logits.transpose(1, 2), x[:, 1:])
    torch.testing.assert_close(loss2, manual)
    torch.testing.assert_close(loss, manual)
    start = torch.randint(0, num_tokens, (3, 4))
    generated = model.generate(start, 12)
    assert generated.shape == (3, 12)
    assert generated.dtype == torch.long
    assert model.generate(start[0], 5).shape == (5,)
    assert net.training  # generate restores the training flag


def test_autoregressive_ignore_index_excludes_targets():
    net = decoder_lm()
    model = AutoregressiveWrapper(net, ignore_index=0)
    x = torch.randint(1, 64, (2, 9))
    x_ignored = x.clone()
    x_ignored[:, 5:] = 0
    loss, (logits, _) = model(x_ignored, return_outputs=True)
    manual = torch.nn.functional.cross_entropy(logits[:, :4].transpose(1, 2), x_ignored[:, 1:5])
    torch.testing.assert_close(loss, manual)


# --------------------------------------------------------------------------------------------
# TransformerWrapper options


def test_emb_dim_projection():
    m = decoder_lm(emb_dim=16)
    assert m.token_emb.emb.weight.shape == (64, 16)
    assert isinstance(m.project_emb, torch.nn.Linear)
    assert (m.project_emb.in_features, m.project_emb.out_features) == (16, DIM)
    assert m(tokens()).shape == (2, 8, 64)
    assert isinstance(decoder_lm().project_emb, torch.nn.Identity)


def stack_input(model, x, **kwargs):
    """What the wrapper hands its attention stack (the embeddings after every wrapper step)."""
    seen = []
    handle = model.attn_layers.register_forward_pre_hook(lambda mod, args: seen.append(args[0]))
    model(x, **kwargs)
    handle.remove()
    return seen[0]


def test_emb_dropout():
    m = decoder_lm(emb_dropout=0.5)
    x = tokens()
    no_dropout = decoder_lm()
    no_dropout.load_state_dict(m.state_dict())
    # eval: no dropout, the same logits as the same weights without emb_dropout
    torch.testing.assert_close(m(x), no_dropout(x))
    # training: about half the embedding entries are zeroed and the rest scaled by 1/(1-p) = 2
    embeds = stack_input(m, x)
    m.train()
    dropped = stack_input(m, x)
    kept = dropped != 0
    assert 0.35 < kept.float().mean().item() < 0.65
    torch.testing.assert_close(dropped[kept], 2 * embeds[kept])


def test_post_emb_norm():
    m = decoder_lm(post_emb_norm=True)
    assert m.post_emb_norm.normalized_shape == (DIM,)
    assert isinstance(decoder_lm().post_emb_norm, torch.nn.Identity)
    # the stack receives layer-normalised embeddings: per position mean 0, variance 1 (gain 1)
    h = stack_input(m, tokens()).double()
    torch.testing.assert_close(
        h.mean(-1), torch.zeros(h.shape[:-1], dtype=h.dtype), atol=1e-6, rtol=0
    )
    torch.testing.assert_close(
        h.var(-1, unbiased=False), torch.ones(h.shape[:-1], dtype=h.dtype), atol=1e-3, rtol=0
    )
    plain = stack_input(decoder_lm(), tokens()).double()
    assert plain.var(-1, unbiased=False).sub(1).abs().max() > 0.1  # without it they are not


def test_tie_embedding_shares_the_weight():
    m = decoder_lm(tie_embedding=True)
    assert m.to_logits.weight is m.token_emb.emb.weight
    assert m.to_logits.weight.data_ptr() == m.token_emb.emb.weight.data_ptr()
    n_untied = sum(p.numel() for p in decoder_lm().parameters())
    assert sum(p.numel() for p in m.parameters()) == n_untied - 64 * DIM
    c = copy.deepcopy(m)
    assert c.to_logits.weight is c.token_emb.emb.weight
    assert c.to_logits.weight.data_ptr() != m.to_logits.weight.data_ptr()
    x = tokens()
    torch.testing.assert_close(c(x), m(x))


def test_pickle_and_torch_save_tied_model():
    m = decoder_lm(tie_embedding=True)
    blob = pickle.dumps(m)
    loaded = pickle.loads(blob)
    assert loaded.to_logits.weight is loaded.token_emb.emb.weight
    sd, sd2 = m.state_dict(), loaded.state_dict()
    assert sd.keys() == sd2.keys()
    assert all(torch.equal(sd[k], sd2[k]) for k in sd)
    buf = io.BytesIO()
    torch.save(m, buf)
    buf.seek(0)
    again = torch.load(buf, weights_only=False)
    assert again.to_logits.weight is again.token_emb.emb.weight
    x = tokens()
    torch.testing.assert_close(again(x), m(x))
    # state_dict round trip into a fresh tied model
    fresh = decoder_lm(tie_embedding=True)
    fresh.load_state_dict(sd)
    torch.testing.assert_close(fresh(x), m(x))


def test_logits_dim():
    m = decoder_lm(logits_dim=7)
    assert m.to_logits.weight.shape == (7, DIM)
    assert m(tokens()).shape == (2, 8, 7)


def test_use_abs_pos_emb_false():
    m = decoder_lm(use_abs_pos_emb=False)
    assert m.pos_emb is None
    assert not any("pos_emb" in n for n, _ in m.named_parameters())
    assert isinstance(decoder_lm().pos_emb, AbsolutePositionalEmbedding)
    assert m(tokens(n=40)).shape == (2, 40, 64)


def test_disable_abs_pos_emb_from_stack():
    m = decoder_lm(stack={"disable_abs_pos_emb": True})
    assert m.pos_emb is None


def test_scaled_sinu_pos_emb():
    m = decoder_lm(scaled_sinu_pos_emb=True)
    assert isinstance(m.pos_emb, ScaledSinusoidalEmbedding)
    assert [n for n, _ in m.pos_emb.named_parameters()] == ["scale"]
    pe = m.pos_emb(torch.arange(4))
    assert pe.shape == (4, DIM)
    # position 0: sin(0) = 0 for the first half, cos(0) = 1 times the scale for the second
    scale = m.pos_emb.scale.item()
    torch.testing.assert_close(pe[0, : DIM // 2], torch.zeros(DIM // 2))
    torch.testing.assert_close(pe[0, DIM // 2 :], torch.full((DIM // 2,), scale))
    assert scale == pytest.approx(DIM**-0.5)


def test_l2norm_embed():
    m = decoder_lm(l2norm_embed=True)
    x = tokens()
    norms = m.token_emb(x).norm(dim=-1)
    torch.testing.assert_close(norms, torch.ones_like(norms))
    pos_norms = m.pos_emb(torch.arange(8)).norm(dim=-1)
    torch.testing.assert_close(pos_norms, torch.ones_like(pos_norms))
    assert m(x).shape == (2, 8, 64)


def test_emb_frac_gradient():
    def grad_of(frac):
        torch.manual_seed(3)
        m = decoder_lm(emb_frac_gradient=frac)
        m(tokens()).sum().backward()
        return m.token_emb.emb.weight.grad

    full, tenth = grad_of(1.0), grad_of(0.1)
    assert full.abs().sum() > 0
    torch.testing.assert_close(tenth, 0.1 * full, rtol=1e-4, atol=1e-7)


def test_emb_frac_gradient_keeps_forward():
    torch.manual_seed(4)
    a = decoder_lm(emb_frac_gradient=0.1)
    torch.manual_seed(4)
    b = decoder_lm()
    x = tokens()
    torch.testing.assert_close(a(x), b(x))


def test_embed_num_tokens_and_embed_ids():
    m = decoder_lm(embed_num_tokens={"type": 3})
    assert m.embeds["type_embed"].weight.shape == (3, DIM)
    x = tokens()
    ids = torch.zeros(2, 8, dtype=torch.long)
    out = m(x, embed_ids={"type": ids})
    assert out.shape == (2, 8, 64)
    changed = ids.clone()
    changed[:, 3] = 2
    out2 = m(x, embed_ids={"type": changed})
    torch.testing.assert_close(out[:, :3], out2[:, :3])  # causal: earlier positions untouched
    assert not torch.allclose(out[:, 3:], out2[:, 3:])


def test_return_embeddings():
    m = decoder_lm()
    x = tokens()
    emb = m(x, return_embeddings=True)
    assert emb.shape == (2, 8, DIM)
    # the logits are those embeddings through the bias-free output head (x-transformers' to_logits)
    head = m.to_logits.weight.double()
    torch.testing.assert_close(m(x).double(), emb.double() @ head.T, atol=1e-5, rtol=1e-5)


def test_return_only_embed():
    m = decoder_lm(return_only_embed=True)
    assert isinstance(m.to_logits, torch.nn.Identity)
    assert m(tokens()).shape == (2, 8, DIM)


def test_return_logits_and_embeddings():
    m = decoder_lm()
    logits, emb = m(tokens(), return_logits_and_embeddings=True)
    assert logits.shape == (2, 8, 64) and emb.shape == (2, 8, DIM)
    torch.testing.assert_close(logits, m.to_logits(emb))


def test_return_intermediates():
    depth = 3
    m = TransformerWrapper(
        num_tokens=64, max_seq_len=32, attn_layers=Encoder(dim=DIM, depth=depth, heads=2)
    ).eval()
    x = tokens()
    logits, inter = m(x, return_intermediates=True)
    assert isinstance(inter, LayerIntermediates)
    assert logits.shape == (2, 8, 64)
    assert len(inter.hiddens) == depth
    assert all(h.shape == (2, 8, DIM) for h in inter.hiddens)
    assert len(inter.layer_hiddens) == 2 * depth + 1
    assert len(inter.attn_intermediates) == depth
    torch.testing.assert_close(inter.last_hidden, m(x, return_embeddings=True))
    torch.testing.assert_close(logits, m(x))


def test_return_attn():
    m = decoder_lm()
    out, attn = m(tokens(), return_attn=True)
    assert out.shape == (2, 8, 64)
    assert len(attn) == 2
    for a in attn:
        assert a.shape == (2, 2, 8, 8)
        torch.testing.assert_close(a.sum(-1), torch.ones(2, 2, 8))
        assert torch.all(a.triu(1) == 0)  # causal


def test_custom_pos():
    m = decoder_lm()
    x = tokens()
    default = m(x)
    torch.testing.assert_close(m(x, pos=torch.arange(8)), default)
    torch.testing.assert_close(m(x, pos=torch.arange(8).expand(2, 8)), default)
    shifted = m(x, pos=torch.arange(8) + 5)
    assert not torch.allclose(shifted, default)


def test_prepend_embeds_and_mask():
    m = decoder_lm()
    x = tokens()
    prepend = torch.randn(2, 3, DIM)
    out = m(x, prepend_embeds=prepend)
    assert out.shape == (2, 3 + 8, 64)
    pmask = torch.tensor([[True, True, True], [False, True, True]])
    masked = m(x, prepend_embeds=prepend, prepend_mask=pmask)
    assert masked.shape == (2, 11, 64)
    torch.testing.assert_close(masked[0], out[0])  # all-True row is unchanged
    assert not torch.allclose(masked[1, 3:], out[1, 3:])


def test_sum_embeds():
    m = decoder_lm()
    x = tokens()
    base = m(x)
    torch.testing.assert_close(m(x, sum_embeds=torch.zeros(2, 8, DIM)), base)
    assert not torch.allclose(m(x, sum_embeds=torch.randn(2, 8, DIM)), base)


def test_post_norm_blocks():
    m = TransformerWrapper(
        num_tokens=64,
        max_seq_len=32,
        attn_layers=Encoder(dim=DIM, depth=2, heads=2, pre_norm=False),
    ).eval()
    stack = m.attn_layers
    assert isinstance(stack.final_norm, torch.nn.Identity)
    assert not [n for n, _ in stack.named_parameters() if n.startswith("final_norm")]
    assert all(isinstance(block.pre_norm, torch.nn.Identity) for block in stack.layers)
    assert all(isinstance(block.post_norm, torch.nn.LayerNorm) for block in stack.layers)
    emb, inter = m(tokens(), return_embeddings=True, return_intermediates=True)
    # every block output (the input of the next layer, and the final output) is layer-normalised
    for h in [*inter.layer_hiddens[1:], emb]:
        torch.testing.assert_close(h.mean(-1), torch.zeros(h.shape[:-1]), atol=1e-5, rtol=0)
        torch.testing.assert_close(
            h.std(-1, unbiased=False), torch.ones(h.shape[:-1]), atol=1e-3, rtol=0
        )


def test_pre_norm_has_final_norm_false():
    stack = Decoder(dim=DIM, depth=1, pre_norm_has_final_norm=False)
    assert isinstance(stack.final_norm, torch.nn.Identity)
    assert isinstance(Decoder(dim=DIM, depth=1).final_norm, torch.nn.LayerNorm)


def test_attn_dim_head():
    heads, dim_head = 4, 12
    m = TransformerWrapper(
        num_tokens=64,
        max_seq_len=32,
        attn_layers=Decoder(dim=DIM, depth=1, heads=heads, attn_dim_head=dim_head),
    )
    attn = m.attn_layers.layers[0].branch
    assert attn.qkv.to_qkv.weight.shape == (3 * heads * dim_head, DIM)
    assert attn.to_out.weight.shape == (DIM, heads * dim_head)
    assert m(tokens()).shape == (2, 8, 64)


def test_cross_attn_dim_context():
    m = TransformerWrapper(
        num_tokens=64,
        max_seq_len=32,
        attn_layers=Decoder(
            dim=DIM, depth=1, heads=2, cross_attend=True, cross_attn_dim_context=48
        ),
    )
    cross = m.attn_layers.layers[1].branch
    assert cross.qkv.to_kv.weight.shape == (2 * 2 * 64, 48)
    assert cross.qkv.to_q.weight.shape == (2 * 64, DIM)
    out = m(tokens(), context=torch.randn(2, 5, 48))
    assert out.shape == (2, 8, 64)


def test_xtransformer_tied_survives_copy_and_pickle():
    model = XTransformer(
        dim=DIM,
        enc_num_tokens=64,
        enc_max_seq_len=16,
        enc_depth=1,
        enc_heads=2,
        dec_num_tokens=64,
        dec_max_seq_len=16,
        dec_depth=1,
        dec_heads=2,
        tie_token_emb=True,
        dec_tie_embedding=True,
    ).eval()
    for m in (model, copy.deepcopy(model), pickle.loads(pickle.dumps(model))):
        assert m.encoder.token_emb is m.decoder.net.token_emb
        assert m.decoder.net.to_logits.weight is m.encoder.token_emb.emb.weight
    src, tgt = tokens(n=10), tokens(n=9)
    torch.testing.assert_close(copy.deepcopy(model)(src, tgt), model(src, tgt))


def test_xtransformer_cross_attn_tokens_dropout_only_in_training():
    def build(dropout):
        torch.manual_seed(0)
        return XTransformer(
            dim=DIM,
            enc_num_tokens=64,
            enc_max_seq_len=16,
            enc_depth=1,
            enc_heads=2,
            dec_num_tokens=64,
            dec_max_seq_len=16,
            dec_depth=1,
            dec_heads=2,
            cross_attn_tokens_dropout=dropout,
        )

    model, reference = build(0.5), build(0.0)
    reference.load_state_dict(model.state_dict())
    src, tgt = tokens(n=12), tokens(n=9)
    mask = torch.ones(2, 12, dtype=torch.bool)
    # eval: the context is whole, the same loss as without the option
    model.eval(), reference.eval()
    torch.testing.assert_close(model(src, tgt, mask=mask), reference(src, tgt, mask=mask))
    # training: tokens are dropped, so the loss moves away from the whole-context loss
    model.train(), reference.train()
    whole = reference(src, tgt, mask=mask).item()
    assert any(abs(model(src, tgt, mask=mask).item() - whole) > 1e-6 for _ in range(4))
