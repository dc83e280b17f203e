"""Prefect tasks: thin wrappers over ``dapl`` stage functions, each cached on its inputs, MLflow logging here.

``dapl/`` stays free of Prefect and MLflow; these modules are the only place that imports both.
"""

from tasks import _env  # noqa: F401  (before prefect is imported)
from tasks.data import fetch, index, toy_pretrain
from tasks.model import extract_features, zero_shot
from tasks.summary import summarise
from tasks.train import evaluate, share_result, train_prompts

__all__ = ["evaluate", "extract_features", "fetch", "index", "share_result", "summarise", "toy_pretrain",
           "train_prompts", "zero_shot"]
