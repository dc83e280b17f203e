"""Label-free model selection: which epoch a run would pick without target labels."""

from __future__ import annotations

import copy

from dapl.model import DaplModel

CRITERIA = {"source_val": ("source_val_loss", -1.0), "pl_agreement": ("pl_agreement", 1.0),  # key, sign
            "entropy": ("val_entropy", 1.0), "im": ("val_im", 1.0), "snd": ("val_snd", 1.0)}


def update_best(best: dict | None, rec: dict, criterion: str, model: DaplModel) -> dict | None:
    """The better of ``best`` and this epoch's record under ``criterion`` (``last``: none kept, the last epoch
    is the choice); the chosen epoch's prompts are kept with it."""
    if criterion not in CRITERIA or CRITERIA[criterion][0] not in rec:
        return best
    key, sign = CRITERIA[criterion]
    score = sign * rec[key]
    if best is None or score > best["score"]:
        return {"epoch": rec["epoch"], "score": score, "record": dict(rec),
                "context": copy.deepcopy(model.prompts.context_tensors())}
    return best


def selected(best: dict | None, final: dict, criterion: str) -> dict:
    """The selection a run reports: the best epoch's record, or the last epoch when nothing was scored."""
    best = best or {"epoch": final.get("epoch"), "score": None, "record": final}
    return {"criterion": criterion, "epoch": best["epoch"], **best["record"]}


def oracle(history: list[dict]) -> dict:
    """The epoch target labels would pick: reported only as the oracle, never used to choose."""
    top = max(history, key=lambda r: r.get("target_metric", -1.0)) if history else {}
    return {"epoch": top.get("epoch"), "label": "oracle (selected with target labels)",
            **{k: v for k, v in top.items() if k.startswith("target")}}
