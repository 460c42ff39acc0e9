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
"""

from __future__ import annotations

import dataclasses

from segprune.methods.base import MethodConfig
from segprune.methods.fastv import round_half_up

BEFORE_DECODER = ("visionzip", "prumerge")
DROP_LAYER = ("fastv", "altp")  # one field, `layer`


def scale_layer(layer: int, from_layers: int, to_layers: int) -> int:
    """Return layer index `layer` of a `from_layers`-deep decoder mapped to a `to_layers`-deep one."""
    if layer == 0:
        return 0
    return max(1, round_half_up(layer * to_layers / from_layers))


def scale_layers(config: MethodConfig, from_layers: int = 32, to_layers: int = 8) -> MethodConfig:
    """Return `config` with its decoder-layer fields mapped from `from_layers` to `to_layers` layers.

    Raises `ValueError` when the mapped layers collide (two PyramidDrop stages on one layer) or no
    longer fit the shallower decoder, and for a method whose layer fields this helper does not know.
    """
    if from_layers < 1 or to_layers < 1:
        raise ValueError(f"from_layers={from_layers} and to_layers={to_layers} must be >= 1")
    name = config.name

    def scale(layer: int) -> int:
        return scale_layer(layer, from_layers, to_layers)

    if name in BEFORE_DECODER:
        return config
    if name in DROP_LAYER:
        layer = scale(config.layer)
        if layer >= to_layers:
            raise ValueError(
                f"{type(config).__name__}.layer={layer} does not fit a {to_layers}-layer decoder"
            )
        return dataclasses.replace(config, layer=layer)
    if name == "pdrop":
        layers = tuple(scale(layer) for layer in config.layers)
        if len(set(layers)) != len(layers) or layers[-1] >= to_layers:
            raise ValueError(
                f"PDropConfig.layers={config.layers} map to {layers} on {to_layers} layers: stages collide "
                "or do not fit; choose the stages by hand"
            )
        return dataclasses.replace(config, layers=layers)
    if name == "csp":
        cluster_end = scale(config.cluster_layers)
        scatter_end = max(cluster_end + 1, scale(config.cluster_layers + config.scatter_layers))
        if scatter_end >= to_layers:
            raise ValueError(
                f"CSPConfig (Lc={config.cluster_layers}, Ls={config.scatter_layers}) maps to Lc + Ls = "
                f"{scatter_end}, which leaves no pruning stage in a {to_layers}-layer decoder"
            )
        return dataclasses.replace(
            config, cluster_layers=cluster_end, scatter_layers=scatter_end - cluster_end
        )
    raise ValueError(f"scale_layers does not know the decoder-layer fields of method {name!r}")
