"""Pictures of kept tokens and regions."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from segprune.pixels import CLIP_MEAN, CLIP_STD
from segprune.viz import BOUNDARY, DIM, draw_kept, draw_regions, to_uint8

PIL = pytest.importorskip("PIL")


def image_4x4() -> np.ndarray:
    """A 48 x 48 uint8 image on a 4 x 4 grid of 12-px patches, each patch one grey level."""
    levels = (np.arange(16) * 12 + 60).reshape(4, 4).astype(np.uint8)
    return np.repeat(np.repeat(levels, 12, axis=0), 12, axis=1)[..., None].repeat(3, axis=2)


def patch_centre(picture, row: int, col: int, patch: int) -> np.ndarray:
    return np.asarray(picture)[int((row + 0.5) * patch), int((col + 0.5) * patch)]


def test_dropped_patches_are_dimmed_and_kept_ones_untouched():
    image = image_4x4()
    kept = torch.tensor([0, 5, 15])
    picture = draw_kept(image, (4, 4), kept)
    assert picture.size == (336, 336)  # enlarged 7x to the minimum side
    for index in range(16):
        row, col = divmod(index, 4)
        original = image[row * 12, col * 12]
        expected = original if index in kept.tolist() else np.round(original * DIM)
        assert np.array_equal(patch_centre(picture, row, col, 84), expected.astype(np.uint8))


def test_boundaries_run_between_regions_only_and_quotas_are_written():
    image = np.full((48, 48, 3), 128, dtype=np.uint8)
    labels = torch.tensor([0, 0, 1, 1] * 4)  # left half region 0, right half region 1
    kept = torch.arange(16)
    plain = np.asarray(draw_regions(image, labels, (4, 4), kept))
    # The boundary is the vertical line at x = 168 (between patch columns 1 and 2), nowhere else.
    assert tuple(plain[100, 168]) == BOUNDARY
    boundary = np.all(plain == BOUNDARY, axis=-1)
    assert boundary[:, 150:186].all(axis=0).any()
    assert not boundary[:, :150].any() and not boundary[:, 186:].any()
    # Quotas are written inside their regions: the picture changes there and only there.
    written = np.asarray(draw_regions(image, labels, (4, 4), kept, quotas=torch.tensor([3, 9])))
    changed = np.any(written != plain, axis=-1)
    assert changed[:, :168].any() and changed[:, 168:].any()
    ys, _ = np.nonzero(changed)
    assert ys.min() > 84 and ys.max() < 252  # near the regions' centres, not at the edges


def test_pixel_tensors_are_de_normalised():
    image = image_4x4()
    pixels = torch.from_numpy(image).permute(2, 0, 1).float() / 255
    normalised = (pixels - torch.tensor(CLIP_MEAN)[:, None, None]) / torch.tensor(CLIP_STD)[:, None, None]
    assert np.array_equal(to_uint8(normalised), image)
    assert np.array_equal(to_uint8(normalised[None]), image)
    assert np.array_equal(to_uint8(image / 255.0), image)
    kept = torch.arange(16)
    assert np.array_equal(
        np.asarray(draw_kept(normalised, (4, 4), kept)), np.asarray(draw_kept(image, (4, 4), kept))
    )


def test_saves_a_png(tmp_path):
    path = tmp_path / "kept.png"
    draw_regions(image_4x4(), torch.arange(16) // 8, (4, 4), torch.tensor([1, 9]), torch.tensor([1, 1]), path)
    from PIL import Image

    with Image.open(path) as saved:
        assert saved.format == "PNG" and saved.size == (336, 336)


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match="does not divide"):
        draw_kept(np.zeros((50, 48, 3), dtype=np.uint8), (4, 4), torch.tensor([0]))
    with pytest.raises(ValueError, match="give labels too"):
        draw_regions(image_4x4(), None, (4, 4), torch.tensor([0]), quotas=torch.tensor([1]))
    with pytest.raises(ValueError, match=r"\(H, W, 3\)"):
        to_uint8(np.zeros((4, 4)))
