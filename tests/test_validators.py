"""Label-free validators on hand-made cases, and the epoch each picks scored against the oracle."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from dapl.validators import (
    entropy,
    information_maximization,
    mean_entropy,
    pick,
    score_all,
    selection_report,
    snd_subset,
    soft_neighborhood_density,
)
from tests.tolerances import assert_close


def _one_hot(labels: list[int], k: int) -> torch.Tensor:
    return F.one_hot(torch.tensor(labels), k).float()


def _snd_reference(probs: torch.Tensor, temperature: float = 0.05) -> float:
    """SND straight from its definition on the full N x N matrix (fine at test sizes)."""
    z = F.normalize(probs.double(), dim=1)
    sim = z @ z.T / temperature
    sim.fill_diagonal_(float("-inf"))
    p = torch.softmax(sim, dim=1)
    return float(torch.special.entr(p).sum(dim=1).mean())


def test_uniform_predictions_entropy_is_log_k_and_im_zero():
    k = 4
    probs = torch.full((5, k), 1.0 / k)
    assert_close(mean_entropy(probs), math.log(k))
    assert_close(entropy(probs), -math.log(k))  # the score: higher is better
    assert_close(information_maximization(probs), 0.0)


def test_confident_balanced_predictions_reach_im_log_k_and_entropy_zero():
    k = 3
    probs = _one_hot([0, 1, 2, 2, 1, 0], k)
    assert_close(entropy(probs), 0.0)
    assert_close(information_maximization(probs), math.log(k))


def test_im_penalises_confident_collapse_onto_one_class():
    probs = _one_hot([1, 1, 1, 1], 3)
    assert_close(entropy(probs), 0.0)  # entropy alone cannot tell collapse from a good model
    assert_close(information_maximization(probs), 0.0)


def test_im_of_a_hand_computed_case():
    probs = torch.tensor([[0.5, 0.5], [1.0, 0.0]])
    marginal_h = -(0.75 * math.log(0.75) + 0.25 * math.log(0.25))
    assert_close(information_maximization(probs), marginal_h - 0.5 * math.log(2))


def test_snd_identical_predictions_spread_evenly_over_the_others():
    n = 7
    probs = torch.full((n, 3), 1.0 / 3)
    # self excluded: each row is uniform over the n - 1 others
    assert_close(soft_neighborhood_density(probs), math.log(n - 1))


def test_snd_two_one_hot_clusters_match_the_closed_form():
    m = 4  # two clusters of m one-hot predictions: similarity 1 within, 0 across
    probs = _one_hot([0] * m + [1] * m, 2)
    a, b = math.exp(1 / 0.05), 1.0
    z = (m - 1) * a + m * b
    expected = -((m - 1) * (a / z) * math.log(a / z) + m * (b / z) * math.log(b / z))
    assert_close(soft_neighborhood_density(probs), expected)
    assert_close(soft_neighborhood_density(probs), _snd_reference(probs))


def test_snd_higher_for_clustered_than_scattered_predictions():
    k, per = 3, 4
    near = torch.tensor([0.9, 0.05, 0.05])
    clustered = torch.stack([near.roll(c) for c in range(k) for _ in range(per)])
    # the same number of predictions spread evenly around the simplex's boundary: no dense neighbourhoods
    ring = []
    for i in range(k * per):
        edge, frac = divmod(i / per, 1.0)
        p = torch.zeros(k)
        p[int(edge)], p[(int(edge) + 1) % k] = 1.0 - frac, frac
        ring.append(p)
    snd_c, snd_r = soft_neighborhood_density(clustered), soft_neighborhood_density(torch.stack(ring))
    assert_close(snd_c, math.log(per - 1), rtol=1e-3)  # mass on the 3 identical neighbours
    assert snd_c > snd_r + 0.15, (snd_c, snd_r)


@pytest.mark.parametrize("block_rows", [1, 7, 256, 999, 1000, 5000])
def test_snd_does_not_depend_on_the_block_size(block_rows):
    g = torch.Generator().manual_seed(1)
    probs = torch.softmax(2.0 * torch.randn(1000, 10, generator=g), dim=1)
    assert_close(soft_neighborhood_density(probs, block_rows=block_rows), _snd_reference(probs))


def test_snd_needs_two_predictions_and_a_matrix():
    assert math.isnan(soft_neighborhood_density(torch.tensor([[0.2, 0.8]])))
    with pytest.raises(ValueError):
        entropy(torch.tensor([0.2, 0.8]))
    with pytest.raises(ValueError):
        soft_neighborhood_density(torch.full((3, 2), 0.5), block_rows=0)


def test_score_all_names_the_history_columns():
    probs = _one_hot([0, 1, 2, 0, 1, 2], 3)
    scores = score_all(probs)
    assert sorted(scores) == ["val_entropy", "val_im", "val_snd"]
    assert_close(scores["val_im"], information_maximization(probs))
    assert all(isinstance(v, float) for v in scores.values())


def test_snd_of_a_large_target_scores_a_fixed_subset():
    """Above the limit SND reads the same fixed rows every call (no growth with N², no drift between epochs); at
    or below it, every row."""
    assert snd_subset(50, limit=50) is None
    rows = snd_subset(200, limit=40)
    assert rows.shape == (40,) and torch.equal(rows, snd_subset(200, limit=40))
    assert torch.equal(rows, rows.sort().values)
    assert len(set(rows.tolist())) == 40 and int(rows.max()) < 200
    probs = torch.softmax(torch.randn(120, 5, generator=torch.Generator().manual_seed(4)) * 3, dim=1)
    assert_close(score_all(probs)["val_snd"], soft_neighborhood_density(probs))  # 120 rows: all of them


def _history(targets, **columns):
    recs = [{"epoch": e + 1} for e in range(len(targets))]
    for rec, t in zip(recs, targets, strict=True):
        if t is not None:
            rec["target_metric"] = t
    for key, values in columns.items():
        for rec, v in zip(recs, values, strict=True):
            rec[key] = v
    return recs


def test_pick_regret_is_oracle_minus_picked():
    h = _history([60.0, 75.5, 70.0], val_im=[0.1, 0.2, 0.9])
    out = pick(h, "val_im")
    assert (out["epoch"], out["oracle_epoch"]) == (3, 2)
    assert_close(out["target_metric"], 70.0)
    assert_close(out["oracle_target_metric"], 75.5)
    assert_close(out["regret"], 5.5)
    assert_close(out["score"], 0.9)


def test_pick_takes_the_first_epoch_on_ties_and_skips_nan():
    h = _history([50.0, 55.0, 65.0, 65.0], val_snd=[float("nan"), 0.4, 0.4, None])
    out = pick(h, "val_snd")
    assert out["epoch"] == 2  # tie between epochs 2 and 3: the first; NaN and None never picked
    assert out["oracle_epoch"] == 3  # the oracle also takes the first of tied accuracies
    assert_close(out["regret"], 10.0)


def test_pick_zero_regret_when_the_validator_agrees_with_the_oracle():
    h = _history([40.0, 80.0, 60.0], pl_agreement=[0.3, 0.7, 0.5])
    assert_close(pick(h, "pl_agreement")["regret"], 0.0)


def test_pick_lower_source_loss_is_better():
    h = _history([70.0, 60.0, 65.0], source_val_loss=[0.9, 0.2, 0.5])
    out = pick(h, "source_val_loss")
    assert out["epoch"] == 2
    assert_close(out["regret"], 10.0)


def test_pick_without_labels_has_no_accuracy_or_regret():
    h = _history([None, None], val_entropy=[-1.0, -0.5])
    out = pick(h, "val_entropy")
    assert out["epoch"] == 2
    assert out["target_metric"] is None and out["oracle_epoch"] is None and out["regret"] is None
    nan_labels = _history([float("nan"), 50.0], val_entropy=[-1.0, -0.5])
    assert pick(nan_labels, "val_entropy")["regret"] is None


def test_pick_when_nothing_was_scored():
    out = pick(_history([50.0, 60.0], val_im=[float("nan"), float("nan")]), "val_im")
    assert out["epoch"] is None and out["regret"] is None
    assert out["oracle_epoch"] == 2
    assert pick([], "val_im")["epoch"] is None
    with pytest.raises(KeyError):
        pick(_history([50.0]), "target_metric")


def test_selection_report_covers_the_columns_present():
    h = _history([50.0, 70.0], val_entropy=[-0.9, -0.3], val_im=[0.5, 0.1], val_snd=[1.0, 2.0],
                 source_val_loss=[0.4, 0.6])
    report = selection_report(h)
    assert list(report) == ["val_entropy", "val_im", "val_snd", "source_val_loss"]  # no pl_agreement column
    assert {k: r["epoch"] for k, r in report.items()} == {"val_entropy": 2, "val_im": 1, "val_snd": 2,
                                                         "source_val_loss": 1}
    assert_close(report["val_im"]["regret"], 20.0)
    assert_close(report["val_snd"]["regret"], 0.0)
