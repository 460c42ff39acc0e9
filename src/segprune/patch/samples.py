"""Per-sample layout of a prefill whose samples differ: *masked slots*.

The plan runner (`segprune.patch.runner`) keeps a batch rectangular. When its samples differ (different
numbers of image tokens N_b, a prompt with other than one image, or a step that decides its own count,
`Keep.adaptive`), each sample is laid out on its own (`layout_samples`): it gets the plan for its own
N_b, and each of its images a `SelectContext` as if that image ran alone (`part_context`). Selection
steps then run one sample at a time (`apply_per_sample`, `select_sample`), and a sample left with fewer
live tokens than the widest fills the rest of its row with *masked slots*: sequence index `SLOT`
(`segprune.patch.state`), which sorts after every real token, points at one spare hidden row, is never a
valid key and is seen by no query, so each sample computes what it would alone (docs/design.md).
`PruneStats.image_counts` and `-1` entries in `kept_indices` report such a layout.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from segprune.families import take
from segprune.methods.allocate import allocate, ddc_weights
from segprune.methods.plan import Keep, SelectContext, TokenPlan
from segprune.patch.state import ImagePart, SampleLayout

if TYPE_CHECKING:
    from segprune.patch.runner import PlanRunner

__all__ = ["apply_per_sample", "assign_images", "layout_samples", "part_context", "select_sample"]


def layout_samples(
    runner: PlanRunner, counts: list[int], plan: TokenPlan, raw: Any, device: torch.device
) -> list[SampleLayout] | None:
    """Lay out each sample on its own when the samples differ, else return None (one batched path).

    Samples differ when they hold different numbers of image tokens, when a prompt holds other
    than one image, or when a step decides its own count (`Keep.adaptive`). Each sample gets
    the plan for its own N_b, and its images (in batch order, `Family.image_grids`) a context
    with their own grid and pixels.
    """
    family, batch = runner.family, len(counts)
    grids = family.image_grids(raw) if raw is not None else None
    if len(set(counts)) == 1 and not plan.adaptive and (grids is None or len(grids) == batch):
        return None
    plans = {
        n: plan if n == plan.n_image else runner.config.plan(n, runner.n_layers) for n in set(counts) if n
    }
    for other in plans.values():
        check_same_steps(plan, other)
    images = assign_images(counts, grids) if grids is not None else [[] for _ in counts]
    split = runner.config.needs_pixels
    vision_rows: dict = {}  # this prefill's, shared by its images' contexts
    out = []
    for b, n in enumerate(counts):
        sample = SampleLayout(n, plans.get(n))
        if not n:
            out.append(sample)
            continue
        several = len(images[b]) > 1
        if several and (runner.vision is not None or runner.config.needs_vision_cls):
            raise ValueError(
                f"sample {b} holds {len(images[b])} images; methods that read the vision tower's CLS "
                "row (or merge its features) need one image per sample"
            )
        if not images[b] or (several and not split):  # one image set, no one grid
            sample.parts.append(ImagePart(0, part_context(runner, n, None, None, raw, device, vision_rows)))
        else:
            for image, grid, offset in images[b]:
                context = part_context(runner, grid[0] * grid[1], image, grid, raw, device, vision_rows)
                sample.parts.append(ImagePart(offset, context, image))
        out.append(sample)
    return out


def check_same_steps(plan: TokenPlan, other: TokenPlan) -> None:
    def shape(p: TokenPlan) -> list[tuple]:
        return [(type(s).__name__, s.layer, getattr(s, "score", None)) for s in p.steps]

    if shape(plan) != shape(other) or plan.renumber != other.renumber:
        raise ValueError(
            f"the method's plans for {plan.n_image} and {other.n_image} image tokens have different "
            "steps, so samples of those sizes cannot share a batch; batch them apart"
        )


def assign_images(counts: list[int], grids: list[tuple[int, int]]) -> list[list[tuple]]:
    """Give each sample its images, in batch order, as `(image, grid, first token)`; check the counts."""
    out, image = [], 0
    for b, n in enumerate(counts):
        mine, found = [], 0
        while found < n and image < len(grids):
            mine.append((image, grids[image], found))
            found += grids[image][0] * grids[image][1]
            image += 1
        if found != n:
            raise ValueError(
                f"sample {b} holds {n} image tokens but its images' grids cover {found}; the vision "
                f"tower saw {len(grids)} images for {len(counts)} samples (no beam search or "
                "num_return_sequences > 1)"
            )
        out.append(mine)
    if image != len(grids):
        raise ValueError(
            f"the vision tower saw {len(grids)} images but the prompts' image tokens cover {image}; "
            "segprune needs every image's tokens in the prompt (no beam search, num_return_sequences 1)"
        )
    return out


def detected_ids(detector, pixel_values, grid, rows: int, n_image: int, device, part: bool) -> torch.Tensor:
    """The `(rows, N)` instance ids `detector` (`prune_`'s `instance_masks=`) gives, on `device`,
    or a ValueError naming the shape it returned instead (`part`: one image of one sample)."""
    ids = detector(pixel_values, grid).to(device)
    if ids.shape != (rows, n_image):
        what, shape = (" for one image", "(1, N)") if part else ("", "(batch, N)")
        raise ValueError(
            f"instance_masks returned shape {tuple(ids.shape)}{what}; expected {shape} = {(rows, n_image)}"
        )
    return ids


def seeded_generator(config: Any, device: torch.device) -> torch.Generator:
    """A generator on `device` seeded with the method's `seed` (0 without one), for random selectors."""
    generator = torch.Generator(device=device)
    generator.manual_seed(int(getattr(config, "seed", 0)))
    return generator


def part_context(runner: PlanRunner, n_image, image, grid, raw, device, vision_rows: dict) -> SelectContext:
    """The `SelectContext` of one part of one sample, as if that sample ran alone (batch 1).

    `vision_rows`: the prefill's cache of the vision tower's rows, shared by its images' contexts."""
    pixel_values = runner.family.image_pixels(raw, image) if image is not None else None
    instance_masks = None
    if runner.instance_masks is not None and pixel_values is not None:
        instance_masks = detected_ids(
            runner.instance_masks, pixel_values, grid, 1, n_image, device, part=True
        )
    vision = None
    if runner.vision is not None and image is not None:
        vision = _ImageRows(runner.vision, image, vision_rows)
    return SelectContext(
        n_image=n_image,
        grid=grid,
        pixel_values=pixel_values,
        generator=seeded_generator(runner.config, device),
        vision=vision,
        instance_masks=instance_masks,
    )


def apply_per_sample(runner: PlanRunner, i, samples, scores, live_img, live_n, live_seq, image_seq, hidden):
    """Apply step `i` one sample at a time: `(new live_img in masked slots, live counts, merged)`."""
    batch, pad = live_img.shape[0], image_seq.shape[1] - 1  # pad: the SLOT column
    step_of = [s.plan.steps[i] if s.plan else None for s in samples]
    first = next(s for s in step_of if s is not None)
    image_hidden = None
    if isinstance(first, Keep) and first.merge is not None and first.merge_space == "llm":
        rows = torch.searchsorted(live_seq, image_seq.gather(1, live_img)).clamp(max=live_seq.shape[1] - 1)
        image_hidden = take(hidden, rows)
    features, runner._projector_input = runner._projector_input, None  # before any projection
    kept, merged = [], []
    for b, (sample, step) in enumerate(zip(samples, step_of, strict=True)):
        n = live_n[b]
        if step is None or not n:
            kept.append(live_img.new_empty(0))
            merged.append(None)
        elif not isinstance(step, Keep):  # Reactivate
            kept.append(torch.arange(sample.n_image, device=live_img.device))
            merged.append(None)
        else:
            live = live_img[b : b + 1, :n]
            rows = image_hidden[b : b + 1, :n] if image_hidden is not None else None
            new, m = select_sample(
                runner,
                step,
                scores[b : b + 1, :n] if scores is not None else None,
                live,
                sample,
                rows,
                features,
                index=b,
            )
            kept.append(new[0])
            merged.append(None if m is None else m[0])
    live_n = [k.shape[0] for k in kept]
    new_img = live_img.new_full((batch, max(live_n)), pad)
    out = None
    if any(m is not None for m in merged):
        out = hidden.new_zeros(batch, max(live_n), hidden.shape[-1])
    for b, k in enumerate(kept):
        new_img[b, : k.shape[0]] = k
        if merged[b] is not None:
            out[b, : k.shape[0]] = merged[b].to(out.dtype)
    return new_img, live_n, out


def select_sample(
    runner: PlanRunner, step: Keep, scores, live, sample: SampleLayout, rows, features, index: int = 0
):
    """Run `step` on sample `index` of the batch: `((1, c) kept, (1, c, D) merged or None)`.

    A sample in several parts (images a method reads one by one) splits its budget over them in
    proportion to their live tokens, by largest remainder, every part >= 1 where the budget allows."""
    n = live.shape[1]
    if step.count > n and not step.adaptive:
        raise ValueError(
            f"a step keeps {step.count} image tokens of a sample with {n} live; valid: count <= {n}"
        )
    count = min(step.count, n)
    parts = sample.parts
    if len(parts) > 1:
        if step.adaptive or step.merge is not None:
            raise ValueError(
                f"sample {index} holds {len(parts)} images; steps that choose their own count or merge "
                "need one image per sample"
            )
        part_of = torch.bucketize(
            live[0], torch.tensor([p.offset for p in parts[1:]], device=live.device), right=True
        )
        sizes = torch.bincount(part_of, minlength=len(parts))[None]
        quotas = allocate(ddc_weights(sizes), sizes, count)[0].tolist()
        kept = []
        for k, (part, quota) in enumerate(zip(parts, quotas, strict=True)):
            if quota:
                mine = part_of == k
                sub = live[:, mine] - part.offset
                sub_scores = scores[:, mine] if scores is not None else None
                kept.append(checked(step, sub_scores, sub, quota, part.context) + part.offset)
        return torch.cat(kept, dim=1).sort(dim=1).values, None
    part = parts[0]
    new = checked(step, scores, live, count, part.context)
    merged = None
    if step.merge is not None and step.merge_space == "vision":
        mine = features[part.image : part.image + 1] if features is not None else None
        merged = runner._merge_vision(step, live, new, part.context, mine)
    elif step.merge is not None:
        merged = step.merge(rows, live, new, part.context)
    return new, merged


def checked(step: Keep, scores, live, count: int, context) -> torch.Tensor:
    new = step.select(scores, live, count, context)
    got = new.shape[1] if new.dim() == 2 and new.shape[0] == 1 else None
    if got is None or not (1 <= got <= count if step.adaptive else got == count):
        valid = f"1 <= c <= {count}" if step.adaptive else f"c == {count}"
        raise ValueError(
            f"a selector returned shape {tuple(new.shape)} for one sample; expected (1, c), {valid}"
        )
    return new


class _ImageRows:
    """One image's rows of the vision tower's CLS attention and keys (`VisionFeatures`, batch 1).

    Every image of a prefill shares `cache`, so the tower's rows are recomputed once per layer."""

    def __init__(self, vision: Any, image: int, cache: dict) -> None:
        self.vision, self.image, self.cache = vision, image, cache

    def _rows(self, kind: str, layer: int) -> torch.Tensor:
        if (kind, layer) not in self.cache:
            self.cache[kind, layer] = getattr(self.vision, kind)(layer)
        return self.cache[kind, layer][self.image : self.image + 1]

    def cls_attention(self, layer: int) -> torch.Tensor:
        return self._rows("cls_attention", layer)

    def keys(self, layer: int) -> torch.Tensor:
        return self._rows("keys", layer)
