"""Method configs: one validated dataclass per pruning method, and the registry that names them."""

from __future__ import annotations

import dataclasses
import typing
from typing import Any, ClassVar

from segprune.checks import check_choice, check_int, check_number
from segprune.methods.plan import TokenPlan

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
    through the `check_*` helpers) and `plan()`.
    """

    name: ClassVar[str] = ""

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
