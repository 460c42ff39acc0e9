"""Map a method config's decoder-layer fields from one depth to another (a 32-layer paper setting to the
8-layer tiny model).

Every layer field moves proportionally: FastV's and ALTP's drop layer K, PyramidDrop's stage layers,
and CSP's two boundaries, the end of clustering (Lc) and the end of scattering (Lc + Ls), each become
`round(layer * to / from)` (halves up, at least 1 where the layer was at least 1). So K = 2 becomes
K = 1 on 8 layers, PyramidDrop (8, 16, 24) becomes (2, 4, 6), and CSP's 7B-336 Table 6 settings
(Lc, Ls) = (7, 7) and (11, 3) become (2, 2) and (3, 1). Token counts are not touched, so each layer
of the shallow model holds what the same relative depth of the deep one holds, and the evaluation's
7B-equivalent cost (`segprune.eval.cost.scale_schedule`, the inverse map) stays close to the paper
setting's. Methods that prune before the decoder (VisionZip, PruMerge) have no decoder layers to map.
Each config knows its own layer fields (`MethodConfig.scale_layers`); this module holds the rule.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from segprune.methods.counts import round_half_up

if TYPE_CHECKING:
    from segprune.methods.base import MethodConfig

PAPER_LAYERS = 32  # LLaVA-1.5-7B's decoder, on which the papers set their layers and budgets
PAPER_MODEL = "llava-1.5-7b-336"  # the preset (`segprune.flops.preset`) of CSP Table 6 and ALTP Table 1


def scale_layer(layer: int, from_layers: int, to_layers: int) -> int:
    """Return layer index `layer` of a `from_layers`-deep decoder mapped to a `to_layers`-deep one."""
    if layer == 0:
        return 0
    return max(1, round_half_up(layer * to_layers / from_layers))


def scale_layers(config: MethodConfig, from_layers: int = PAPER_LAYERS, to_layers: int = 8) -> MethodConfig:
    """Return `config` with its decoder-layer fields mapped from `from_layers` to `to_layers` layers.

    Raises `ValueError` when the mapped layers collide (two PyramidDrop stages on one layer) or no
    longer fit the shallower decoder, and for a method whose layer fields are not declared.
    """
    if from_layers < 1 or to_layers < 1:
        raise ValueError(
            f"from_layers={from_layers} and to_layers={to_layers} are out of range; valid: both >= 1"
        )
    return config.scale_layers(from_layers, to_layers)
