"""AutoregressiveWrapper: next-token loss for training; sampling, streaming, contrastive,
speculative decoding and beam search for generation (each mode lives in its own module)."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from ..checks import as_token_ids, check_mask, check_non_empty, check_token_ids
from ..config.options import unknown_keyword
from ..nn.documents import packed_documents
from ..nn.moe import has_router_aux_loss
from ..serialization import PretrainedMixin
from .arguments import (
    check_filter_kwargs,
    check_flag,
    check_generator,
    check_int,
    check_real,
    check_token_id,
)
from .batched import shrinking_tokens
from .beam_search import beam_search
from .compiled import CompiledStepper, resolve_compile
from .filters import FILTERS, resolve_filter, top_k
from .finite import LogitGuard
from .forgetful import forgetful_key_mask
from .loss import token_cross_entropy
from .options import WrapperOptions, parse_contrastive
from .prompts import prepare_prompts
from .sampling import Picker, stop_at_eos, trim_after_eos
from .session import GenerationIntermediates, Session, eval_mode, unwrap
from .signatures import keywords_of

__all__ = ["AutoregressiveWrapper", "GenerationIntermediates"]

_INIT_KEYWORDS = ["net", "ignore_index", "pad_value", "mask_prob", "add_attn_z_loss"]

# the keywords generate and stream hand to the session under their own names


class AutoregressiveWrapper(
    PretrainedMixin, nn.Module, folder_wrapper=("ignore_index", "pad_value")
):
    """Wraps a causal token model: ``forward`` gives the next-token loss, ``generate`` samples."""

    def __init__(
        self,
        net: nn.Module,
        ignore_index: int = -100,
        pad_value: int = 0,
        mask_prob: float = 0.0,
        add_attn_z_loss: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__()
        if kwargs:
            raise unknown_keyword("AutoregressiveWrapper", next(iter(kwargs)), _INIT_KEYWORDS)
        self.options = WrapperOptions(
            ignore_index=ignore_index,
            pad_value=pad_value,
            mask_prob=mask_prob,
            add_attn_z_loss=add_attn_z_loss,
        )
        self.net = net
        self.ignore_index = ignore_index
        self.pad_value = pad_value
        self.mask_prob = self.options.mask_prob
        self.max_seq_len = getattr(net, "max_seq_len", 0)
        # mixture-of-experts layers (ff_num_experts): their weighted aux loss joins the
        # training loss (model.train()); the evaluation loss stays the plain cross-entropy
        self.adds_router_aux_loss = has_router_aux_loss(net)

    # ------------------------------------------------------------------ training

    def forward(
        self,
        x: Tensor,
        return_outputs: bool = False,
        prepend_embeds: Tensor | None = None,
        lens: Tensor | None = None,
        mask: Tensor | None = None,
        seq_lens: Tensor | None = None,
        doc_ids: Tensor | None = None,
        **kwargs: Any,
    ) -> Tensor | tuple[Tensor, tuple[Tensor, Any]]:
        """x (b, n + 1) -> mean cross-entropy of predicting x[:, 1:] from x[:, :-1].

        Targets equal to ``ignore_index`` are not scored, nor positions past ``lens`` (b,) (each
        row's number of real tokens) or outside ``mask``. While training with ``mask_prob > 0``
        random keys are hidden (forgetful causal masking). ``return_outputs=True`` returns
        ``(loss, (logits, intermediates))`` as x-transformers does. While training, a net with
        mixture-of-experts layers (``ff_num_experts``) adds their weighted router aux loss
        (``intermediates.aux_loss``); in eval mode the loss is the plain cross-entropy.
        Packed rows: ``seq_lens`` (b, k) or ``doc_ids`` (b, n + 1) give the documents of x (as
        TransformerWrapper's); each attends only to itself, and a document's first token is
        no target of the previous document's last (nor is padding a target).
        """
        if not isinstance(x, Tensor) or x.ndim != 2 or x.shape[1] < 2:
            got = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
            raise ValueError(
                f"x must be a (batch, seq_len + 1) token tensor with seq_len >= 1, got {got}"
            )
        check_non_empty("x", x, "batch >= 1, seq_len + 1 >= 2")
        x = as_token_ids("x", x)  # uint8 / int16 ids become torch.long (the loss's targets)
        mask = self._loss_mask(x, mask, lens)
        docs = packed_documents(seq_lens, doc_ids, x.shape[0], x.shape[1], x.device)
        inp, target = x[:, :-1], x[:, 1:]
        if docs is not None:  # a target stays in its document; the net sees the input's
            target = target.masked_fill(~docs.next_in_document(), self.ignore_index)
            kwargs["doc_ids"] = docs.drop_last()
        inp = inp.masked_fill(inp == self.ignore_index, self.pad_value)
        key_mask = None
        if mask is not None:
            target = target.masked_fill(~mask[:, 1:], self.ignore_index)
            key_mask = mask[:, :-1]
        if self.training and self.mask_prob > 0:
            hide = forgetful_key_mask(inp.shape[0], inp.shape[1], self.mask_prob, x.device)
            key_mask = hide if key_mask is None else key_mask & hide
        z_loss = self.options.add_attn_z_loss  # the net returns it in its intermediates
        aux = self.training and self.adds_router_aux_loss  # so does a mixture of experts
        out = self.net(
            inp,
            prepend_embeds=prepend_embeds,
            mask=key_mask,
            return_intermediates=return_outputs or aux,
            **({"return_attn_z_loss": True} if z_loss else {}),
            **kwargs,
        )
        logits, inter = out if return_outputs or z_loss or aux else (out, None)
        if prepend_embeds is not None:
            logits = logits[:, prepend_embeds.shape[1] :]
        loss = token_cross_entropy(logits, target, self.ignore_index)
        if z_loss and inter is not None:
            loss = loss + inter.attn_z_loss
        if aux and inter is not None and inter.aux_loss is not None:
            loss = loss + inter.aux_loss
        return (loss, (logits, inter)) if return_outputs else loss

    @staticmethod
    def _loss_mask(x: Tensor, mask: Tensor | None, lens: Tensor | None) -> Tensor | None:
        b, n = x.shape
        if mask is not None:
            check_mask("mask", mask, (b, n), "batch, seq_len + 1")
        if lens is None:
            return mask
        if not isinstance(lens, Tensor) or tuple(lens.shape) != (b,) or lens.is_floating_point():
            raise ValueError(
                f"lens must be a ({b},) integer tensor (real tokens per row), got "
                f"{tuple(lens.shape) if isinstance(lens, Tensor) else type(lens).__name__}"
            )
        lo, hi = (int(v) for v in torch.aminmax(lens))
        if lo < 1 or hi > n:
            raise ValueError(f"lens must lie in [1, {n}] (the width of x), got [{lo}, {hi}]")
        by_len = torch.arange(n, device=x.device) < lens.to(x.device)[:, None]
        return by_len if mask is None else mask & by_len

    # ------------------------------------------------------------------ generation

    @torch.no_grad()
    def generate(
        self,
        prompts: Tensor | Sequence[Tensor],
        seq_len: int,
        eos_token: int | None = None,
        temperature: float = 1.0,
        prompt_lens: Tensor | None = None,
        filter_logits_fn: str | Callable[..., Tensor] | None = None,
        restrict_to_max_seq_len: bool = True,
        amateur_model: nn.Module | Sequence[nn.Module] | None = None,
        filter_kwargs: dict[str, Any] | None = None,
        contrastive_decode_kwargs: dict[str, float] | Sequence[dict[str, float]] | None = None,
        cache_kv: bool = True,
        return_intermediates: bool = False,
        draft_model: nn.Module | None = None,
        draft_tokens: int = 4,
        generator: torch.Generator | None = None,
        compile: bool | dict[str, Any] = False,
        **kwargs: Any,
    ) -> Tensor | tuple[Tensor, GenerationIntermediates]:
        """Sample `seq_len` tokens after each prompt; returns only the new tokens (b, seq_len).

        Prompts may differ in length (a list of 1-D tensors, or ``prompt_lens``): each row then
        generates exactly what it would alone. After ``eos_token`` a row is padded with
        ``pad_value``; generation stops once every row is done. ``temperature=0`` is greedy.
        ``filter_logits_fn`` defaults to ``top_k`` (none with ``amateur_model``, whose
        plausibility cut-off filters). ``amateur_model`` (one or several) turns on contrastive
        decoding, ``draft_model`` speculative decoding with ``draft_tokens`` drafted per round.
        Other keywords (context, context_mask, prepend_embeds, ...) go to every model each step.
        Every keyword is checked before any model runs; logits holding NaN or ``+inf`` (or no
        finite value) raise a ValueError naming the step. ``compile=True`` (or a dict of
        torch.compile keywords) decodes with compiled prefill and decode steps over a static
        cache (``generation.compiled``; unsupported options warn once and decode eagerly).
        """
        check_flag("return_intermediates", return_intermediates)
        session, squeeze = self._sampling_session("generate", locals())
        with eval_mode(*session.models):
            shrink = not return_intermediates  # the returned cache keeps every row
            steps = list(self._tokens(session, eos_token, check_every=8, shrink=shrink))
        session.pick.guard.verify()  # the steps since the last check
        out = trim_after_eos(torch.stack(steps, dim=1), eos_token)
        out = out[0] if squeeze else out
        return (out, session.intermediates()) if return_intermediates else out

    @torch.no_grad()
    @keywords_of(generate, drop="return_intermediates")
    def stream(self, args: dict[str, Any]) -> Iterator[Tensor]:
        """Like ``generate`` (the same parameters but ``return_intermediates``), but yields each
        step's tokens (b,) (a scalar for a 1-D prompt) as soon as they are made. It stops after
        the step where every row has emitted ``eos_token``; the next step is computed only when
        the consumer asks for it. The keywords are checked when the stream is created, before
        the first token is asked for."""
        session, squeeze = self._sampling_session("stream", args)
        return self._stream(session, args["eos_token"], squeeze)

    @torch.no_grad()  # on a generator function: grad mode is off only while it runs
    def _stream(self, session: Session, eos_token: int | None, squeeze: bool) -> Iterator[Tensor]:
        with eval_mode(*session.models):
            for token in self._tokens(session, eos_token, check_every=1, shrink=True):
                yield token[0] if squeeze else token

    def _tokens(
        self, session: Session, eos_token: int | None, check_every: int, shrink: bool
    ) -> Iterator[Tensor]:
        """The session's tokens (b,) padded after eos; with `shrink`, plain sampling (neither
        contrastive nor speculative) stops computing the rows that are done."""
        plain = session.draft is None and not session.amateurs  # a compiled step keeps its rows
        plain = plain and type(session.expert) is not CompiledStepper
        if shrink and eos_token is not None and plain:
            return shrinking_tokens(
                session.expert, session.pick, session.seq_len, eos_token, self.pad_value,
                stop_every=check_every,
            )  # fmt: skip
        return stop_at_eos(session.tokens(), eos_token, self.pad_value, check_every)

    def _sampling_session(self, mode: str, args: dict[str, Any]) -> tuple[Session, bool]:
        """The session of ``generate`` / ``stream`` from their arguments by name."""
        return self._session(
            args["prompts"],
            args["seq_len"],
            args["kwargs"],
            mode=mode,
            restrict=args["restrict_to_max_seq_len"],
            **{name: args[name] for name in _SAMPLING_KEYWORDS},
        )

    @torch.no_grad()
    def beam_search(
        self,
        prompts: Tensor | Sequence[Tensor],
        seq_len: int,
        beams: int = 4,
        return_beams_and_scores: bool = False,
        eos_token: int | None = None,
        temperature: float = 1.0,
        stochastic: bool = False,
        prompt_lens: Tensor | None = None,
        filter_logits_fn: str | Callable[..., Tensor] | None = None,
        restrict_to_max_seq_len: bool = True,
        filter_kwargs: dict[str, Any] | None = None,
        cache_kv: bool = True,
        length_penalty: float = 0.0,
        generator: torch.Generator | None = None,
        **kwargs: Any,
    ) -> Tensor | tuple[Tensor, Tensor]:
        """The highest-scoring continuation of each prompt among `beams` hypotheses per step.

        Returns the best (b, n) new tokens, or with ``return_beams_and_scores`` every beam
        (beams, b, n) and its score (beams, b), best first (x-transformers' layout). Scores are
        summed log-probs divided by ``num_new_tokens ** length_penalty`` (a finite number).
        ``stochastic=True`` samples ``beams`` sequences without replacement (Gumbel-top-k;
        ``temperature`` and the filter apply there only). Finished beams (``eos_token``) are
        kept aside, padded after eos.
        """
        check_int("beams", beams, 1)
        check_flag("return_beams_and_scores", return_beams_and_scores)
        check_flag("stochastic", stochastic)
        length_penalty = check_real("length_penalty", length_penalty)
        if stochastic:
            check_real("temperature", temperature, 0.0, lo_open=True)
        session, squeeze = self._session(
            prompts,
            seq_len,
            kwargs,
            mode="beam_search",
            eos_token=eos_token,
            temperature=temperature,
            prompt_lens=prompt_lens,
            filter_logits_fn=filter_logits_fn,
            restrict=restrict_to_max_seq_len,
            filter_kwargs=filter_kwargs,
            cache_kv=cache_kv,
            generator=generator,
            default_filter=None,
        )
        with eval_mode(*session.models):
            result = beam_search(
                session.expert, seq_len, beams, session.pick, stochastic, eos_token,
                self.pad_value, length_penalty,
            )  # fmt: skip
        if return_beams_and_scores:
            tokens, scores = result.tokens.transpose(0, 1), result.scores.transpose(0, 1)
            return (tokens[:, 0], scores[:, 0]) if squeeze else (tokens, scores)
        best = trim_after_eos(result.tokens[:, 0], eos_token)
        return best[0] if squeeze else best

    def _session(
        self,
        prompts: Tensor | Sequence[Tensor],
        seq_len: int,
        kwargs: dict[str, Any],
        *,
        mode: str,
        eos_token: int | None,
        temperature: float,
        prompt_lens: Tensor | None,
        filter_logits_fn: str | Callable[..., Tensor] | None,
        restrict: bool,
        filter_kwargs: dict[str, Any] | None,
        cache_kv: bool,
        generator: torch.Generator | None,
        amateur_model: nn.Module | Sequence[nn.Module] | None = None,
        contrastive_decode_kwargs: Any = None,
        draft_model: nn.Module | None = None,
        draft_tokens: int = 4,
        default_filter: Callable[..., Tensor] | None = top_k,
        compile: bool | dict[str, Any] = False,
    ) -> tuple[Session, bool]:
        """Check the arguments shared by every decoding mode and build the session."""
        num_tokens = getattr(self.net, "num_tokens", None)
        check_int("seq_len", seq_len, 1)
        temperature = check_real("temperature", temperature, 0.0)
        check_token_id("eos_token", eos_token, num_tokens)
        check_flag("restrict_to_max_seq_len", restrict)
        check_flag("cache_kv", cache_kv)
        check_generator(generator)
        prompts, lens, squeeze = prepare_prompts(prompts, prompt_lens, self.pad_value)
        prompts = as_token_ids("prompts", prompts)
        self._check_prompt_tokens(prompts)
        amateurs = _as_models(amateur_model, "amateur_model")
        draft = None if draft_model is None else unwrap(draft_model, "draft_model")
        self._check_partners(amateurs, draft, draft_tokens)
        contrastive = parse_contrastive(contrastive_decode_kwargs, len(amateurs))
        if filter_logits_fn is None:
            filter_fn = None if amateurs else default_filter
        else:
            filter_fn = resolve_filter(filter_logits_fn)
        builtin = any(filter_fn is f for f in FILTERS.values())
        filter_kwargs = check_filter_kwargs(filter_fn, filter_kwargs, num_tokens, builtin)
        models = [("model", self.net), *(("amateur_model", m) for m in amateurs)]
        models += [("draft_model", draft)] if draft is not None else []
        _check_positions_fit(prompts.shape[1] + seq_len, restrict, models)
        if draft is not None:
            self._check_speculative_window(prompts.shape[1] + seq_len, restrict, draft)
        guard = LogitGuard(mode, prompts.shape[1], lens, every=8 if mode == "generate" else 1)
        pick = Picker(temperature, filter_fn, filter_kwargs, generator, guard)
        compiled = resolve_compile(
            compile, self.net, cache_kv=cache_kv, partners=bool(amateurs), draft=draft is not None,
            kwargs=kwargs, total=prompts.shape[1] + seq_len, restrict=restrict,
        )  # fmt: skip
        session = Session(
            self.net,
            prompts,
            lens,
            seq_len,
            pick,
            cache_kv=cache_kv and compiled is None,
            restrict=restrict,
            pad_value=self.pad_value,
            kwargs=kwargs,
            amateurs=amateurs,
            contrastive=contrastive,
            draft=draft,
            draft_tokens=draft_tokens,
        )
        if compiled is not None:  # the expert decodes through compiled steps (static cache)
            args = (self.net, prompts, lens, seq_len, None, kwargs)
            session.expert = CompiledStepper(*args, options=compiled, pad_value=self.pad_value)
        return session, squeeze

    def _check_prompt_tokens(self, prompts: Tensor) -> None:
        num_tokens = getattr(self.net, "num_tokens", None)
        if num_tokens is None:
            return
        check_token_ids("prompts", prompts, num_tokens)
        check_token_id("pad_value", self.pad_value, num_tokens)

    def _check_partners(
        self, amateurs: list[nn.Module], draft: nn.Module | None, draft_tokens: int
    ) -> None:
        """Amateur and draft models must share the vocabulary; the two modes exclude each other."""
        vocab = getattr(self.net, "num_tokens", None)
        partners = [("amateur_model", m) for m in amateurs]
        partners += [("draft_model", draft)] if draft is not None else []
        for name, model in partners:
            other = getattr(model, "num_tokens", None)
            if vocab is not None and other is not None and other != vocab:
                raise ValueError(
                    f"{name} must have the model's vocabulary ({vocab} tokens), got {other}"
                )
        if amateurs and draft is not None:
            raise ValueError(
                "amateur_model and draft_model cannot be combined (contrastive scores are not a "
                "model distribution that speculative decoding could preserve)"
            )
        check_int("draft_tokens", draft_tokens, 1)

    def _check_speculative_window(self, total: int, restrict: bool, draft: nn.Module) -> None:
        for name, model in (("model", self.net), ("draft_model", draft)):
            max_seq_len = getattr(model, "max_seq_len", 0) or 0
            if restrict and 0 < max_seq_len < total:
                raise ValueError(
                    f"speculative decoding: prompt + seq_len = {total} exceeds the {name}'s "
                    f"max_seq_len={max_seq_len}; a sliding window cannot verify several tokens "
                    "in one pass (pass restrict_to_max_seq_len=False for relative positions)"
                )


def _check_positions_fit(total: int, restrict: bool, models: list[tuple[str, nn.Module]]) -> None:
    """Without the sliding window (restrict_to_max_seq_len=False) every position is read as it
    is: a learned absolute positional embedding has no row past max_seq_len (rotary, ALiBi,
    sinusoidal and other relative schemes extrapolate, and are not bounded here)."""
    if restrict:
        return
    needed = total - 1  # the last sampled token is never fed back
    for name, model in models:
        table = getattr(model, "max_positions", None)  # the learned table's rows, else None
        if isinstance(table, int) and needed > table:
            raise ValueError(
                f"restrict_to_max_seq_len=False needs {needed} positions (prompt length + "
                f"seq_len - 1), but the {name}'s learned absolute positional embedding has "
                f"max_seq_len={table} and cannot extrapolate past it: keep "
                "restrict_to_max_seq_len=True (a sliding window), generate fewer tokens, or use "
                "positions that extrapolate (use_abs_pos_emb=False with rotary_pos_emb=True)"
            )


def _as_models(models: nn.Module | Sequence[nn.Module] | None, name: str) -> list[nn.Module]:
    if models is None:
        return []
    if isinstance(models, nn.Module):
        models = [models]
    if not isinstance(models, (list, tuple)) or not models:
        raise TypeError(f"{name} must be a model or a non-empty tuple of models, got {models!r}")
    return [unwrap(m, name) for m in models]


def _sampling_keywords() -> tuple[str, ...]:
    """The keywords ``generate`` (and so ``stream``) hands on to ``_session``: derived from the two
    signatures once, so a keyword added to both cannot be dropped on the way."""
    given = inspect.signature(AutoregressiveWrapper.generate).parameters
    taken = inspect.signature(AutoregressiveWrapper._session).parameters
    return tuple(n for n, p in taken.items() if p.kind is p.KEYWORD_ONLY and n in given)


_SAMPLING_KEYWORDS = _sampling_keywords()
