"""Rasterise the shape kinds to exact boolean masks and paint backgrounds, in numpy only.

A pixel belongs to a shape when its centre (x + 0.5, y + 0.5) lies inside the outline, so the mask
and the painted pixels are the same set; there is no anti-aliasing to blur that. Every outline fits
in the unit circle, so a shape drawn with radius r at (cx, cy) stays inside the disc of radius r.
"""

from __future__ import annotations

import math

import numpy as np

RING_INNER = 0.55  # inner radius of a ring, as a fraction of the outer one
CROSS_ARM = 0.3  # half-width of a cross's arms
CROSS_REACH = 0.95  # half-length of the arms: the corners (0.95, 0.3) stay inside the unit circle
STAR_INNER = math.cos(2 * math.pi / 5) / math.cos(math.pi / 5)  # a regular pentagram's notches


def _vertices(radii: list[float], start: float) -> np.ndarray:
    """Return (n, 2) vertices evenly spaced in angle from `start`, in clockwise order on screen (y down)."""
    angles = start + 2 * math.pi * np.arange(len(radii)) / len(radii)
    return np.stack([np.cos(angles), np.sin(angles)], axis=1) * np.asarray(radii)[:, None]


_UP = -math.pi / 2  # y points down, so this angle points up
_ARM = [
    (CROSS_REACH, CROSS_ARM),
    (-CROSS_REACH, CROSS_ARM),
    (-CROSS_REACH, -CROSS_ARM),
    (CROSS_REACH, -CROSS_ARM),
]
# Every outline as convex polygons (circle and ring are tested analytically): a cross is two
# rectangles, a star is given by its outline here but drawn from its five lines (see rasterise).
_POLYGONS = {
    "square": [_vertices([1.0] * 4, math.pi / 4)],
    "triangle": [_vertices([1.0] * 3, _UP)],
    "hexagon": [_vertices([1.0] * 6, 0.0)],
    "diamond": [_vertices([1.0, 0.62, 1.0, 0.62], _UP)],
    "cross": [np.asarray(_ARM), np.asarray(_ARM)[:, ::-1][::-1].copy()],
    "star": [_vertices([1.0, STAR_INNER] * 5, _UP)],
}


def unit_area(kind: str) -> float:
    """Return the area of `kind` drawn with radius 1."""
    if kind == "circle":
        return math.pi
    if kind == "ring":
        return math.pi * (1 - RING_INNER**2)
    if kind == "cross":
        return 2 * (2 * CROSS_REACH) * (2 * CROSS_ARM) - (2 * CROSS_ARM) ** 2
    (pts,) = _POLYGONS[kind]
    x, y = pts[:, 0], pts[:, 1]
    return 0.5 * abs(float(np.sum(x * np.roll(y, -1) - np.roll(x, -1) * y)))


def _inner_side(x: np.ndarray, y: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Return where points lie on the clockwise-inner side of the line a -> b (x a row, y a column).

    The test (b - a) x (p - a) >= 0 splits into a column term and a row term, so it costs a single
    broadcast comparison over the window. Constants are Python floats to keep the arrays float32.
    """
    dx, dy = float(b[0] - a[0]), float(b[1] - a[1])
    return dx * y - float(dx * a[1]) >= dy * x - float(dy * a[0])


def rasterise(
    kind: str, center: tuple[float, float], radius: float, angle: float, size: tuple[int, int]
) -> tuple[np.ndarray, tuple[int, int]]:
    """Return the mask of one shape inside its bounding window and the window's (top, left) corner.

    `angle` rotates the shape clockwise on screen (radians); the window is clipped to the image.
    """
    cx, cy = center
    height, width = size
    top, left = max(int(cy - radius) - 1, 0), max(int(cx - radius) - 1, 0)
    bottom, right = min(int(cy + radius) + 2, height), min(int(cx + radius) + 2, width)
    y = ((np.arange(top, bottom, dtype=np.float32) + 0.5 - cy) / radius)[:, None]
    x = ((np.arange(left, right, dtype=np.float32) + 0.5 - cx) / radius)[None, :]
    if kind in ("circle", "ring"):
        r2 = x * x + y * y
        return ((r2 <= 1) & (r2 >= RING_INNER**2) if kind == "ring" else r2 <= 1), (top, left)
    c, s = math.cos(angle), math.sin(angle)
    rotation = np.array([[c, s], [-s, c]])  # row vectors times this turn clockwise on screen
    if kind == "star":
        # A filled pentagram is where a point is inside at least four of the five lines joining
        # every second tip (the centre pentagon is inside all five, a tip inside exactly four).
        tips = _POLYGONS["star"][0][::2] @ rotation
        inside = sum(_inner_side(x, y, tips[j], tips[(j + 2) % 5]).astype(np.uint8) for j in range(5))
        return inside >= 4, (top, left)
    inside = np.zeros((bottom - top, right - left), dtype=bool)
    for polygon in _POLYGONS[kind]:
        pts = polygon @ rotation
        part = np.ones_like(inside)
        for j in range(len(pts)):
            part &= _inner_side(x, y, pts[j], pts[(j + 1) % len(pts)])
        inside |= part
    return inside, (top, left)


def _muted_colour(rng: np.random.Generator) -> np.ndarray:
    """Draw a low-saturation colour (grey with a slight tint) that no object colour can be mistaken for."""
    return rng.uniform(70, 190) + rng.uniform(-18, 18, size=3)


def _upsample(grid: np.ndarray, height: int, width: int) -> np.ndarray:
    """Bilinearly resize a (g, g, C) grid to (height, width, C) with two small interpolation matrices."""

    def weights(n_out: int, n_in: int) -> np.ndarray:
        pos = np.linspace(0, n_in - 1, n_out)
        lo = np.minimum(np.floor(pos).astype(int), n_in - 2)
        w = np.zeros((n_out, n_in))
        w[np.arange(n_out), lo] = 1 - (pos - lo)
        w[np.arange(n_out), lo + 1] = pos - lo
        return w

    g, _, channels = grid.shape
    rows = weights(height, g) @ grid.reshape(g, g * channels)  # (height, g * C)
    out = rows.reshape(height, g, channels).transpose(0, 2, 1) @ weights(width, g).T  # (height, C, width)
    return out.transpose(0, 2, 1)


def background(rng: np.random.Generator, size: tuple[int, int]) -> tuple[np.ndarray, str]:
    """Paint a muted background as float32 (H, W, 3): a gradient, stripes or smooth noise; return its kind."""
    height, width = size
    kind = ("gradient", "stripes", "noise")[int(rng.integers(3))]
    a, b = _muted_colour(rng).astype(np.float32), _muted_colour(rng).astype(np.float32)
    theta = rng.uniform(0, 2 * math.pi)
    scale = 1 / max(height, width)
    # Position along a random direction, in [-1.5, 1.5]; a (H, 1) + (1, W) broadcast, no coordinate grid.
    along = (np.arange(height, dtype=np.float32) * np.float32(math.sin(theta) * scale))[:, None] + (
        np.arange(width, dtype=np.float32) * np.float32(math.cos(theta) * scale)
    )[None, :]
    if kind == "gradient":
        t = np.clip(along * np.float32(0.7) + np.float32(0.5), 0, 1)
    elif kind == "stripes":
        t = np.sin(along * np.float32(2 * math.pi / rng.uniform(0.04, 0.12)))
        # Hard-edged stripes half of the time, soft ones otherwise.
        t = (t > 0).astype(np.float32) if rng.random() < 0.5 else np.float32(0.5) * t + np.float32(0.5)
    else:
        g = int(rng.integers(3, 8))
        # Smooth blotches of grey with a slight tint, as muted as the other backgrounds.
        grid = rng.uniform(70, 190, size=(g, g, 1)) + rng.uniform(-18, 18, size=(g, g, 3))
        return _upsample(grid, height, width).astype(np.float32), kind
    return a + (b - a) * t[..., None], kind


def paint(
    canvas: np.ndarray,
    inside: np.ndarray,
    corner: tuple[int, int],
    rgb: tuple[int, int, int],
    rng: np.random.Generator,
) -> None:
    """Fill a shape's pixels on `canvas` in place with its colour, jittered and lightly shaded."""
    top, left = corner
    h, w = inside.shape
    colour = np.asarray(rgb, dtype=np.float32) + rng.uniform(-12, 12, size=3).astype(np.float32)
    # A faint linear shading across the shape, so a colour is not one constant value.
    shade = np.linspace(-1, 1, max(h, w), dtype=np.float32) * np.float32(rng.uniform(0, 14))
    ramp = shade[:h, None] if rng.random() < 0.5 else shade[None, :w]
    shaded = np.broadcast_to(colour + ramp[..., None], (h, w, 3))
    np.copyto(canvas[top : top + h, left : left + w], shaded, where=inside[..., None])


def finish(canvas: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Add uniform pixel noise of a random strength to a float canvas and round it to uint8."""
    amplitude = rng.uniform(3, 12)
    # Uniform noise from raw bytes: several times cheaper than Gaussian draws, and as good a nuisance.
    noise = np.frombuffer(rng.bytes(canvas.size), dtype=np.uint8).reshape(canvas.shape)
    canvas += noise.astype(np.float32) * np.float32(2 * amplitude / 255)
    canvas += np.float32(0.5 - amplitude)  # centre the noise; +0.5 makes the cast below round
    np.clip(canvas, 0, 255, out=canvas)
    return canvas.astype(np.uint8)
