"""Fine-tuning and evaluation with transformers' ``Trainer`` (config, encode, trainer, evaluate)."""

from .config import REFERENCES, RunResult, TrainConfig
from .evaluate import evaluate
from .trainer import finetune

__all__ = ["REFERENCES", "RunResult", "TrainConfig", "evaluate", "finetune"]
