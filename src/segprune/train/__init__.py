"""Training the tiny shapes model (`segprune train-tiny`) and scoring it on a fixed validation split.

from segprune.train import TrainConfig, train
train(TrainConfig(out="runs/tiny", steps=1000, device="cuda"))
"""

from segprune.train.evaluate import evaluate_refseg, segment_blind, validation_set
from segprune.train.loop import TrainConfig, learning_rate, train

__all__ = ["TrainConfig", "evaluate_refseg", "learning_rate", "segment_blind", "train", "validation_set"]
