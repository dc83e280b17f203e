"""Loss definitions: contrastive over all prompts (paper) vs per-domain K-way (released code)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from dapl.losses import dapl_loss
from dapl.pseudo_labels import pseudo_label
from tests.tolerances import assert_close


def _setup(seed=0, D=2, K=3, E=8, B=4):
    g = torch.Generator().manual_seed(seed)
    text = F.normalize(torch.randn(D, K, E, generator=g), dim=-1).requires_grad_(True)
    img = F.normalize(torch.randn(B, E, generator=g), dim=-1)
    return text, img


def test_contrastive_uses_all_domain_class_prompts():
    text, img = _setup()
    dom = torch.tensor([0, 0, 1, 1])
    y = torch.tensor([0, 2, 1, 0])
    loss, parts = dapl_loss(text, 10.0, img, dom, y, kind="contrastive")
    logits = 10.0 * img @ text.flatten(0, 1).T  # [B, 6]: same class in the other domain is a negative
    expected = F.cross_entropy(logits, dom * 3 + y)
    assert_close(loss, expected)
    assert float(parts["loss_target"]) == 0.0


def test_kway_uses_own_domain_prompts_only():
    text, img = _setup()
    dom = torch.tensor([0, 1, 1, 0])
    y = torch.tensor([1, 2, 0, 0])
    loss, _ = dapl_loss(text, 10.0, img, dom, y, kind="kway")
    rows = [F.cross_entropy(10.0 * img[i:i + 1] @ text[dom[i]].T, y[i:i + 1]) for i in range(4)]
    assert_close(loss, torch.stack(rows).mean())


def test_target_term_is_masked_mean():
    text, img = _setup()
    dom = torch.tensor([1, 1, 1, 1])
    pl = torch.tensor([0, 1, 2, 0])
    mask = torch.tensor([True, False, True, False])
    _, parts = dapl_loss(text, 5.0, img[:1], torch.tensor([0]), torch.tensor([0]), img, dom, pl, mask)
    ce = F.cross_entropy(5.0 * img @ text.flatten(0, 1).T, dom * 3 + pl, reduction="none")
    assert_close(parts["loss_target"], ce[mask].mean())


def test_empty_mask_gives_finite_zero_target_loss_and_gradients():
    text, img = _setup()
    pl = torch.tensor([-1, 2, 0, 1])
    mask = torch.zeros(4, dtype=torch.bool)
    for kind in ("contrastive", "kway"):
        loss, parts = dapl_loss(text, 10.0, img[:2], torch.tensor([0, 0]), torch.tensor([1, 2]),
                                img, torch.ones(4, dtype=torch.long), pl, mask, kind=kind)
        assert float(parts["loss_target"]) == 0.0
        (g,) = torch.autograd.grad(loss, text)
        assert torch.isfinite(loss) and torch.isfinite(g).all()


def test_pseudo_label_threshold():
    text = F.normalize(torch.eye(3, 4), dim=-1)
    feats = torch.tensor([[5.0, 0, 0, 0], [1.0, 1.0, 0, 0], [0, 0, 3.0, 0]])
    pl = pseudo_label(feats, text, 10.0, tau=0.9)
    assert pl.labels.tolist()[0] == 0 and pl.labels.tolist()[2] == 2
    assert pl.mask.tolist() == [True, False, True]
    assert abs(pl.coverage() - 2 / 3) < 1e-6
    assert pl.accuracy([0, 1, 1]) == 0.5
    assert pl.accuracy([-1, -1, -1]) is None
