"""Classification metrics for a target domain: overall, mean per-class, per-class, confusion matrix."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from dapl.imageset import AdaptationData


@dataclass
class Metrics:
    accuracy: float
    mean_per_class: float
    per_class: list[float]
    confusion: list[list[int]]
    n: int

    def to_dict(self) -> dict:
        return asdict(self)

    def headline(self, metric: str = "accuracy") -> float:
        return self.mean_per_class if metric == "mean_per_class" else self.accuracy


def classification_metrics(pred: np.ndarray, true: np.ndarray, n_classes: int) -> Metrics:
    """Accuracies in percent. Classes absent from ``true`` are left out of the per-class mean."""
    pred = np.asarray(pred, dtype=np.int64)
    true = np.asarray(true, dtype=np.int64)
    if pred.shape != true.shape:
        raise ValueError(f"{pred.shape} predictions vs {true.shape} labels")
    conf = np.zeros((n_classes, n_classes), dtype=np.int64)
    np.add.at(conf, (true, pred), 1)
    support = conf.sum(axis=1)
    per_class = np.where(support > 0, np.diag(conf) / np.maximum(support, 1) * 100.0, np.nan)
    acc = float((pred == true).mean() * 100.0) if len(true) else float("nan")
    mpc = float(np.nanmean(per_class)) if (support > 0).any() else float("nan")
    return Metrics(acc, mpc, [float(x) for x in per_class], conf.tolist(), int(len(true)))


def target_metrics(data: AdaptationData, pred: np.ndarray) -> dict[str, Metrics]:
    """Per target domain (and ``"all"`` when there are several); empty without target labels."""
    y, dom = data.evaluation.labels, data.evaluation.domains
    if (y < 0).any():
        return {}
    K = len(data.classnames)
    out = {data.domains[d]: classification_metrics(pred[dom == d], y[dom == d], K) for d in data.target_domains}
    if len(out) > 1:
        out["all"] = classification_metrics(pred, y, K)
    return out


def headline(ms: dict[str, Metrics], metric: str) -> dict[str, float]:
    """The numbers a run reports: over all target domains when there are several, else the one domain's."""
    if not ms:
        return {}
    m = ms.get("all") or next(iter(ms.values()))
    return {"target_acc": m.accuracy, "target_mean_per_class": m.mean_per_class,
            "target_metric": m.headline(metric)}
