"""A model is a folder: save_pretrained / load_pretrained round trips, ties, errors, pickling."""

from __future__ import annotations

import copy
import json
import os
import pickle

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from anyformer import (
    AutoregressiveWrapper,
    ContinuousAutoregressiveWrapper,
    ContinuousTransformerWrapper,
    Decoder,
    Encoder,
    TransformerWrapper,
    ViTransformerWrapper,
    XTransformer,
)
from anyformer.serialization import (
    CONFIG_NAME,
    FORMAT_VERSION,
    MODEL_CLASSES,
    TORCH_WEIGHTS_NAME,
    WEIGHTS_NAME,
    load_pretrained,
    register_model_class,
    save_pretrained,
)


def lm(**kw) -> TransformerWrapper:
    wrapper = {k: kw.pop(k) for k in list(kw) if k in ("tie_embedding", "post_emb_norm", "emb_dim")}
    stack = {"dim": 16, "depth": 1, "heads": 2, **kw}
    torch.manual_seed(0)
    return TransformerWrapper(
        num_tokens=64, max_seq_len=16, attn_layers=Decoder(**stack), **wrapper
    ).eval()


def vit() -> ViTransformerWrapper:
    torch.manual_seed(0)
    return ViTransformerWrapper(
        image_size=16, patch_size=8, num_classes=3, attn_layers=Encoder(dim=16, depth=1, heads=2)
    ).eval()


def xtransformer(tie: bool = True) -> XTransformer:
    torch.manual_seed(0)
    return XTransformer(
        dim=16, tie_token_emb=tie, enc_num_tokens=20, enc_depth=1, enc_heads=2,
        enc_max_seq_len=8, dec_num_tokens=20, dec_depth=1, dec_heads=2, dec_max_seq_len=8,
    ).eval()  # fmt: skip


TOKENS = torch.randint(0, 64, (2, 16), generator=torch.Generator().manual_seed(1))


def continuous() -> ContinuousTransformerWrapper:
    torch.manual_seed(0)
    return ContinuousTransformerWrapper(
        dim_in=3, dim_out=3, max_seq_len=8, attn_layers=Decoder(dim=16, depth=1, heads=2)
    ).eval()


def outputs(model: torch.nn.Module) -> torch.Tensor:
    """The model's forward on fixed inputs, whatever its class."""
    with torch.no_grad():
        if isinstance(model, ContinuousAutoregressiveWrapper):
            model = model.net
        if isinstance(model, ContinuousTransformerWrapper):
            return model(torch.randn(2, 8, 3, generator=torch.Generator().manual_seed(6)))
        if isinstance(model, ViTransformerWrapper):
            return model(torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(2)))
        if isinstance(model, XTransformer):
            src = torch.randint(0, 20, (2, 8), generator=torch.Generator().manual_seed(3))
            tgt = torch.randint(0, 20, (2, 8), generator=torch.Generator().manual_seed(4))
            enc, _ = model.encode(src)
            return model.decoder.net(tgt, context=enc)
        if isinstance(model, AutoregressiveWrapper):
            return model.net(TOKENS)
        return model(TOKENS)


@pytest.mark.parametrize(
    "make",
    [
        lm,
        vit,
        xtransformer,
        continuous,
        lambda: AutoregressiveWrapper(lm(), pad_value=3, ignore_index=-1),
        lambda: ContinuousAutoregressiveWrapper(continuous()),
    ],
    ids=[
        "TransformerWrapper",
        "ViTransformerWrapper",
        "XTransformer",
        "ContinuousTransformerWrapper",
        "AutoregressiveWrapper",
        "ContinuousAutoregressiveWrapper",
    ],
)
def test_round_trip_is_bitwise_for_every_class(make, tmp_path):
    model = make()
    save_pretrained(model, tmp_path / "m")
    loaded = load_pretrained(tmp_path / "m")
    assert type(loaded) is type(model)
    assert torch.equal(outputs(loaded), outputs(model))
    for (k1, v1), (k2, v2) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert k1 == k2 and torch.equal(v1, v2)
    saved = json.loads((tmp_path / "m" / CONFIG_NAME).read_text())
    assert saved["format_version"] == FORMAT_VERSION
    assert saved["anyformer_version"] == "0.1.0"


def test_autoregressive_wrapper_keeps_its_options_and_saves_the_net(tmp_path):
    model = AutoregressiveWrapper(lm(), pad_value=3, ignore_index=-1)
    save_pretrained(model, tmp_path / "m")
    saved = json.loads((tmp_path / "m" / CONFIG_NAME).read_text())
    assert saved["class"] == "TransformerWrapper"
    assert saved["wrapper"] == {
        "class": "AutoregressiveWrapper",
        "ignore_index": -1,
        "pad_value": 3,
    }
    loaded = load_pretrained(tmp_path / "m")
    assert (loaded.pad_value, loaded.ignore_index) == (3, -1)
    keys = set(load_file(tmp_path / "m" / WEIGHTS_NAME))
    assert keys == set(model.net.state_dict())  # the inner net's names, no "net." prefix


_KEYWORDS = st.fixed_dictionaries(
    {},
    optional={
        "depth": st.integers(1, 2),
        "heads": st.sampled_from([1, 2, 4]),
        "ff_glu": st.booleans(),
        "ff_swish": st.booleans(),
        "ff_mult": st.sampled_from([1, 2]),
        "attn_flash": st.booleans(),
        "attn_dim_head": st.sampled_from([4, 8]),
        "pre_norm": st.booleans(),
        "tie_embedding": st.booleans(),
        "post_emb_norm": st.booleans(),
        "ff_no_bias": st.booleans(),
        "attn_qkv_bias": st.booleans(),
        "attn_out_bias": st.booleans(),
        "norm_bias": st.booleans(),
    },
)


@settings(max_examples=10, deadline=None)
@given(keywords=_KEYWORDS)
def test_round_trip_random_configurations(keywords, tmp_path_factory):
    path = tmp_path_factory.mktemp("m") / "model"
    model = lm(**keywords)
    save_pretrained(model, path)
    loaded = load_pretrained(path)
    assert loaded.config_dict() == model.config_dict()
    assert torch.equal(outputs(loaded), outputs(model))


def test_tied_weights_are_stored_once_and_tied_again(tmp_path):
    model = lm(tie_embedding=True)
    save_pretrained(model, tmp_path / "m")
    with safe_open(tmp_path / "m" / WEIGHTS_NAME, "pt") as f:
        keys = set(f.keys())
    assert "token_emb.emb.weight" in keys and "to_logits.weight" not in keys
    saved = json.loads((tmp_path / "m" / CONFIG_NAME).read_text())
    assert saved["tied_weights"] == {"to_logits.weight": "token_emb.emb.weight"}
    loaded = load_pretrained(tmp_path / "m")
    assert loaded.to_logits.weight is loaded.token_emb.emb.weight
    assert torch.equal(outputs(loaded), outputs(model))


def test_xtransformer_shared_token_embedding(tmp_path):
    model = xtransformer(tie=True)
    assert model.encoder.token_emb.emb.weight is model.decoder.net.token_emb.emb.weight
    save_pretrained(model, tmp_path / "m")
    loaded = load_pretrained(tmp_path / "m")
    assert loaded.encoder.token_emb.emb.weight is loaded.decoder.net.token_emb.emb.weight
    assert torch.equal(outputs(loaded), outputs(model))


def test_a_tie_the_config_does_not_make_is_restored(tmp_path):
    model = lm()
    model.to_logits.weight = model.token_emb.emb.weight  # tied by hand, not by tie_embedding
    save_pretrained(model, tmp_path / "m")
    loaded = load_pretrained(tmp_path / "m")
    assert loaded.to_logits.weight is loaded.token_emb.emb.weight
    assert torch.equal(outputs(loaded), outputs(model))


def test_load_into_another_dtype_and_keep_the_saved_one(tmp_path):
    model = lm()
    save_pretrained(model, tmp_path / "f32")
    half = load_pretrained(tmp_path / "f32", dtype=torch.bfloat16)
    assert {p.dtype for p in half.parameters()} == {torch.bfloat16}
    assert torch.equal(half.token_emb.emb.weight, model.token_emb.emb.weight.to(torch.bfloat16))
    save_pretrained(half, tmp_path / "bf16")
    with safe_open(tmp_path / "bf16" / WEIGHTS_NAME, "pt") as f:
        assert f.get_tensor("token_emb.emb.weight").dtype == torch.bfloat16
    again = load_pretrained(tmp_path / "bf16")  # dtype=None keeps bfloat16
    assert {p.dtype for p in again.parameters()} == {torch.bfloat16}
    assert torch.equal(outputs(again), outputs(half))


def test_torch_format_loads_with_weights_only(tmp_path):
    model = lm(tie_embedding=True)
    save_pretrained(model, tmp_path / "m", safe_serialization=False)
    assert not (tmp_path / "m" / WEIGHTS_NAME).exists()
    state = torch.load(tmp_path / "m" / TORCH_WEIGHTS_NAME, weights_only=True)
    assert torch.equal(state["token_emb.emb.weight"], model.token_emb.emb.weight)
    assert "to_logits.weight" not in state
    loaded = load_pretrained(tmp_path / "m")
    assert torch.equal(outputs(loaded), outputs(model))


def test_saving_over_a_folder_replaces_the_files_and_leaves_no_temporaries(tmp_path):
    save_pretrained(lm(depth=1), tmp_path / "m")
    (tmp_path / "m" / "notes.txt").write_text("mine")
    bigger = lm(depth=2)
    save_pretrained(bigger, tmp_path / "m")
    assert sorted(os.listdir(tmp_path / "m")) == [CONFIG_NAME, WEIGHTS_NAME, "notes.txt"]
    assert torch.equal(outputs(load_pretrained(tmp_path / "m")), outputs(bigger))
    assert sorted(os.listdir(tmp_path)) == ["m"]


def test_a_failed_write_leaves_nothing_behind(tmp_path, monkeypatch):
    import safetensors.torch

    def broken(tensors, path, metadata=None):
        with open(path, "wb") as f:
            f.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(safetensors.torch, "save_file", broken)
    with pytest.raises(OSError, match="disk full"):
        save_pretrained(lm(), tmp_path / "m")
    assert os.listdir(tmp_path) == []


def test_files_get_the_usual_permissions(tmp_path):
    mask = os.umask(0o022)
    try:
        save_pretrained(lm(), tmp_path / "m")
    finally:
        os.umask(mask)
    assert os.stat(tmp_path / "m").st_mode & 0o777 == 0o755
    assert os.stat(tmp_path / "m" / WEIGHTS_NAME).st_mode & 0o777 == 0o644


# --------------------------------------------------------------------------- broken folders


@pytest.fixture
def folder(tmp_path):
    path = tmp_path / "m"
    save_pretrained(lm(), path)
    return path


def _edit_config(path, **changes):
    data = json.loads((path / CONFIG_NAME).read_text())
    for key, value in changes.items():
        target = data
        *parents, last = key.split(".")
        for p in parents:
            target = target[p]
        target[last] = value
    (path / CONFIG_NAME).write_text(json.dumps(data))


def test_missing_config(folder):
    (folder / CONFIG_NAME).unlink()
    with pytest.raises(ValueError, match=r"config\.json: missing"):
        load_pretrained(folder)


def test_missing_folder(tmp_path):
    with pytest.raises(ValueError, match="no such directory"):
        load_pretrained(tmp_path / "nowhere")


def test_corrupt_config(folder):
    (folder / CONFIG_NAME).write_text('{"format_version": 1, "config": {')
    with pytest.raises(ValueError, match=r"config\.json: corrupt or unreadable JSON"):
        load_pretrained(folder)


def test_missing_weights(folder):
    (folder / WEIGHTS_NAME).unlink()
    with pytest.raises(ValueError, match=r"no weights file \(model\.safetensors"):
        load_pretrained(folder)


def test_truncated_weights(folder):
    data = (folder / WEIGHTS_NAME).read_bytes()
    (folder / WEIGHTS_NAME).write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=r"model\.safetensors: corrupt or unreadable"):
        load_pretrained(folder)


def test_newer_format_is_refused(folder):
    _edit_config(folder, format_version=FORMAT_VERSION + 1, anyformer_version="9.0.0")
    with pytest.raises(ValueError, match=r"config\.json: written by anyformer 9\.0\.0 .*upgrade"):
        load_pretrained(folder)


def test_option_unknown_to_this_version(folder):
    _edit_config(folder, **{"config.attn_layers.some_future_option": True})
    with pytest.raises(ValueError, match=r"config\.json: cannot rebuild TransformerWrapper"):
        load_pretrained(folder)


def test_unknown_class(folder):
    _edit_config(folder, **{"class": "Mamba"})
    with pytest.raises(ValueError, match="unknown model class 'Mamba'"):
        load_pretrained(folder)


def test_shape_mismatch_names_file_and_tensor(folder):
    _edit_config(folder, **{"config.num_tokens": 65})
    with pytest.raises(
        ValueError,
        match=r"model\.safetensors: tensor 'token_emb\.emb\.weight' has shape \(64, 16\), "
        r"the model expects \(65, 16\)",
    ):
        load_pretrained(folder)


def test_missing_tensor_names_it(folder):
    tensors = load_file(folder / WEIGHTS_NAME)
    del tensors["to_logits.weight"]
    save_file(tensors, folder / WEIGHTS_NAME)
    with pytest.raises(ValueError, match=r"model\.safetensors: missing tensor 'to_logits\.weight'"):
        load_pretrained(folder)


def test_unexpected_tensor_names_it(folder):
    tensors = load_file(folder / WEIGHTS_NAME)
    tensors["extra.weight"] = torch.zeros(2)
    save_file(tensors, folder / WEIGHTS_NAME)
    with pytest.raises(ValueError, match=r"unexpected tensor 'extra\.weight'"):
        load_pretrained(folder)


def test_corrupt_torch_weights(tmp_path):
    save_pretrained(lm(), tmp_path / "m", safe_serialization=False)
    (tmp_path / "m" / TORCH_WEIGHTS_NAME).write_bytes(b"not a zip file")
    with pytest.raises(ValueError, match=r"pytorch_model\.bin: corrupt or unreadable"):
        load_pretrained(tmp_path / "m")


# --------------------------------------------------------------------------- pickling, registry


@pytest.mark.parametrize("make", [lambda: lm(tie_embedding=True), vit, xtransformer])
def test_models_pickle_and_deepcopy(make):
    model = make()
    for clone in (pickle.loads(pickle.dumps(model)), copy.deepcopy(model)):
        assert torch.equal(outputs(clone), outputs(model))
        assert clone.state_dict().keys() == model.state_dict().keys()
    tied = copy.deepcopy(lm(tie_embedding=True))
    assert tied.to_logits.weight is tied.token_emb.emb.weight


def test_autoregressive_wrapper_pickles():
    model = AutoregressiveWrapper(lm(), pad_value=2)
    clone = pickle.loads(pickle.dumps(model))
    x = torch.randint(0, 64, (2, 9), generator=torch.Generator().manual_seed(5))
    assert torch.equal(clone(x), model(x))
    assert clone.pad_value == 2


def test_a_custom_loss_cannot_be_saved_silently(tmp_path):
    wrapped = ContinuousAutoregressiveWrapper(
        continuous(), loss_fn=torch.nn.L1Loss(reduction="none")
    )
    with pytest.raises(TypeError, match="holds a custom loss_fn"):
        save_pretrained(wrapped, tmp_path / "m")
    assert not (tmp_path / "m").exists()


def test_unknown_class_cannot_be_saved(tmp_path):
    with pytest.raises(TypeError, match="cannot save a Linear"):
        save_pretrained(torch.nn.Linear(2, 2), tmp_path / "m")


def test_registry_is_extensible(tmp_path):
    class Tiny(torch.nn.Module):
        def __init__(self, width: int) -> None:
            super().__init__()
            self.width = width
            self.proj = torch.nn.Linear(width, width)

        def config_dict(self):
            return {"class": "Tiny", "width": self.width}

        @classmethod
        def from_config(cls, config):
            return cls(config["width"])

    register_model_class(Tiny)
    try:
        model = Tiny(3)
        save_pretrained(model, tmp_path / "m")
        loaded = load_pretrained(tmp_path / "m")
        assert isinstance(loaded, Tiny) and loaded.width == 3
        assert torch.equal(loaded.proj.weight, model.proj.weight)
    finally:
        MODEL_CLASSES.pop("Tiny")
    with pytest.raises(TypeError, match="has no config_dict"):
        register_model_class(torch.nn.Linear)


def test_mixin_adds_save_and_from_pretrained(tmp_path):
    class Model(TransformerWrapper):  # a user's subclass inherits the mixin
        pass

    register_model_class(Model)
    try:
        torch.manual_seed(0)
        model = Model(num_tokens=64, max_seq_len=16, attn_layers=Decoder(dim=16, depth=1, heads=2))
        model.eval().save_pretrained(tmp_path / "m")
        loaded = Model.from_pretrained(tmp_path / "m")
        assert type(loaded) is Model and torch.equal(outputs(loaded), outputs(model))
        AutoregressiveWrapper(model).eval()
        save_pretrained(AutoregressiveWrapper(model), tmp_path / "ar")
        assert type(Model.from_pretrained(tmp_path / "ar")) is Model  # the inner net
    finally:
        MODEL_CLASSES.pop("Model")
    save_pretrained(vit(), tmp_path / "vit")
    with pytest.raises(ValueError, match="holds a ViTransformerWrapper, not a TransformerWrapper"):
        TransformerWrapper.from_pretrained(tmp_path / "vit")


def test_save_pretrained_method_and_from_pretrained_on_every_model_class(tmp_path):
    from anyformer import (
        AutoregressiveWrapper,
        Decoder,
        Encoder,
        TransformerWrapper,
        ViTransformerWrapper,
        XTransformer,
    )

    torch.manual_seed(0)
    lm = TransformerWrapper(
        num_tokens=20, max_seq_len=8, attn_layers=Decoder(dim=16, depth=1, heads=2)
    ).eval()
    vit = ViTransformerWrapper(
        image_size=8, patch_size=4, num_classes=3, attn_layers=Encoder(dim=16, depth=1, heads=2)
    ).eval()
    xt = XTransformer(
        dim=16, enc_num_tokens=20, enc_depth=1, enc_max_seq_len=8,
        dec_num_tokens=20, dec_depth=1, dec_max_seq_len=8,
    ).eval()  # fmt: skip
    x, img = torch.randint(0, 20, (2, 8)), torch.randn(2, 3, 8, 8)
    cases = [(lm, (x,)), (vit, (img,)), (xt, (x, torch.randint(0, 20, (2, 9))))]
    for i, (model, inputs) in enumerate(cases):
        folder = model.save_pretrained(tmp_path / str(i))
        loaded = type(model).from_pretrained(folder).eval()
        assert torch.equal(loaded(*inputs), model(*inputs))
    wrapped = AutoregressiveWrapper(lm, pad_value=3)
    wrapped.save_pretrained(tmp_path / "ar")
    assert AutoregressiveWrapper.from_pretrained(tmp_path / "ar").pad_value == 3
    # the inner net of a saved wrapper loads as that net's class
    assert torch.equal(TransformerWrapper.from_pretrained(tmp_path / "ar").eval()(x), lm(x))
    with pytest.raises(ValueError, match="holds a TransformerWrapper, not a ViTransformerWrapper"):
        ViTransformerWrapper.from_pretrained(tmp_path / "0")


def test_a_class_joins_the_folder_registry_where_it_is_defined(tmp_path):
    """The folder format names no model class: classes register themselves with a class
    keyword (folder_model / folder_wrapper); plain subclasses do not."""
    from anyformer.serialization import WRAPPER_CLASSES

    class Registered(TransformerWrapper, folder_model=True):
        pass

    class Plain(TransformerWrapper):
        pass

    class Wrapped(AutoregressiveWrapper, folder_wrapper=("pad_value",)):
        pass

    try:
        assert MODEL_CLASSES["Registered"] is Registered and "Plain" not in MODEL_CLASSES
        assert WRAPPER_CLASSES["Wrapped"] == (Wrapped, ("pad_value",))
        net = Registered(num_tokens=8, max_seq_len=8, attn_layers=Decoder(dim=8, depth=1, heads=2))
        save_pretrained(Wrapped(net, pad_value=3), tmp_path / "m")
        loaded = load_pretrained(tmp_path / "m")
        assert type(loaded) is Wrapped and type(loaded.net) is Registered
        assert loaded.pad_value == 3
    finally:
        MODEL_CLASSES.pop("Registered")
        WRAPPER_CLASSES.pop("Wrapped")
    assert sorted(MODEL_CLASSES) == [
        "ContinuousTransformerWrapper",
        "TransformerWrapper",
        "ViTransformerWrapper",
        "XTransformer",
    ]
