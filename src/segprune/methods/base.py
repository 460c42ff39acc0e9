"""Method configs: one validated dataclass per pruning method, and the registry that names them.

Everything other code needs to know about a method is on its config class (torchao's pattern):
how its layer fields move to another depth (`scale_layers`), how it is set at a budget on each axis
(`budget_fields`, `paper_fields`), its named sweep variants, its display label, and what it needs
from a model. Code outside a method's own file reads these and never switches on method names.
"""

from __future__ import annotations

import dataclasses
import math
import typing
from typing import Any, ClassVar

from segprune.checks import check_choice, check_int, check_number
from segprune.methods.plan import TokenPlan
from segprune.methods.scale import scale_layer

METHODS: dict[str, type[MethodConfig]] = {}


def register(cls: type[MethodConfig]) -> type[MethodConfig]:
    """Add a config class to `METHODS` under its lowercase `name`."""
    name = cls.name
    if name != name.lower() or not name.isidentifier():
        raise ValueError(f"method name {name!r} must be a lowercase identifier")
    if name in METHODS and METHODS[name] is not cls:
        raise ValueError(f"method name {name!r} is already registered by {METHODS[name].__name__}")
    METHODS[name] = cls
    return cls


def unregister(name: str) -> None:
    """Remove the method registered as `name` (tests that register a throwaway method)."""
    get_config_class(name)
    del METHODS[name]


def get_config_class(name: str) -> type[MethodConfig]:
    """Return the config class registered as `name`, or raise naming the valid names."""
    try:
        return METHODS[name]
    except KeyError:
        raise ValueError(f"unknown method {name!r}; valid methods: {', '.join(sorted(METHODS))}") from None


@dataclasses.dataclass(frozen=True)
class MethodConfig:
    """Base class of every method config: validation on construction, dict round-trip, a token plan.

    Subclasses are frozen dataclasses that set `name`, implement `validate()` (raise `ValueError`
    through the `check_*` helpers) and `plan()`, and describe themselves through the class
    attributes and methods below; the defaults fit a method that prunes inside the decoder at the
    layers named in `layer_fields`, from attention scores alone.

    Class attributes:
        name: the registry key, a lowercase identifier.
        label: how tables and the demo name the method ("FastV"); the name when empty.
        display_order: where the demo lists the method (lower first; ties by name).
        layer_fields: int fields holding decoder-layer indices, moved by the default `scale_layers`.
        prunes_before_decoder: every step acts before the language model (layer 0), so there are no
            decoder layers to move to another depth.
        seg_free_fields: field values that let the method run on a prompt without `[SEG]` (GCG).
    """

    name: ClassVar[str] = ""
    label: ClassVar[str] = ""
    display_order: ClassVar[int] = 100
    layer_fields: ClassVar[tuple[str, ...]] = ()
    prunes_before_decoder: ClassVar[bool] = False
    seg_free_fields: ClassVar[dict[str, Any]] = {}

    def __post_init__(self) -> None:
        # JSON has no tuples: accept lists for tuple-typed fields so from_dict(to_dict(c)) == c.
        hints = typing.get_type_hints(type(self))
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, list) and "tuple" in str(hints.get(f.name, "")):
                object.__setattr__(self, f.name, tuple(value))
        self.validate()

    def validate(self) -> None:
        """Raise `ValueError` naming the field, the value and the valid range for any bad field."""

    def plan(self, n_image: int, n_layers: int) -> TokenPlan:
        """Return the token plan for `n_image` image tokens in a decoder of `n_layers` layers."""
        raise NotImplementedError

    def vision_layers(self) -> tuple[int, ...]:
        """Vision-encoder layers whose CLS attention or keys the plan reads (negative: from the end)."""
        return ()

    # -- what the method needs from a model, and how it runs ----------------------------------

    @property
    def needs_vision_cls(self) -> bool:
        """Whether the plan reads the vision tower's CLS row (attention or keys)."""
        return bool(self.vision_layers())

    @property
    def needs_pixels(self) -> bool:
        """Whether a selector reads `pixel_values` (an `inputs_embeds`-only call cannot run it)."""
        return False

    @property
    def needs_seg_token(self) -> bool:
        """Whether the plan scores by `[SEG]` attention, so every prompt must hold `[SEG]`."""
        return False

    @property
    def ranks_by_last_token(self) -> bool:
        """Whether a step ranks image tokens by the last token's attention row, so which token ends
        the prefill decides what is kept (`SegModel.segment(score_token=)`)."""
        return False

    @property
    def instance_choice(self) -> str | None:
        """Where a Seg-First stage takes its instances from (one of
        `segprune.methods.csp.INSTANCE_CHOICES`: "auto", "sam", "superpixels", "ground_truth"), or
        None where the method runs no such stage: the default, which CSP overrides.
        `SegModel.instance_source` and the evaluation read it."""
        return None

    @property
    def replayable(self) -> bool:
        """Whether replaying the recorded live sets (`ReplayConfig`) reproduces the forward: false for
        methods that merge tokens, whose kept tokens carry merged hidden states."""
        return True

    @property
    def sync_free(self) -> bool:
        """Whether a prefill makes one host synchronisation only (reading N), so it can be graphed."""
        return True

    # -- depth and budgets --------------------------------------------------------------------

    def scale_layers(self, from_layers: int, to_layers: int) -> MethodConfig:
        """Return this config with its decoder-layer fields mapped from `from_layers` to `to_layers` layers.

        The default maps each of `layer_fields` with `scale_layer`; methods whose layers interact
        (stages that must not collide) override it.
        """
        if self.prunes_before_decoder:
            return self
        if not self.layer_fields:
            raise ValueError(
                f"scale_layers does not know the decoder-layer fields of method {self.name!r}; "
                f"set {type(self).__name__}.layer_fields or override scale_layers"
            )
        changes = {}
        for field in self.layer_fields:
            layer = scale_layer(getattr(self, field), from_layers, to_layers)
            if layer >= to_layers:
                raise ValueError(
                    f"{type(self).__name__}.{field}={layer} does not fit a {to_layers}-layer decoder"
                )
            changes[field] = layer
        return dataclasses.replace(self, **changes)

    @classmethod
    def budget_fields(cls, reduction: float, n_layers: int, n_image: int) -> dict[str, Any]:
        """Return the fields whose N_avg is (1 - `reduction`) * `n_image` in an `n_layers` decoder.

        The N_avg axis (`segprune.eval.budgets.config_for`, which checks how close the result came).
        """
        raise ValueError(f"no budget rule for method {cls.name!r}; define {cls.__name__}.budget_fields")

    @classmethod
    def paper_fields(
        cls, reduction: float, n_layers: int, n_image: int, **options: Any
    ) -> dict[str, Any] | None:
        """Return the fields the method's paper uses at `reduction` in its `n_layers` (32) decoder.

        None: the paper gives no setting here, and `segprune.eval.budgets.paper_config` solves the
        N_avg axis at that depth instead. `options` hold paper-axis rules of one method
        (`pdrop_rule`); others ignore them.
        """
        return None

    @classmethod
    def variants(cls) -> dict[str, dict[str, Any]]:
        """Return the sweep's rows of this method: label -> field overrides (default: one row)."""
        return {cls.name: {}}

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-ready dict with the method name under "method"."""
        out: dict[str, Any] = {"method": self.name}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            out[f.name] = list(value) if isinstance(value, tuple) else value
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> MethodConfig:
        """Build a config from `to_dict()` output; on the base class the "method" key picks the class."""
        data = dict(data)
        name = data.pop("method", None)
        target = cls
        if cls is MethodConfig:
            if name is None:
                raise ValueError(
                    "config dict has no 'method' key; valid methods: " + ", ".join(sorted(METHODS))
                )
            target = get_config_class(name)
        elif name is not None and name != cls.name:
            raise ValueError(f"config dict is for method {name!r}, not {cls.name!r}")
        known = {f.name for f in dataclasses.fields(target)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(
                f"unknown field(s) {unknown} for {target.__name__}; valid fields: {sorted(known)}"
            )
        return target(**data)

    @classmethod
    def keep_all(cls) -> MethodConfig:
        """Return a config of this method that keeps every image token (the identity check)."""
        raise NotImplementedError

    # -- validation helpers -------------------------------------------------------------------

    def _where(self, field: str) -> str:
        return f"{type(self).__name__}.{field}"

    def check_int(self, field: str, lo: int | None = None, hi: int | None = None) -> int:
        """Check that `field` is an int in [lo, hi]."""
        return check_int(self._where(field), getattr(self, field), lo, hi)

    def check_fraction(self, field: str, allow_zero: bool = False) -> float:
        """Check that `field` is a real number in (0, 1] (or [0, 1] with `allow_zero`)."""
        return check_number(self._where(field), getattr(self, field), 0, 1, lo_open=not allow_zero)

    def check_choice(self, field: str, choices: tuple[str, ...]) -> str:
        """Check that `field` is one of `choices`."""
        return check_choice(self._where(field), getattr(self, field), choices)

    def check_real(self, field: str, allow_zero: bool) -> float:
        """Check that `field` is a finite real number > 0 (>= 0 with `allow_zero`)."""
        value = getattr(self, field)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ValueError(f"{self._where(field)}={value!r} must be a finite number")
        if value < 0 or (value == 0 and not allow_zero):
            valid = "value >= 0" if allow_zero else "value > 0"
            raise ValueError(f"{self._where(field)}={value!r} is out of range; valid: {valid}")
        return value

    def check_rgb(self, field: str, positive: bool) -> tuple[float, ...]:
        """Check that `field` is 3 finite numbers (R, G, B), each > 0 with `positive`."""
        value = getattr(self, field)
        numbers = isinstance(value, tuple) and len(value) == 3
        numbers = numbers and all(
            not isinstance(v, bool) and isinstance(v, (int, float)) and math.isfinite(v) for v in value
        )
        if not numbers or (positive and min(value) <= 0):
            valid = "3 finite numbers > 0" if positive else "3 finite numbers"
            raise ValueError(f"{self._where(field)}={value!r} is out of range; valid: {valid} (R, G, B)")
        return value

    def check_layers(self, field: str) -> tuple[int, ...]:
        """Check that `field` is a non-empty, strictly increasing tuple of layer indices >= 1."""
        value = getattr(self, field)
        if not isinstance(value, tuple) or not value:
            raise ValueError(f"{self._where(field)}={value!r} must be a non-empty tuple of layer indices")
        for i, layer in enumerate(value):
            if isinstance(layer, bool) or not isinstance(layer, int) or layer < 1:
                raise ValueError(f"{self._where(field)}[{i}]={layer!r} is out of range; valid: integer >= 1")
            if i and layer <= value[i - 1]:
                raise ValueError(
                    f"{self._where(field)}={value!r} must be strictly increasing "
                    f"({layer} follows {value[i - 1]})"
                )
        return value


def check_fits(config: MethodConfig, field: str, value: int, n_layers: int) -> None:
    """Raise if a layer index in `field` does not exist in a decoder of `n_layers` layers."""
    if value >= n_layers:
        raise ValueError(
            f"{type(config).__name__}.{field}={value} does not fit this model: "
            f"its decoder has {n_layers} layers, valid: value <= {n_layers - 1}"
        )
