"""`segprune train-tiny`: train the tiny model on shapes, reproducibly, with checkpoints that resume exactly.

Reproducibility: the model is initialised from `seed`; the batch of step s is generated from numpy
generators seeded with (seed, s, row), so it does not depend on what ran before (a resumed run, or
data-loader workers, see the same batches); the learning rate is a function of the step. A
checkpoint holds the model, the auxiliary heads, the optimizer, the RNG states and the step, so a
run stopped at step k and resumed reaches the same weights as one that never stopped.

Output directory:
    checkpoint.pt   the latest checkpoint (written every `checkpoint_every` steps and at the end)
    model/          the model (`SegModel.save_pretrained`, `save_dtype`), loadable by `models.tiny(path)`
    log.jsonl       one line per logged step and per validation
"""

from __future__ import annotations

import dataclasses
import json
import os
import random
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from segprune.checks import check_device, check_int, one_line
from segprune.data.shapes import generate_scene
from segprune.eval.records import read_records
from segprune.models.load import quiet_transformers
from segprune.models.tiny import TinyDims, build_tiny
from segprune.outdir import check_out_dir, contents, locked
from segprune.train.config import SAME_ON_RESUME, TrainConfig, learning_rate
from segprune.train.evaluate import VAL_SEED, evaluate_refseg, validation_set
from segprune.train.objective import WEIGHTS, AuxHeads, check_loss_weights, check_sam_from, compute_losses
from segprune.train.samples import TaskMix, collate, make_sample

CHECKPOINT, LOG, MODEL = "checkpoint.pt", "log.jsonl", "model"


class StepBatches(torch.utils.data.Dataset):
    """Item s is the collated batch of step s, drawn from generators seeded with (seed, s, row)."""

    def __init__(self, config: TrainConfig, model_config: Any, tokenizer: Any) -> None:
        self.config, self.model_config, self.tokenizer = config, model_config, tokenizer
        self.mix = TaskMix.from_dict(config.mix)

    def __len__(self) -> int:
        return self.config.steps

    def __getitem__(self, step: int) -> dict[str, Any]:
        samples = []
        for row in range(self.config.batch_size):
            scene = generate_scene(np.random.default_rng([self.config.seed, step, row]))
            rng = np.random.default_rng([self.config.seed, step, row, 1])
            samples.append(make_sample(scene, rng, self.tokenizer, self.model_config, self.mix))
        return collate(samples, self.tokenizer.pad_token_id)


def _to(batch: Any, device: torch.device) -> Any:
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, dict):
        return {k: _to(v, device) for k, v in batch.items()}
    return batch


def _rng_state() -> dict[str, Any]:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _save_checkpoint(
    path: Path, step: int, model, heads, optimizer, config: TrainConfig, minutes: float
) -> None:
    state = {
        "step": step,
        "minutes": minutes,  # training time so far, summed over resumed runs (`schedule="time"`)
        "model": model.state_dict(),
        "heads": heads.state_dict(),
        "optimizer": optimizer.state_dict(),
        "rng": _rng_state(),
        "config": dataclasses.asdict(config),
    }
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)  # a run killed mid-write leaves the previous checkpoint intact


def _check_resumable(saved: dict[str, Any], config: TrainConfig) -> None:
    current = dataclasses.asdict(config)
    changed = [k for k in SAME_ON_RESUME if saved.get(k) != current[k]]
    if changed:
        detail = ", ".join(f"{k}: {saved.get(k)!r} -> {current[k]!r}" for k in changed)
        raise ValueError(f"cannot resume: the checkpoint was trained with other settings ({detail})")


def save_model(model: Any, path: Path, dtype: str) -> None:
    """Save `model` with its tokenizer in `dtype` (the training copy is left untouched)."""
    state = {
        k: v.to(getattr(torch, dtype)) if v.is_floating_point() else v for k, v in model.state_dict().items()
    }
    with quiet_transformers():  # a few megabytes: a "Writing model shards" bar would only be noise
        model.save_pretrained(path, state_dict=state)


def _check_dims(dims: dict[str, Any]) -> TinyDims:
    """Return the `TinyDims` of `--dims` overrides if a model can be built with them, else raise."""
    built = TinyDims.from_dict(dims)
    for f in dataclasses.fields(TinyDims):
        check_int(f"TinyDims.{f.name}", getattr(built, f.name), 1)
    for whole, part in (
        ("image_size", "patch_size"),
        ("sam_image_size", "sam_patch_size"),
        ("vision_width", "vision_heads"),
        ("llm_width", "llm_heads"),
    ):
        if getattr(built, whole) % getattr(built, part):
            raise ValueError(
                f"TinyDims.{whole}={getattr(built, whole)} is not a multiple of {part}={getattr(built, part)}"
            )
    return built


def _load_init(model: Any, init: str) -> None:
    """Copy the weights of the saved tiny model `init` ("bundled" or a directory) into `model`."""
    from segprune.models.tiny import WEIGHTS, tiny

    path = WEIGHTS if init == "bundled" else Path(init)
    saved = tiny(path).state_dict()
    mine = model.state_dict()
    wrong = [k for k in mine if k not in saved or saved[k].shape != mine[k].shape]
    if wrong or set(saved) - set(mine):
        raise ValueError(
            f"TrainConfig.init={init!r}: its weights do not fit a tiny model with these dims "
            f"(first mismatch: {(wrong or sorted(set(saved) - set(mine)))[0]})"
        )
    model.load_state_dict(saved)


def _check_run_dir(out: Path, config: TrainConfig) -> None:
    """Refuse an `out` that holds files unless the run resumes from its checkpoint or overwrites it."""
    names = contents(out)
    if not names or config.overwrite:
        return
    if not config.resume:
        raise ValueError(
            f"{out} already holds a run ({', '.join(names)}); continue it with --resume, start afresh "
            "with --overwrite, or use another --out"
        )
    if CHECKPOINT not in names:
        raise ValueError(
            f"{out} holds no {CHECKPOINT} to resume from ({', '.join(names)}); start afresh with "
            "--overwrite, or use another --out"
        )


def _read_checkpoint(path: Path, device: torch.device, config: TrainConfig) -> dict[str, Any]:
    """Return a checkpoint that `config` can resume from, or raise saying why it cannot."""
    try:
        saved = torch.load(path, map_location=device, weights_only=False)
        settings, _ = saved["config"], saved["step"]
    except Exception as err:  # cut off, not a checkpoint, another program's file
        raise ValueError(
            f"{path} cannot be read as a train-tiny checkpoint ({one_line(err)}); "
            "start afresh with --overwrite"
        ) from err
    _check_resumable(settings, config)
    return saved


def _clear(out: Path) -> None:
    """Remove what a run writes into `out` (its checkpoint, model and log), nothing else."""
    for name in (CHECKPOINT, CHECKPOINT.replace(".pt", ".tmp"), LOG):
        (out / name).unlink(missing_ok=True)
    shutil.rmtree(out / MODEL, ignore_errors=True)


def _trim_log(path: Path, step: int) -> None:
    """Keep the log lines up to `step`: a run killed after its checkpoint logged steps it will redo."""
    records, intact = read_records(path)
    kept = [r for r in records if r.get("step", 0) <= step]
    if len(kept) == len(records) and intact == (path.stat().st_size if path.exists() else 0):
        return
    tmp = path.with_suffix(".tmp")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in kept))
    os.replace(tmp, path)


def _log(path: Path, record: dict[str, Any]) -> None:
    with path.open("a") as f:
        f.write(json.dumps(record) + "\n")


def validate(model: Any, samples: list, device: torch.device) -> dict[str, float]:
    """gIoU with and without image tokens on the validation cases (model switched to eval and back)."""
    model.eval()
    try:
        full = evaluate_refseg(model, samples)["all"]
        blind = evaluate_refseg(model, samples, blind=True)["all"]
    finally:
        model.train()
    return {"val_giou": full.giou, "val_ciou": full.ciou, "val_giou_blind": blind.giou}


def train(config: TrainConfig, stop_after: int | None = None) -> dict[str, Any]:
    """Train (or resume) the tiny model as `config` says; return the last step and validation scores.

    `stop_after` stops (with a checkpoint) once that many steps are done, as an interruption would.
    """
    start_time = time.monotonic()
    # Every setting is checked, and the checkpoint read, before anything is written.
    device = torch.device(check_device(config.device))
    dims = _check_dims(config.dims)
    TaskMix.from_dict(config.mix)
    check_loss_weights(config.loss_weights)
    check_sam_from(config.sam_from, config.loss_weights)
    if config.init not in (None, "bundled") and not (Path(config.init) / "config.json").is_file():
        raise ValueError(f"TrainConfig.init={config.init!r} is not a saved tiny model (no config.json)")
    out = check_out_dir(config.out)
    _check_run_dir(out, config)
    resuming = config.resume and (out / CHECKPOINT).exists()
    saved = _read_checkpoint(out / CHECKPOINT, device, config) if resuming else None
    with locked(out):
        _check_run_dir(out, config)  # again: another writer may have started since
        if config.overwrite:
            _clear(out)
        return _train(config, out, device, dims, saved, stop_after, start_time)


def _train(
    config: TrainConfig,
    out: Path,
    device: torch.device,
    dims: TinyDims,
    saved: dict[str, Any] | None,
    stop_after: int | None,
    start_time: float,
) -> dict[str, Any]:
    """The training loop of `train`, in a directory this process holds."""
    from tqdm.auto import tqdm

    if config.threads:
        torch.set_num_threads(config.threads)
    checkpoint_path, log_path = out / CHECKPOINT, out / LOG
    model = build_tiny(config.seed, dims)
    if config.init is not None and saved is None:
        _load_init(model, config.init)
    model = model.to(device).train()
    if {**WEIGHTS, **config.loss_weights}["seg_attention"]:
        model.mllm.set_attn_implementation("eager")  # the seg_attention term reads attention weights
    heads = AuxHeads.for_model(model).to(device)
    parameters = [*model.parameters(), *heads.parameters()]
    optimizer = torch.optim.AdamW(
        parameters, lr=config.lr, betas=(0.9, 0.98), weight_decay=config.weight_decay
    )
    step, minutes_before = 0, 0.0
    if saved is not None:
        model.load_state_dict(saved["model"])
        heads.load_state_dict(saved["heads"])
        optimizer.load_state_dict(saved["optimizer"])
        _set_rng_state(saved["rng"])
        step, minutes_before = saved["step"], saved.get("minutes", 0.0)
        _trim_log(log_path, step)

    val_samples = validation_set(config.val_size, VAL_SEED) if config.val_size else []
    data = StepBatches(config, model.config, model.tokenizer)
    loader = torch.utils.data.DataLoader(
        data, batch_size=None, sampler=range(step, config.steps), num_workers=config.workers
    )
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda")
    last_scores: dict[str, float] = {}
    stopped = False
    bar = tqdm(total=config.steps, initial=step, desc="train-tiny", dynamic_ncols=True)
    loop_start = time.monotonic()

    def trained() -> float:  # minutes of training, this run's and the resumed runs' before it
        return minutes_before + (time.monotonic() - loop_start) / 60

    for batch in loader:
        lr = learning_rate(config, step, trained())
        for group in optimizer.param_groups:
            group["lr"] = lr
        with autocast:
            losses = compute_losses(
                model, heads, _to(batch, device), config.loss_weights, sam_from=config.sam_from
            )
        optimizer.zero_grad(set_to_none=True)
        losses["total"].backward()
        torch.nn.utils.clip_grad_norm_(parameters, 1.0)
        optimizer.step()
        step += 1
        bar.update(1)
        bar.set_postfix(loss=f"{losses['total'].item():.3f}", lm=f"{losses['lm'].item():.3f}")
        # A time-scheduled run ends when its minutes are spent; any run ends after `steps`.
        finished = step == config.steps or (config.schedule == "time" and trained() >= config.time_limit)
        if step % config.log_every == 0 or finished:
            record = {k: round(v.item(), 5) for k, v in losses.items()}
            _log(log_path, {"step": step, "lr": lr, "minutes": round(trained(), 3), **record})
        if config.val_every and val_samples and (step % config.val_every == 0 or finished):
            last_scores = validate(model, val_samples, device)
            _log(log_path, {"step": step, **last_scores})
            bar.write(f"step {step}: " + ", ".join(f"{k} {v:.4f}" for k, v in last_scores.items()))
        out_of_time = (
            config.schedule == "steps"
            and config.time_limit is not None
            and time.monotonic() - start_time > 60 * config.time_limit
        )
        stopped = not finished and (out_of_time or (stop_after is not None and step >= stop_after))
        if step % config.checkpoint_every == 0 or finished or stopped:
            _save_checkpoint(checkpoint_path, step, model, heads, optimizer, config, trained())
        if stopped:
            bar.write(f"stopped at step {step} of {config.steps}; continue with --resume")
            break
        if finished:
            if step < config.steps:
                bar.write(f"the {config.time_limit}-minute schedule ended at step {step}")
            break
    bar.close()
    save_model(model, out / MODEL, config.save_dtype)
    return {"step": step, "stopped": stopped, "minutes": (time.monotonic() - start_time) / 60, **last_scores}
