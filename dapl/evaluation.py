"""What an epoch is scored on: one product of the prompts with cached test-view features, no image encoded."""

from __future__ import annotations

import numpy as np
import torch

from dapl.imageset import AdaptationData
from dapl.losses import dapl_loss
from dapl.metrics import Metrics, headline, target_metrics
from dapl.model import DaplModel, normalize
from dapl.pseudo_labels import PseudoLabels
from dapl.validators import score_all


class EpochScores:
    """Target metrics (reporting only), and the label-free scores selection reads: agreement with the zero-shot
    pseudo-labels, the loss on held-out source images and the validators of :mod:`dapl.validators`."""

    def __init__(self, data: AdaptationData, target_test: torch.Tensor, source_test: torch.Tensor,
                 val_idx: torch.Tensor, zero_shot: PseudoLabels, loss: str):
        dev = target_test.device
        self.data, self.target_test, self.zero_shot, self.loss = data, target_test, zero_shot, loss
        self.target_domains = torch.as_tensor(data.evaluation.domains, device=dev)
        vi = val_idx.to(dev)
        self.val = (source_test[vi], torch.as_tensor(data.source.domains, device=dev)[vi],
                    torch.as_tensor(data.source.labels, device=dev)[vi]) if len(val_idx) else None

    @torch.no_grad()
    def target(self, model: DaplModel, text: torch.Tensor) -> tuple[dict[str, Metrics], np.ndarray, torch.Tensor]:
        """Per-domain metrics, predictions and probabilities of the evaluation images (own-domain prompts)."""
        pred, probs = model.predict(self.target_test, self.target_domains, text)
        pred = pred.cpu().numpy()
        return target_metrics(self.data, pred), pred, probs

    @torch.no_grad()
    def __call__(self, model: DaplModel, text: torch.Tensor) -> tuple[dict, dict[str, Metrics]]:
        ms, pred, probs = self.target(model, text)
        out = headline(ms, self.data.metric)
        zs = self.zero_shot
        if bool(zs.mask.any()):
            agree = torch.as_tensor(pred, device=zs.labels.device)[zs.mask] == zs.labels[zs.mask]
            out["pl_agreement"] = float(agree.float().mean())
        if self.val is not None:
            f, d, y = self.val
            _, parts = dapl_loss(text, model.logit_scale, normalize(f), d, y, kind=self.loss)
            out["source_val_loss"] = float(parts["loss_source"])
        return out | score_all(probs), ms
