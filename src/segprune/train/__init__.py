"""Training the tiny shapes model (`segprune train-tiny`) and scoring it on a fixed validation split.

    from segprune.train import TrainConfig, train
    train(TrainConfig(out="runs/tiny", steps=1000, device="cuda"))

Names are loaded on first use, so `segprune.train.config` (what the command line reads to build its
flags) imports without torch.
"""

import lazy_loader

__getattr__, __dir__, __all__ = lazy_loader.attach(
    __name__,
    submod_attrs={
        "config": ["TrainConfig", "learning_rate"],
        "loop": ["train"],
        "evaluate": ["evaluate_refseg", "segment_blind", "validation_set"],
    },
)
