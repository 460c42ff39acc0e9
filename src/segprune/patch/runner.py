"""Run a token plan inside a model of any registered family (`segprune.families`).

The language model's forward is replaced by a loop over its own decoder layers that keeps, for each
layer, only the tokens the plan says are live. Every layer still runs on the model's attention
implementation (SDPA, flash or eager); scores come from recomputing single attention rows. What is
particular to a model (where its parts are, its image-token layout, position ids, q/k and RoPE,
its vision tower) comes from its `Family`; layers are called through `TransformersAPI`.

Sequence bookkeeping uses *sequence indices*: the position of a token in the unpruned input. Kept
tokens keep their original position ids, each layer's KV cache holds its live tokens only, and the
language model's output has the unpruned length: rows of pruned image tokens hold the hidden state
they had when they were dropped, so `[SEG]` offsets, logits and labels line up as without pruning.

When the samples of a batch differ (image tokens, images per prompt, or an adaptive step's counts)
the runner selects one sample at a time and keeps the batch rectangular with *masked slots*: a
sample with fewer live tokens than the widest fills its row with slots at sequence index `SLOT`,
which sort last, attend to nothing that matters and are seen by no query (docs/design.md); that
per-sample layout lives in `segprune.patch.samples`.
"""

from __future__ import annotations

import types
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from segprune import flops
from segprune.families import Family, take
from segprune.methods.base import MethodConfig
from segprune.methods.plan import Keep, SelectContext
from segprune.methods.scores import attention_row
from segprune.patch.samples import apply_per_sample, detected_ids, layout_samples, seeded_generator
from segprune.patch.state import SLOT, ForwardState, PruneStats, StaticLayout
from segprune.patch.transformers_api import TransformersAPI

SUPPORTED_ATTENTION = ("sdpa", "eager", "flash_attention_2", "flash_attention_3")


def check_method(family: Family, config: MethodConfig) -> None:
    """Refuse a method that needs what `family` lacks, naming both."""
    if config.needs_vision_cls and not family.has_vision_cls:
        raise ValueError(
            f"method {config.name!r} ({type(config).__name__}) reads the vision tower's CLS row, which "
            f"the {family.name!r} family's vision tower does not have; choose a method or setting "
            "that does not (needs_vision_cls false)"
        )


class PlanRunner:
    """Holds a config, the patched language model and the state of the last forward.

    Use `segprune.prune_` / `segprune.unprune` rather than this class directly.
    """

    def __init__(
        self,
        family: Family,
        config: MethodConfig,
        seg_token_id: int | None = None,
        instance_masks: Callable[[torch.Tensor, tuple[int, int]], torch.Tensor] | None = None,
    ) -> None:
        check_method(family, config)
        self.family = family
        self.lm = family.language_model
        self.config = config
        self.seg_token_id = seg_token_id
        self.instance_masks = instance_masks
        self.text_config = family.text_config
        attn = self.text_config._attn_implementation
        if attn not in SUPPORTED_ATTENTION:
            raise ValueError(
                f"attention implementation {attn!r} is not supported; use one of {list(SUPPORTED_ATTENTION)}"
            )
        self.n_layers = self.text_config.num_hidden_layers
        self.layers = family.layers[: self.n_layers]
        # How the installed transformers names the cache, read once here rather than on every call.
        self.api = TransformersAPI.of(self.layers[0])
        expected = family.expected_image_tokens()
        if expected:
            config.plan(expected, self.n_layers)  # fail at prune_ time on a plan that cannot fit
        self.state: ForwardState | None = None
        # Set by segprune.graph.GraphedPrefill around the forwards it warms up and captures: the
        # prologue's facts known in advance, so the prefill makes no host synchronisation at all.
        self.static: StaticLayout | None = None
        self._pending: dict[str, Any] | None = None
        self.vision = family.vision_features(config.vision_layers())
        self._pixels: Any = None  # what the vision tower received, in the family's form
        self._projector_input: torch.Tensor | None = None
        self._hooks = family.watch(self._on_prompt, self._on_pixels, self._on_features)
        runner = self

        def forward(lm_self: nn.Module, *args: Any, **kwargs: Any) -> Any:
            return runner.language_model_forward(*args, **kwargs)

        self.lm.forward = types.MethodType(forward, self.lm)

    def remove(self) -> None:
        """Restore the unpatched model."""
        for hook in self._hooks:
            hook.remove()
        self.family.remove_vision(self.vision)
        del self.lm.forward
        self.state = None

    # -- capture --------------------------------------------------------------------------------

    def _on_prompt(self, prompt: dict[str, Any]) -> None:
        self._pending = prompt

    def _on_pixels(self, pixels: Any) -> None:
        self._pixels = pixels

    def _on_features(self, features: torch.Tensor | None) -> None:
        self._projector_input = features

    def expect_prompt(self, input_ids: torch.Tensor) -> None:
        """Take `input_ids` as the next prefill's prompt (callers that bypass the top-level forward)."""
        self._pending = self.family.prompt(input_ids, None)

    def _merge_vision(self, step: Keep, live_img, new_img, context, features) -> torch.Tensor:
        """Merge `features`, the vision features the projector received, then project: `(batch, count, D)`."""
        batch, n_image = live_img.shape[0], context.n_image
        if features is None or features.shape[:2] != (batch, n_image):
            got = None if features is None else tuple(features.shape)
            raise ValueError(
                f"merging before the projector needs its input, (batch, N, D) = ({batch}, {n_image}, D); "
                f"got {got}: run the model with pixel_values (one image per sample)"
            )
        merged = step.merge(take(features, live_img), live_img, new_img, context)
        return self.family.project(merged)  # the projector's hook sees this call too: read it first

    # -- the patched forward --------------------------------------------------------------------

    def language_model_forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        use_cache: bool | None = None,
        output_hidden_states: bool | None = None,
        output_attentions: bool | None = None,
        cache_position: torch.Tensor | None = None,
        return_dict: bool | None = None,
        **kwargs: Any,
    ) -> Any:
        from transformers.cache_utils import DynamicCache

        # The cache comes as `cache` or `past_key_values`, whichever the caller's version passes.
        cache = self.api.pop_cache(kwargs)
        if output_attentions:
            raise ValueError(
                "segprune never materialises attention maps (that would need eager attention); "
                "call segprune.stats(model).scores for the attention rows the method ranked by"
            )
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("give exactly one of input_ids or inputs_embeds")
        if inputs_embeds is None:
            inputs_embeds = self.family.embed_tokens(input_ids)
        if attention_mask is not None and attention_mask.dim() != 2:
            raise ValueError(
                f"segprune needs the 2D padding mask, got a {attention_mask.dim()}D attention_mask; "
                "static (compileable) caches with prebuilt 4D masks are not supported"
            )
        use_cache = self.text_config.use_cache if use_cache is None else use_cache
        if output_hidden_states is None:
            output_hidden_states = self.text_config.output_hidden_states
        pending, self._pending = self._pending, None

        continuing = cache is not None and cache.get_seq_length() > 0
        if continuing:
            if self.state is None or self.state.cache is not cache:
                raise ValueError(
                    "the KV cache holds tokens this pruned model did not put there; start generation "
                    "from a prefill through the pruned model (an empty cache)"
                )
        else:
            if use_cache and cache is None:
                cache = DynamicCache(config=self.text_config)
            self.state = None

        valid = attention_mask.bool() if attention_mask is not None else None
        if continuing:
            hidden, all_hidden = self._decode(
                inputs_embeds, valid, position_ids, cache, kwargs, output_hidden_states
            )
        else:
            hidden, all_hidden = self._prefill(
                inputs_embeds,
                valid,
                position_ids,
                cache,
                pending,
                kwargs,
                output_hidden_states,
                use_cache,
            )
        hidden = self.family.norm(hidden)
        if all_hidden is not None:
            all_hidden[-1] = hidden
            all_hidden = tuple(all_hidden)
        return self.api.model_output(hidden, cache if use_cache else None, all_hidden)

    def _prefill(self, embeds, valid, position_ids, cache, pending, kwargs, output_hidden_states, use_cache):
        family = self.family
        batch, length, width = embeds.shape
        device = embeds.device
        image_mask = pending["image_mask"] if pending else None
        if image_mask is not None and image_mask.shape != (batch, length):
            image_mask = None
        if self.static is not None:
            counts, padded = [self.static.n_image] * batch, False
        else:
            counts, padded = self._prologue(image_mask, valid, batch)
        n_image = max(counts)
        raw, self._pixels = self._pixels, None
        plan = self.config.plan(n_image, self.n_layers) if n_image else None
        samples = layout_samples(self, counts, plan, raw, device) if plan else None
        if samples is not None:  # masked slots: every mask needs the padding mask
            padded = True
            if valid is None:
                valid = torch.ones(batch, length, dtype=torch.bool, device=device)
        if not padded:
            valid = None
        seq = torch.arange(length, device=device).expand(batch, length).contiguous()
        position_ids = family.prefill_positions(seq, position_ids)
        state = ForwardState(plan=plan, cache=cache if use_cache else None, seq_len=length, padded=padded)
        state.continuation = family.continuation(position_ids, length)
        self.state = state
        non_pad = valid.sum(dim=1) if valid is not None else torch.full((batch,), length, device=device)
        state.text_tokens = non_pad - (n_image if samples is None else image_mask.sum(dim=1))
        if samples is not None:
            state.image_counts = counts

        if n_image:
            # Image and text positions in sequence order; a sample with fewer fills up with SLOT.
            image_seq = torch.where(image_mask, seq, SLOT).sort(dim=1).values[:, :n_image]
            text_seq = torch.where(image_mask, SLOT, seq).sort(dim=1).values[:, : length - min(counts)]
            if samples is not None:  # one more column: where a masked image slot points
                image_seq = torch.cat([image_seq, image_seq.new_full((batch, 1), SLOT)], dim=1)
        live_img = torch.arange(n_image, device=device).expand(batch, n_image).contiguous()
        live_n = list(counts)
        if samples is not None:
            live_img = torch.where(live_img < image_mask.sum(dim=1, keepdim=True), live_img, n_image)
        live_seq = seq
        # Position ids and rotary embeddings of the live tokens; renumbered plans change them per step.
        layer_pos, rope = family.rope(embeds, position_ids)
        renumber = plan is not None and plan.renumber
        hidden = embeds
        # Pruned rows keep their last hidden state here, and re-activated rows come back from here;
        # masked slots read and write one spare row past the end.
        full = None
        if plan and plan.steps:
            full = (
                embeds.clone()
                if samples is None
                else torch.cat([embeds, embeds.new_zeros(batch, 1, width)], 1)
            )
        # `full`'s rows of the live tokens (live_seq, a masked slot's clamped to the spare row).
        live_rows = seq
        events: dict[int, list[tuple[str, int]]] = {}
        for layer_idx, kind, i in plan.events() if plan else []:
            events.setdefault(layer_idx, []).append((kind, i))
        pending_scores: dict[int, torch.Tensor] = {}
        context = self._context(n_image, pending, raw, device) if plan and samples is None else None
        all_hidden = [] if output_hidden_states else None
        for layer_idx, layer in enumerate(self.layers):
            for kind, i in events.get(layer_idx, []):
                step = plan.steps[i]
                if kind == "score":
                    query_seq = self._query_seq(step.score.token, valid, pending, seq)
                    pending_scores[i] = self._score(
                        layer, hidden, live_seq, image_seq.gather(1, live_img), query_seq, valid, rope
                    )
                    continue
                scores = pending_scores.pop(i, None)
                if scores is not None and samples is not None:
                    slots = torch.arange(scores.shape[1], device=device)
                    scores = scores.masked_fill(slots >= torch.tensor(live_n, device=device)[:, None], 0)
                while len(state.scores) < i:
                    state.scores.append(None)
                state.scores.append(scores)
                merged = None
                if samples is not None:
                    new_img, live_n, merged = apply_per_sample(
                        self, i, samples, scores, live_img, live_n, live_seq, image_seq, hidden
                    )
                elif isinstance(step, Keep):
                    new_img = step.select(scores, live_img, step.count, context)
                    if step.merge is not None and step.merge_space == "vision":
                        features, self._projector_input = self._projector_input, None
                        merged = self._merge_vision(step, live_img, new_img, context, features)
                    elif step.merge is not None:
                        image_rows = torch.searchsorted(live_seq, image_seq.gather(1, live_img))
                        merged = step.merge(take(hidden, image_rows), live_img, new_img, context)
                else:
                    new_img = torch.arange(n_image, device=device).expand(batch, n_image)
                full.scatter_(1, live_rows[..., None].expand(-1, -1, width), hidden)
                if merged is not None:
                    kept_rows = image_seq.gather(1, new_img).clamp(max=full.shape[1] - 1)
                    full.scatter_(1, kept_rows[..., None].expand(-1, -1, width), merged.to(full.dtype))
                live_img = new_img
                live_seq = torch.cat([text_seq, image_seq.gather(1, live_img)], dim=1).sort(dim=1).values
                if samples is not None:  # no wider than the sample with the most live tokens
                    widest = max(length - c + n for c, n in zip(counts, live_n, strict=True))
                    live_seq = live_seq[:, :widest].contiguous()
                    full[:, length] = 0  # the spare row: masked slots restart from zeros
                live_rows = live_seq.clamp(max=full.shape[1] - 1)
                hidden = take(full, live_rows)
                live_pos = family.take_positions(position_ids, live_seq.clamp(max=length - 1))
                if renumber:
                    dropped = self._dropped_before(
                        live_seq, image_seq[:, :n_image], live_img, samples is not None
                    )
                    live_pos = live_pos - dropped
                layer_pos, rope = family.rope(embeds, live_pos)
            if all_hidden is not None:
                all_hidden.append(self._full_view(full, hidden, live_rows, length))
            mask = self._mask(live_seq, live_seq, valid)
            hidden = self.api.call_layer(
                layer,
                hidden,
                attention_mask=mask,
                position_ids=layer_pos,
                position_embeddings=rope,
                cache=cache,
                use_cache=use_cache,
                extra=kwargs,
            )
            state.key_seq.append(live_seq)
            if samples is None:
                state.kept.append(live_img)
            else:
                state.kept.append(torch.where(live_img < image_mask.sum(dim=1, keepdim=True), live_img, -1))
                state.live.append(list(live_n))
        if full is not None:
            full.scatter_(1, live_rows[..., None].expand(-1, -1, width), hidden)
            hidden = full[:, :length]
        self._set_shifts(state, device)
        family.clear_vision(self.vision)
        self._projector_input = None
        if all_hidden is not None:
            all_hidden.append(hidden)
        return hidden, all_hidden

    @staticmethod
    def _prologue(
        image_mask: torch.Tensor | None, valid: torch.Tensor | None, batch: int
    ) -> tuple[list[int], bool]:
        """Return (each sample's image tokens, whether there is padding).

        This is the prefill's one host synchronisation: the plan's shapes depend on N. Everything
        after it, through every decoder layer and selection step, stays on the device unless the
        samples differ (then selection runs one sample at a time, on the host's counts).
        """
        facts = []
        if image_mask is not None:
            facts.append(image_mask.sum(dim=1))
        if valid is not None:
            facts.append((~valid).any().long()[None])
        if not facts:
            return [0] * batch, False
        values = torch.cat(facts).tolist()
        padded = bool(values[-1]) if valid is not None else False
        if image_mask is None:
            return [0] * batch, padded
        return [int(v) for v in values[:batch]], padded

    def _context(
        self, n_image: int, pending: dict[str, Any], raw: Any, device: torch.device
    ) -> SelectContext:
        """Collect what selectors may read for this prefill (every sample alike, one image each)."""
        grid = self.family.grid(raw)
        pixel_values = self.family.selector_pixels(raw) if raw is not None else None
        instance_masks = None
        if self.instance_masks is not None:
            if pixel_values is None:
                raise ValueError("instance_masks needs pixel_values in the forward call")
            rows = pixel_values.shape[0]
            instance_masks = detected_ids(
                self.instance_masks, pixel_values, grid, rows, n_image, device, part=False
            )
        if self.static is not None:  # seeded by its owner outside graph capture
            generator = self.static.generator
        else:
            generator = seeded_generator(self.config, device)
        return SelectContext(
            n_image=n_image,
            grid=grid,
            pixel_values=pixel_values,
            generator=generator,
            vision=self.vision,
            instance_masks=instance_masks,
        )

    @staticmethod
    def _dropped_before(live_seq, image_seq, live_img, slots: bool = False) -> torch.Tensor:
        """Return `(batch, n_live)`: how many dropped image tokens precede each live token.

        `image_seq` `(batch, N)`: the image tokens' sequence indices (SLOT past a sample's own N_b);
        `slots`: the batch runs in masked slots, so a full width does not mean nothing was dropped."""
        n_image, n_live = image_seq.shape[1], live_img.shape[1]
        if n_live == n_image and not slots:
            return torch.zeros_like(live_seq)
        is_live = torch.zeros(image_seq.shape[0], n_image + 1, dtype=torch.bool, device=image_seq.device)
        is_live.scatter_(1, live_img.clamp(max=n_image), True)
        dropped = image_seq.masked_fill(is_live[:, :n_image], SLOT).sort(dim=1).values
        return torch.searchsorted(dropped.contiguous(), live_seq.contiguous())

    @staticmethod
    def _full_view(full, hidden, live_rows, length: int):
        """Every token's hidden state: `full` with the live tokens' rows (`live_rows`) from `hidden`."""
        if full is None:
            return hidden
        return full.scatter(1, live_rows[..., None].expand(-1, -1, hidden.shape[-1]), hidden)[:, :length]

    @staticmethod
    def _set_shifts(state: ForwardState, device: torch.device) -> None:
        """Record, as the prefill ends, each layer's renumbering shift (`ForwardState.shifts`) and
        each distinct one ready to subtract from decode position ids (`ForwardState.shift_by`).

        A renumbering plan's layer saw as many fewer tokens before the new ones as it had dropped:
        one count for the batch, or in masked slots each sample's own, read from the host's counts."""
        plan = state.plan
        shifts: list[Any]
        if not (plan and plan.renumber):
            shifts = [0] * len(state.kept)
        elif state.image_counts is None:
            shifts = [plan.n_image - k.shape[1] for k in state.kept]
        else:  # each sample its own shift: (batch, 1), broadcast over the position ids' sequence
            shifts = [
                tuple(n - c for n, c in zip(state.image_counts, live, strict=True)) for live in state.live
            ]
        state.shifts = shifts
        state.shift_by = {
            shift: torch.tensor(shift, device=device)[:, None] if isinstance(shift, tuple) else shift
            for shift in dict.fromkeys(shifts)
        }

    def _decode(self, embeds, valid, position_ids, cache, kwargs, output_hidden_states):
        state = self.state
        batch, q_len, _ = embeds.shape
        new_seq = state.seq_len + torch.arange(q_len, device=embeds.device).expand(batch, q_len)
        position_ids = self.family.decode_positions(new_seq, position_ids, state.continuation)
        if valid is not None and valid.shape[1] != state.seq_len + q_len:
            raise ValueError(
                f"attention_mask covers {valid.shape[1]} tokens; expected {state.seq_len + q_len} "
                f"({state.seq_len} seen + {q_len} new)"
            )
        if not state.padded:
            valid = None
        elif valid is None:  # masked slots need a mask even where the caller has no padding
            valid = torch.ones(batch, state.seq_len + q_len, dtype=torch.bool, device=embeds.device)
        # Each layer's renumbering shift, fixed when the prefill ended (`_set_shifts`).
        rope = {shift: self.family.rope(embeds, position_ids - by) for shift, by in state.shift_by.items()}
        shifts = state.shifts
        hidden = embeds
        all_hidden = [] if output_hidden_states else None
        for layer_idx, layer in enumerate(self.layers):
            if all_hidden is not None:
                all_hidden.append(hidden)
            keys = torch.cat([state.key_seq[layer_idx], new_seq], dim=1)
            layer_pos, layer_rope = rope[shifts[layer_idx]]
            hidden = self.api.call_layer(
                layer,
                hidden,
                attention_mask=self._mask(new_seq, keys, valid),
                position_ids=layer_pos,
                position_embeddings=layer_rope,
                cache=cache,
                use_cache=True,
                extra=kwargs,
            )
            state.key_seq[layer_idx] = keys
        state.seq_len += q_len
        if all_hidden is not None:
            all_hidden.append(hidden)
        return hidden, all_hidden

    # -- masks and scores -----------------------------------------------------------------------

    def _mask(self, query_seq: torch.Tensor, key_seq: torch.Tensor, valid: torch.Tensor | None):
        """Build the attention mask for live queries and keys, in the form the attention backend takes.

        Live sets are sorted subsets of the sequence, so causality in live order equals causality
        in sequence order: without padding SDPA and flash need no mask at all, except that SDPA's
        `is_causal` aligns a block of several new queries to the first keys, not the last, so a
        decode step of more than one token gets an explicit mask.
        """
        impl = self.text_config._attn_implementation
        if valid is not None:  # masked slots (index SLOT, past the mask's end) are never valid keys
            bound = valid.shape[1]
            key_valid = valid.gather(1, key_seq.clamp(max=bound - 1)) & (key_seq < bound)
        if impl.startswith("flash_attention"):
            return None if valid is None else key_valid.long()
        if impl == "sdpa" and valid is None and (query_seq is key_seq or query_seq.shape[1] == 1):
            return None
        allowed = key_seq[:, None, :] <= query_seq[:, :, None]
        if valid is not None:
            allowed = allowed & key_valid[:, None, :]
            # Left-padding queries see no key at all; let them see themselves so SDPA returns
            # numbers rather than NaN. Valid queries always see themselves already.
            allowed = allowed | (key_seq[:, None, :] == query_seq[:, :, None])
        allowed = allowed[:, None]
        if impl == "sdpa":
            return allowed
        dtype = self.family.embed_tokens.weight.dtype
        return torch.zeros(allowed.shape, dtype=dtype, device=allowed.device).masked_fill(
            ~allowed, torch.finfo(dtype).min
        )

    def _query_seq(self, token: str, valid: torch.Tensor | None, pending, seq: torch.Tensor) -> torch.Tensor:
        """Return the `(batch,)` sequence index of each sample's scoring token."""
        if token == "last":
            if valid is None:
                return seq[:, -1]
            # The last non-padding token, whichever side the padding is on.
            return seq.shape[1] - 1 - valid.flip(1).int().argmax(dim=1)
        input_ids = pending.get("input_ids") if pending else None
        if self.seg_token_id is None or input_ids is None:
            raise ValueError(
                "score token 'seg' needs the [SEG] token id (prune_(..., seg_token_id=...)) and input_ids; "
                "use score_token='last' for plain generation"
            )
        is_seg = input_ids == self.seg_token_id
        if self.static is None and not bool(is_seg.any(dim=1).all()):  # a static layout checked it
            raise ValueError(
                f"score token 'seg': some samples hold no [SEG] token (id {self.seg_token_id}) "
                "in the prefill; "
                "use score_token='last' when the input has no [SEG]"
            )
        # The first [SEG] of each sample.
        return is_seg.int().argmax(dim=1)

    def _score(self, layer, hidden, live_seq, image_seq, query_seq, valid, rope) -> torch.Tensor:
        """Return `(batch, n_live_image)` attention of the query token to each live image token in `layer`.

        `rope`: the live tokens' position embeddings, as the family's layers take them."""
        row = torch.searchsorted(live_seq, query_seq[:, None].contiguous())
        q, k, scale = self.family.query_keys(layer, hidden, row, rope)
        key_valid = live_seq <= query_seq[:, None]
        if valid is not None:
            key_valid = key_valid & valid.gather(1, live_seq.clamp(max=valid.shape[1] - 1))
        probs = attention_row(q, k, key_valid, scale)
        # Masked image slots (SLOT) land on the last row; their scores are never read.
        return probs.gather(1, torch.searchsorted(live_seq, image_seq).clamp(max=live_seq.shape[1] - 1))

    # -- stats ----------------------------------------------------------------------------------

    def stats(self) -> PruneStats:
        """Return the stats of the last prefill."""
        state = self.state
        if state is None:
            raise RuntimeError("no forward has run since prune_(); run the model first")
        n_image = state.plan.n_image if state.plan else 0
        if state.image_counts is None:
            live = torch.tensor([[k.shape[1]] * k.shape[0] for k in state.kept])
        else:
            live = torch.tensor(state.live)
        dims = flops.ModelDims.from_config(self.text_config, max(n_image, 1), grouped_kv=True)
        return PruneStats(
            image_tokens=n_image,
            live_tokens=live,
            kept_indices=list(state.kept),
            text_tokens=state.text_tokens,
            scores=list(state.scores),
            dims=dims,
            renumbered=bool(state.plan and state.plan.renumber),
            image_counts=None if state.image_counts is None else torch.tensor(state.image_counts),
        )
