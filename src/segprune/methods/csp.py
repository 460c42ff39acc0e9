"""LVLM_CSP: a coarse pass on a few tokens (clustering), all tokens back (scattering), then a handful
kept by `[SEG]` attention (pruning)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, ClassVar

import lazy_loader

from segprune import flops
from segprune.checks import check_choice
from segprune.methods.allocate import allocate, select_by_quota
from segprune.methods.altp import image_regions
from segprune.methods.base import MethodConfig, register
from segprune.methods.counts import round_half_up
from segprune.methods.plan import SCORE_TOKENS, AttentionScore, Keep, Reactivate, SelectContext, TokenPlan
from segprune.methods.scale import PAPER_MODEL, scale_layer
from segprune.methods.select import TopK

torch = lazy_loader.load("torch")  # configs are built where torch is not imported (the CLI's --help)

CLUSTER_MODES = ("seg_first", "uniform", "random", "cls")
# Where Seg-First's instances come from: what a config may ask for (`instance_source` resolves it).
INSTANCE_CHOICES = ("auto", "sam", "superpixels", "ground_truth")
# budget_fields: any split this close to the target counts as a hit, and the paper-like shape decides.
EXACT = 0.005

# Table 6 of the CSP paper: (Lc, Nc, Ls, Np) per model and image-token reduction.
TABLE6: dict[str, dict[float, tuple[int, int, int, int]]] = {
    "llava-1.5-7b-224": {
        0.65: (6, 96, 8, 8),
        0.70: (7, 80, 7, 8),
        0.75: (8, 64, 6, 4),
        0.80: (10, 48, 4, 8),
        0.85: (11, 32, 3, 8),
        0.90: (12, 32, 2, 2),
    },
    "llava-1.5-7b-336": {
        0.65: (6, 128, 9, 32),
        0.70: (6, 32, 9, 16),
        0.75: (7, 64, 7, 16),
        0.80: (8, 24, 6, 8),
        0.85: (9, 32, 4, 8),
        0.90: (11, 32, 3, 2),
    },
    "llava-1.5-13b-224": {
        0.65: (5, 64, 11, 16),
        0.70: (6, 64, 10, 8),
        0.75: (7, 32, 9, 8),
        0.80: (9, 16, 7, 8),
        0.85: (11, 16, 5, 8),
        0.90: (12, 32, 2, 8),
    },
}


def instance_source(choice: str, *, has_sam: bool, given: bool) -> str:
    """Return where Seg-First's instances come from, or raise on a conflict.

    One of "sam", "superpixels", "given" (the caller's masks) or "ground_truth".

    Args:
        choice: `CSPConfig.instances`, one of `INSTANCE_CHOICES`.
        has_sam: whether the model can run its own SAM's everything mode (a `SegModel`).
        given: whether the caller supplied instance masks (`prune_(..., instance_masks=)`, or the
            `instance_masks` of `SegModel.segment` / `ground`).

    "auto" takes the caller's masks ("given"), else the model's SAM, else superpixels (a plain
    LLaVA). Every other choice is that source or an error: "sam" without a SAM, "ground_truth"
    without masks, and "sam" or "superpixels" beside caller masks all raise instead of falling back.
    """
    check_choice("CSPConfig.instances", choice, INSTANCE_CHOICES)
    if choice == "auto":
        return "given" if given else "sam" if has_sam else "superpixels"
    if given and choice in ("sam", "superpixels"):
        raise ValueError(
            f"CSPConfig.instances={choice!r} but instance masks were given (prune_ or segment/ground "
            "instance_masks=); drop them, or choose instances='auto' or 'ground_truth' to use them"
        )
    if choice == "sam" and not has_sam:
        raise ValueError(
            "CSPConfig.instances='sam' needs a model with its own SAM (a SegModel, through segment() or "
            "ground()); this forward has none. Valid here: 'auto' (superpixels without a SAM), "
            "'superpixels', or instance masks from prune_(..., instance_masks=) with 'auto'"
        )
    if choice == "ground_truth" and not given:
        raise ValueError(
            "CSPConfig.instances='ground_truth' needs the ground-truth instance masks: pass them as "
            "segment(..., instance_masks=) or ground(..., instance_masks=) (segprune eval does, for "
            "shapes data), or as prune_(..., instance_masks=)"
        )
    return choice


def uniform_indices(n: int, count: int, device: torch.device | None = None) -> torch.Tensor:
    """Return CSP Eq. 2's uniform sample: i * floor(n / count) for i < count."""
    return torch.arange(count, device=device) * (n // count)


@dataclass(frozen=True)
class SegFirstSelector:
    """Sample tokens per instance in proportion to its size, at least one each (CSP Eqs. 4-5).

    Instances come from `context.instance_masks` (a detector plugged into `prune_`, or the masks a
    `SegModel` passes: its SAM's, or the caller's) or, when there are none, from ALTP's grid
    superpixels of the image with `n_regions` regions; `choice` (`CSPConfig.instances`) refuses
    the combinations `instance_source` refuses. Quotas are
    rounded by largest remainder so they sum to exactly `count`; inside each instance the tokens
    are drawn uniformly at random from the context's seeded generator. Tokens outside every
    instance are drawn only when the instances hold fewer than `count` tokens.
    """

    n_regions: int = 10
    choice: str = "auto"

    def __call__(
        self, scores: torch.Tensor | None, live: torch.Tensor, count: int, context: SelectContext
    ) -> torch.Tensor:
        labels, n_labels = self.instances(context)
        live_labels = labels.gather(1, live)
        batch, n = live.shape
        sizes = torch.zeros(batch, n_labels, dtype=torch.long, device=live.device)
        sizes.scatter_add_(1, live_labels, torch.ones_like(live_labels))
        weights = sizes.float()
        if context.instance_masks is not None:
            # The last label is "no instance": it only takes what the instances cannot hold.
            in_instances = sizes[:, :-1].sum(dim=1)
            background = torch.where(in_instances >= count, 0, sizes[:, -1])
            sizes = torch.cat([sizes[:, :-1], background[:, None]], dim=1)
            weights = torch.cat([weights[:, :-1], 1e-6 * (background[:, None] > 0)], dim=1)
        quotas = allocate(weights, sizes, count)
        noise = torch.rand(batch, n, generator=context.generator, device=live.device)
        return live.gather(1, select_by_quota(noise, live_labels, quotas, count))

    def instances(self, context: SelectContext) -> tuple[torch.Tensor, int]:
        """Return `(batch, N)` labels and their number; with caller masks, label N means "none"."""
        ids = context.instance_masks
        # Under "sam", masks here are the ones a SegModel computed with its SAM; without masks this
        # forward has no SAM (a plain LLaVA, or a SegModel's LLM called directly).
        if not (self.choice == "sam" and ids is not None):
            instance_source(self.choice, has_sam=False, given=ids is not None)
        if ids is None:
            labels, n_labels, _ = image_regions(context, self.n_regions)
            return labels, n_labels
        n = context.n_image
        if bool(((ids < -1) | (ids >= n)).any()):
            raise ValueError(f"instance ids must lie in -1..{n - 1} (-1: no instance)")
        return torch.where(ids < 0, n, ids), n + 1


@dataclass(frozen=True)
class ClusterSelector:
    """Choose the clustering stage's tokens (CSP Section 3.1) from all N image tokens."""

    mode: str
    cls_layer: int = -1

    def __call__(
        self, scores: torch.Tensor | None, live: torch.Tensor, count: int, context: SelectContext
    ) -> torch.Tensor:
        batch, n = live.shape
        if self.mode == "uniform":
            order = uniform_indices(n, count, live.device).expand(batch, count)
        elif self.mode == "random":
            noise = torch.rand(batch, n, generator=context.generator, device=live.device)
            order = noise.argsort(dim=1)[:, :count]
        elif self.mode == "cls":
            if context.vision is None:
                raise ValueError("cluster='cls' needs the vision tower's CLS attention (vision_layers)")
            attention = context.vision.cls_attention(self.cls_layer).gather(1, live)
            return TopK()(attention, live, count, context)
        else:
            raise ValueError(f"unknown cluster mode {self.mode!r}; valid: {list(CLUSTER_MODES)}")
        return live.gather(1, order).sort(dim=1).values


@register
@dataclass(frozen=True)
class CSPConfig(MethodConfig):
    """LVLM_CSP (clustering, scattering, pruning).

    Attributes:
        cluster_layers: Lc, the decoder layers that see only the clustering tokens (>= 0; 0 skips
            the clustering stage).
        cluster_tokens: Nc, image tokens in the clustering stage; None keeps all N.
        scatter_layers: Ls, layers in which every image token is live again (>= 1). Tokens not
            chosen for clustering re-enter at layer Lc with their input embeddings (Eq. 7) and
            their original position ids (Eq. 6).
        prune_tokens: Np, image tokens kept from layer Lc + Ls on, ranked by the attention row of
            the scoring token in layer Lc + Ls - 1 (Eq. 8); None keeps all N.
        cluster: how the clustering tokens are chosen: "seg_first" (per instance, in proportion to
            its area, at least one each, Eqs. 4-5), "uniform" (Eq. 2), "random", or "cls" (CLS
            attention of the vision tower's last layer, Eq. 3).
        score_token: "seg" ranks by the `[SEG]` token (the referring-segmentation forward is
            teacher-forced, so `[SEG]` is in the input; pass `seg_token_id` to `prune_`); "last"
            by the last token, for plain generation.
        seed: seeds the random choices of "random" and "seg_first" at every prefill.
        instance_regions: for "seg_first" with superpixel instances: the number of superpixel
            regions that stand in for instances.
        instances: where "seg_first" takes its instances: "auto" (masks given to prune_ or to
            segment/ground, else the model's own SAM in a SegModel, else superpixels for a plain
            LLaVA), "sam" (the SegModel's SAM, everything mode; an error without one), "superpixels",
            or "ground_truth" (the data's object masks, which the caller passes: the instance oracle).
    """

    name = "csp"
    label = "CSP"
    display_order = 3
    seg_free_fields: ClassVar[dict[str, Any]] = {"score_token": "last"}
    cluster_layers: int = 8
    cluster_tokens: int | None = 64
    scatter_layers: int = 6
    prune_tokens: int | None = 4
    cluster: str = "seg_first"
    score_token: str = "seg"
    seed: int = 0
    instance_regions: int = 10
    instances: str = "auto"

    def validate(self) -> None:
        self.check_int("cluster_layers", lo=0)
        if self.cluster_tokens is not None:
            self.check_int("cluster_tokens", lo=1)
        self.check_int("scatter_layers", lo=1)
        if self.prune_tokens is not None:
            self.check_int("prune_tokens", lo=1)
        self.check_choice("cluster", CLUSTER_MODES)
        self.check_choice("score_token", SCORE_TOKENS)
        self.check_int("seed", lo=0)
        self.check_int("instance_regions", lo=1)
        self.check_choice("instances", INSTANCE_CHOICES)

    def vision_layers(self) -> tuple[int, ...]:
        return (-1,) if self.cluster == "cls" else ()

    @property
    def instance_choice(self) -> str | None:
        """`instances` when a Seg-First stage runs, else None (`MethodConfig.instance_choice`)."""
        return self.instances if self.cluster_layers > 0 and self.cluster == "seg_first" else None

    @property
    def needs_pixels(self) -> bool:
        # Seg-First cuts superpixels, or hands the pixels to a detector.
        return self.instance_choice is not None

    @property
    def needs_seg_token(self) -> bool:
        return self.score_token == "seg"

    @property
    def ranks_by_last_token(self) -> bool:
        return self.score_token == "last"

    def scale_layers(self, from_layers: int, to_layers: int) -> CSPConfig:
        # Both boundaries move (the end of clustering and the end of scattering), keeping at least
        # one scattering layer and one pruning layer after them.
        cluster_end = scale_layer(self.cluster_layers, from_layers, to_layers)
        scatter_end = max(
            cluster_end + 1, scale_layer(self.cluster_layers + self.scatter_layers, from_layers, to_layers)
        )
        if scatter_end >= to_layers:
            raise ValueError(
                f"CSPConfig (Lc={self.cluster_layers}, Ls={self.scatter_layers}) maps to Lc + Ls = "
                f"{scatter_end}, which leaves no pruning stage in a {to_layers}-layer decoder"
            )
        return dataclasses.replace(self, cluster_layers=cluster_end, scatter_layers=scatter_end - cluster_end)

    @classmethod
    def variants(cls) -> dict[str, dict[str, Any]]:
        return {f"csp-{mode}": {"cluster": mode} for mode in CLUSTER_MODES}

    @classmethod
    def paper_fields(
        cls, reduction: float, n_layers: int, n_image: int, **options: Any
    ) -> dict[str, Any] | None:
        """Table 6's 7B-336 setting for `reduction`; None where it has no row (or N is not 576)."""
        row = next((row for r, row in TABLE6[PAPER_MODEL].items() if abs(r - reduction) < 1e-9), None)
        if row is None or n_image != flops.preset(PAPER_MODEL).image_tokens:
            return None
        return dict(
            zip(("cluster_layers", "cluster_tokens", "scatter_layers", "prune_tokens"), row, strict=True)
        )

    @classmethod
    def budget_fields(cls, reduction: float, n_layers: int, n_image: int) -> dict[str, Any]:
        """(Lc, Nc, Ls, Np) with N_avg on target and the layer split closest to Table 6's (7B-336) row
        for the nearest reduction, solving Nc or Np with the other scaled from that row."""
        if n_layers < 3:
            raise ValueError(f"csp needs at least 3 decoder layers (three stages), got {n_layers}")
        table = TABLE6[PAPER_MODEL]
        row = table[min(table, key=lambda r: abs(r - reduction))]
        ref_dims = flops.preset(PAPER_MODEL)
        lc_f, ls_f = row[0] / ref_dims.num_layers, row[2] / ref_dims.num_layers

        def count(x: float) -> int:
            return min(n_image, max(1, round_half_up(x)))

        nc_ref = count(row[1] / ref_dims.image_tokens * n_image)
        np_ref = count(row[3] / ref_dims.image_tokens * n_image)
        target = (1 - reduction) * n_image * n_layers  # live tokens summed over layers
        best: tuple | None = None
        for lc in range(1, n_layers - 1):
            for ls in range(1, n_layers - lc):
                lp = n_layers - lc - ls
                rest = target - ls * n_image
                for nc, np_ in (
                    (nc_ref, count((rest - lc * nc_ref) / lp)),
                    (count((rest - lp * np_ref) / lc), np_ref),
                ):
                    error = abs(lc * nc + ls * n_image + lp * np_ - target) / (n_image * n_layers)
                    shape = abs(lc / n_layers - lc_f) + abs(ls / n_layers - ls_f)
                    key = (0.0 if error <= EXACT else error, shape, error)
                    if best is None or key < best[0]:
                        best = (key, lc, nc, ls, np_)
        _, lc, nc, ls, np_ = best
        return {"cluster_layers": lc, "cluster_tokens": nc, "scatter_layers": ls, "prune_tokens": np_}

    def _count(self, field: str, n_image: int) -> int:
        value = getattr(self, field)
        if value is None:
            return n_image
        if value > n_image:
            raise ValueError(
                f"CSPConfig.{field}={value} exceeds the {n_image} image tokens; "
                f"valid: 1 <= value <= {n_image}"
            )
        return value

    def plan(self, n_image: int, n_layers: int) -> TokenPlan:
        prune_layer = self.cluster_layers + self.scatter_layers
        if prune_layer >= n_layers:
            raise ValueError(
                f"CSPConfig.cluster_layers + scatter_layers = {prune_layer} leaves no pruning stage in a "
                f"{n_layers}-layer decoder; valid: cluster_layers + scatter_layers <= {n_layers - 1}"
            )
        steps: list[Keep | Reactivate] = []
        if self.cluster_layers:
            steps.append(Keep(0, self._count("cluster_tokens", n_image), self._cluster_selector()))
            steps.append(Reactivate(self.cluster_layers))
        score = AttentionScore(prune_layer - 1, self.score_token)
        steps.append(Keep(prune_layer, self._count("prune_tokens", n_image), TopK(), score))
        return TokenPlan(n_image, n_layers, tuple(steps))

    def _cluster_selector(self):
        if self.cluster == "seg_first":
            return SegFirstSelector(self.instance_regions, self.instances)
        return ClusterSelector(self.cluster)

    @classmethod
    def keep_all(cls) -> CSPConfig:
        return cls(
            cluster_layers=1,
            cluster_tokens=None,
            scatter_layers=1,
            prune_tokens=None,
            cluster="uniform",
            score_token="last",
        )

    @classmethod
    def preset(cls, model: str, reduction: float, **overrides) -> CSPConfig:
        """Return the CSP paper's Table 6 setting for `model` at image-token `reduction` (e.g. 0.75).

        `overrides` set the other fields (cluster mode, score token, seed).
        """
        if model not in TABLE6:
            raise ValueError(f"no Table 6 preset for model {model!r}; valid: {sorted(TABLE6)}")
        settings = TABLE6[model]
        match = [r for r in settings if abs(r - reduction) < 1e-6]
        if not match:
            raise ValueError(f"no Table 6 preset for reduction={reduction!r}; valid: {sorted(settings)}")
        lc, nc, ls, np_ = settings[match[0]]
        return cls(cluster_layers=lc, cluster_tokens=nc, scatter_layers=ls, prune_tokens=np_, **overrides)
