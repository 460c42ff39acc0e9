"""FLOPs and N_avg accounting for visual-token pruning in LLaVA-style decoders.

Two per-layer cost models are implemented, both counting only the multi-head attention and FFN
of a decoder layer that sees ``n`` tokens (text tokens plus the image tokens still alive there),
with hidden size ``d`` and FFN intermediate size ``m``:

* ``"csp"`` -- LVLM_CSP, Eqs. 10-11: ``4 n d^2 + 2 n^2 d + 3 n d m`` (gated FFN, three matrices);
* ``"altp"`` -- ALTP, Eq. 5: ``4 n d^2 + 2 n^2 d + 2 n d m``.

Both papers' decoders give keys and values as many heads as queries. With grouped-query attention
(Qwen2.5-VL: 4 key/value heads for 28 query heads) the k and v projections are ``d x d_kv`` with
``d_kv`` = key/value heads x head size, so ``4 n d^2`` becomes ``2 n d^2 + 2 n d d_kv``; the
attention term ``2 n^2 d`` stays (every query head still scores and mixes all ``n`` tokens).

Both expressions count multiply-accumulates; :func:`decoder_flops` multiplies by
:data:`FLOPS_PER_MAC` (= 2), which is what reproduces the CSP paper's Table 6 TFLOPs.
Neither paper states its text-token count; :data:`TEXT_TOKENS` holds the values fitted to the
papers' tables (see ``docs/flops.md``). Only the standard library is used: no model is loaded.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from collections.abc import Sequence
from dataclasses import dataclass

from segprune import presets
from segprune.checks import check_number

__all__ = [
    "FLOPS_PER_MAC",
    "FORMULAS",
    "PRESETS",
    "TEXT_TOKENS",
    "FlopsReport",
    "GQADims",
    "ModelDims",
    "altp_fraction",
    "decoder_flops",
    "format_report",
    "layer_flops",
    "n_avg",
    "preset",
    "report",
]

FORMULAS: tuple[str, ...] = ("csp", "altp")
"""Names of the per-layer cost models accepted by ``formula=`` arguments."""

TEXT_TOKENS: dict[str, int] = {"csp": 62, "altp": 32}
"""Default non-image tokens per sample, fitted to CSP Table 6 and ALTP Table 1 (not stated there)."""

FLOPS_PER_MAC = 2
"""FLOPs counted per multiply-accumulate by :func:`decoder_flops`."""

_FFN_MATRICES = {"csp": 3, "altp": 2}


@dataclass(frozen=True)
class ModelDims:
    """Decoder dimensions that the FLOPs formulas need (keys and values as wide as queries).

    Attributes:
        num_layers: number of decoder layers ``L`` (``T`` in the ALTP paper).
        hidden_size: hidden state size ``d``.
        intermediate_size: FFN intermediate size ``m``.
        image_tokens: image tokens per sample before pruning ``N``.
    """

    num_layers: int
    hidden_size: int
    intermediate_size: int
    image_tokens: int

    def __post_init__(self) -> None:
        """Check that every dimension is a positive integer."""
        for field in ("num_layers", "hidden_size", "intermediate_size", "image_tokens"):
            value = getattr(self, field)
            if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
                raise ValueError(f"ModelDims.{field} must be a positive integer, got {value!r}")

    @property
    def kv_width(self) -> int:
        """The width ``d_kv`` of the k and v projections: ``hidden_size`` here (see `GQADims`)."""
        return self.hidden_size

    def with_kv(self, kv_size: int) -> ModelDims:
        """These dims with k/v projecting to `kv_size` columns: `self` when that is `hidden_size` (no
        grouping), else the `GQADims`."""
        if kv_size == self.hidden_size:
            return self
        fields = {f.name: getattr(self, f.name) for f in dataclasses.fields(ModelDims)}
        return GQADims(**fields, kv_size=kv_size)

    @classmethod
    def from_config(cls, config: object, image_tokens: int, grouped_kv: bool = False) -> ModelDims:
        """Read the dimensions from a Hugging Face-style config object (duck-typed).

        Uses ``config.text_config`` when present (LLaVA and Qwen2-VL configs), otherwise ``config``
        itself, and reads ``num_hidden_layers``, ``hidden_size`` and ``intermediate_size`` from it.
        ``grouped_kv``: also read ``num_key_value_heads`` and the head size (``head_dim``, or
        ``hidden_size / num_attention_heads``) and return `GQADims` when the key/value width
        ``d_kv`` is narrower than ``hidden_size``; without it the papers' convention holds (k and v
        counted at full width), which is what results recorded so far used.
        """
        text_config = getattr(config, "text_config", None)
        source = config if text_config is None else text_config
        values = {}
        for name in ("num_hidden_layers", "hidden_size", "intermediate_size"):
            if not hasattr(source, name):
                raise ValueError(f"config {type(source).__name__} has no attribute {name!r}")
            values[name] = getattr(source, name)
        dims = ModelDims(
            num_layers=values["num_hidden_layers"],
            hidden_size=values["hidden_size"],
            intermediate_size=values["intermediate_size"],
            image_tokens=image_tokens,
        )
        heads = getattr(source, "num_attention_heads", None)
        if not grouped_kv or not heads:
            return dims
        kv_heads = getattr(source, "num_key_value_heads", None) or heads
        head_dim = getattr(source, "head_dim", None) or values["hidden_size"] // heads
        kv_size = kv_heads * head_dim
        return dims.with_kv(kv_size)


@dataclass(frozen=True)
class GQADims(ModelDims):
    """`ModelDims` of a decoder with grouped-query attention, whose k and v project to fewer columns.

    Attributes:
        kv_size: ``d_kv``, key/value heads x head size (Qwen2.5-VL-7B: 4 x 128 = 512), in
            1..hidden_size.
    """

    kv_size: int = 0

    def __post_init__(self) -> None:
        """Check every dimension, and that ``1 <= kv_size <= hidden_size``."""
        super().__post_init__()
        value = self.kv_size
        valid = isinstance(value, numbers.Integral) and not isinstance(value, bool)
        if not valid or not 1 <= value <= self.hidden_size:
            raise ValueError(
                f"GQADims.kv_size={value!r} is out of range; valid: 1 <= kv_size <= hidden_size "
                f"({self.hidden_size})"
            )

    @property
    def kv_width(self) -> int:
        """The width ``d_kv`` of the k and v projections."""
        return self.kv_size


def _preset_dims(p: presets.LlavaPreset | presets.QwenVLPreset) -> ModelDims:
    d = p.decoder
    return ModelDims(d.layers, d.hidden, d.intermediate, p.image_tokens).with_kv(d.kv_size)


PRESETS: dict[str, ModelDims] = {
    name: _preset_dims(p) for name, p in {**presets.PRESETS, **presets.QWEN_PRESETS}.items()
}
"""The decoders of `segprune.presets`: LLaVA-1.5 (Vicuna-7B / 13B, CLIP ViT-L/14 at 224 or 336 px)
and Qwen2.5-VL-7B (`GQADims`, at 448 or 672 px square images: 256 or 576 image tokens)."""


def preset(name: str) -> ModelDims:
    """Return the :class:`ModelDims` of a named preset, or raise ``ValueError`` listing valid names."""
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown preset {name!r}; valid presets: {', '.join(sorted(PRESETS))}") from None


def _check_formula(formula: str) -> None:
    """Raise ``ValueError`` unless ``formula`` is one of :data:`FORMULAS`."""
    if formula not in FORMULAS:
        raise ValueError(f"unknown formula {formula!r}; valid formulas: {', '.join(FORMULAS)}")


def _check_count(name: str, value: float, upper: float = math.inf) -> None:
    """Raise ``ValueError`` unless ``0 <= value <= upper`` and finite (rejects NaN, inf and booleans)."""
    check_number(name, value, 0, None if math.isinf(upper) else upper)


def layer_flops(n: float, d: int, m: int, formula: str = "csp", kv: int | None = None) -> float:
    """Return one decoder layer's cost in the paper's own units (multiply-accumulates).

    ``csp``: ``4 n d^2 + 2 n^2 d + 3 n d m``; ``altp``: ``4 n d^2 + 2 n^2 d + 2 n d m``. With
    grouped-query attention (``kv`` = the k/v projections' width ``d_kv`` < ``d``) the projections
    cost ``2 n d^2 + 2 n d d_kv`` instead of ``4 n d^2``; ``kv=None`` means ``d``.
    """
    _check_formula(formula)
    _check_count("token count n", n)
    kv = d if kv is None else kv
    for name, value in (("hidden size d", d), ("intermediate size m", m), ("k/v width d_kv", kv)):
        if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return 2 * n * d * d + 2 * n * d * kv + 2 * n * n * d + _FFN_MATRICES[formula] * n * d * m


def _check_live(live_image_tokens: Sequence[float], dims: ModelDims) -> tuple[float, ...]:
    """Return the per-layer live image-token counts as a tuple after validating them against ``dims``."""
    live = tuple(live_image_tokens)
    if len(live) != dims.num_layers:
        raise ValueError(
            f"need one live image-token count per layer: got {len(live)} counts, "
            f"expected {dims.num_layers} (num_layers)"
        )
    for i, count in enumerate(live):
        _check_count(f"live image-token count of layer {i}", count, dims.image_tokens)
    return live


def decoder_flops(
    live_image_tokens: Sequence[float],
    dims: ModelDims,
    text_tokens: float | None = None,
    formula: str = "csp",
) -> float:
    """Return the decoder's FLOPs: ``FLOPS_PER_MAC`` times the sum of :func:`layer_flops` over layers.

    Layer ``i`` sees ``text_tokens + live_image_tokens[i]`` tokens. ``text_tokens=None`` uses
    ``TEXT_TOKENS[formula]``.
    """
    _check_formula(formula)
    live = _check_live(live_image_tokens, dims)
    text = TEXT_TOKENS[formula] if text_tokens is None else text_tokens
    _check_count("text_tokens", text)
    d, m, kv = dims.hidden_size, dims.intermediate_size, dims.kv_width
    return FLOPS_PER_MAC * sum(layer_flops(text + count, d, m, formula, kv) for count in live)


def n_avg(live_image_tokens: Sequence[float]) -> float:
    """Return N_avg (CSP Eq. 9): the plain mean over layers of the live image-token count (not floored)."""
    live = tuple(live_image_tokens)
    if not live:
        raise ValueError("live_image_tokens must contain at least one layer, got an empty sequence")
    for i, count in enumerate(live):
        _check_count(f"live image-token count of layer {i}", count)
    return sum(live) / len(live)


def altp_fraction(
    live_image_tokens: Sequence[float], dims: ModelDims, text_tokens: float | None = None
) -> float:
    """Return the FLOPs of a pruned schedule as a fraction of the dense model, ALTP formula (Eq. 5).

    For a one-shot schedule (``N`` tokens in the first ``K`` of ``T`` layers, ``n_hat`` after) this is
    ALTP's ``(K f(n) + (T - K) f(n_hat)) / (T f(n))``, i.e. one minus the reduction ratio of Eq. 5.
    """
    dense = [dims.image_tokens] * dims.num_layers
    pruned = decoder_flops(live_image_tokens, dims, text_tokens, formula="altp")
    return pruned / decoder_flops(dense, dims, text_tokens, formula="altp")


@dataclass(frozen=True)
class FlopsReport:
    """FLOPs and token statistics of one pruning schedule (what ``segprune flops`` prints).

    Attributes:
        name: preset name, or ``None`` when built from explicit :class:`ModelDims`.
        dims: the decoder dimensions.
        text_tokens: text tokens used for the CSP numbers.
        altp_text_tokens: text tokens used for ``altp_fraction``.
        live_image_tokens: live image tokens per layer.
        n_avg: CSP Eq. 9, not floored (CSP Table 6 prints its floor).
        tflops: pruned TFLOPs, CSP formula.
        dense_tflops: unpruned TFLOPs, CSP formula.
        reduction: ``1 - tflops / dense_tflops``.
        altp_fraction: pruned / dense FLOPs with the ALTP formula (ALTP Table 1 "FLOPS" column).
        image_token_reduction: ``1 - n_avg / N``.
    """

    name: str | None
    dims: ModelDims
    text_tokens: float
    altp_text_tokens: float
    live_image_tokens: tuple[float, ...]
    n_avg: float
    tflops: float
    dense_tflops: float
    reduction: float
    altp_fraction: float
    image_token_reduction: float


def report(
    live_image_tokens: Sequence[float],
    dims: ModelDims | str,
    text_tokens: float | None = None,
    altp_text_tokens: float | None = None,
) -> FlopsReport:
    """Compute a :class:`FlopsReport` for per-layer live image-token counts.

    ``dims`` may be a :class:`ModelDims` or a preset name. ``text_tokens`` (CSP numbers) and
    ``altp_text_tokens`` (ALTP fraction) default to :data:`TEXT_TOKENS`.
    """
    name = dims if isinstance(dims, str) else None
    model = preset(dims) if isinstance(dims, str) else dims
    live = _check_live(live_image_tokens, model)
    text = TEXT_TOKENS["csp"] if text_tokens is None else text_tokens
    altp_text = TEXT_TOKENS["altp"] if altp_text_tokens is None else altp_text_tokens
    dense = [model.image_tokens] * model.num_layers
    tflops = decoder_flops(live, model, text, "csp") / 1e12
    dense_tflops = decoder_flops(dense, model, text, "csp") / 1e12
    mean = n_avg(live)
    return FlopsReport(
        name=name,
        dims=model,
        text_tokens=text,
        altp_text_tokens=altp_text,
        live_image_tokens=live,
        n_avg=mean,
        tflops=tflops,
        dense_tflops=dense_tflops,
        reduction=1 - tflops / dense_tflops,
        altp_fraction=altp_fraction(live, model, altp_text),
        image_token_reduction=1 - mean / model.image_tokens,
    )


def runs(values: Sequence[float], sep: str = ", ") -> str:
    """Return a run-length summary of per-layer counts, e.g. ``"6x128, 9x576, 17x32"``."""
    parts: list[str] = []
    i = 0
    while i < len(values):
        j = i
        while j < len(values) and values[j] == values[i]:
            j += 1
        parts.append(f"{j - i}x{values[i]:g}")
        i = j
    return sep.join(parts)


def format_report(r: FlopsReport) -> str:
    """Return a short aligned plain-text table of a :class:`FlopsReport` for a terminal."""
    d = r.dims
    model = f"L={d.num_layers} d={d.hidden_size} m={d.intermediate_size} N={d.image_tokens}"
    if d.kv_width != d.hidden_size:
        model += f" d_kv={d.kv_width}"
    rows = [
        ("model", f"{r.name} ({model})" if r.name else model),
        ("text tokens", f"{r.text_tokens:g} (CSP), {r.altp_text_tokens:g} (ALTP)"),
        ("image tokens/layer", runs(r.live_image_tokens)),
        ("N_avg", f"{r.n_avg:.2f} of {d.image_tokens} ({100 * r.image_token_reduction:.1f}% fewer)"),
        ("TFLOPs (CSP)", f"{r.tflops:.3f} of {r.dense_tflops:.3f} dense ({100 * r.reduction:.1f}% fewer)"),
        ("FLOPs fraction (ALTP)", f"{100 * r.altp_fraction:.1f}% of dense"),
    ]
    width = max(len(label) for label, _ in rows)
    return "\n".join(f"{label:<{width}}  {value}" for label, value in rows)
