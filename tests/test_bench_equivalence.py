"""The benchmark's guard: the released code's structure and ours give the same logits, loss and gradients.

Tiny CLIPs (a ViT and a ModifiedResNet) so it runs in seconds; the harness runs the same check at real size
before timing anything.
"""

from __future__ import annotations

import pytest
import torch

from bench.common import write_block
from bench.official import check_equivalence
from bench.scaling import prompt_tokens
from bench.step import OfficialStep, OursStep, make_batch, model_for
from dapl.clip import load_clip
from dapl.config import ModelConfig
from tests.tolerances import RTOL, assert_close

CLASSES = ["dog", "traffic light", "alarm clock", "cat"]


@pytest.fixture(scope="module")
def bundle(tiny_model_name):
    return load_clip(ModelConfig(name=tiny_model_name, pretrained=None, device="cpu", amp=False))


@pytest.mark.parametrize("setting", ["unified_domain", "class_specific_domain"])
def test_official_structure_and_ours_agree(bundle, setting):
    batch = make_batch(bundle, len(CLASSES), 4, 4)
    eq = check_equivalence(bundle, model_for(bundle, CLASSES, ["source", "target"], setting, m1=4, m2=2), batch)
    assert eq.ok, eq
    assert eq.logits_max_abs <= RTOL * max(1.0, eq.logits_max) and eq.pseudo_agree == 1.0


def test_check_catches_a_different_computation(bundle, monkeypatch):
    """A wrong prompt (here: the domain contexts swapped on our side) must fail the check."""
    model = model_for(bundle, CLASSES, ["source", "target"], "unified_domain", m1=4, m2=2)
    real = model.prompts.text_features
    monkeypatch.setattr(model.prompts, "text_features", lambda chunk=0, shared=None: real(chunk).flip(0))
    assert not check_equivalence(bundle, model, make_batch(bundle, len(CLASSES), 4, 4)).ok


def test_chunked_shared_prefix_matches(bundle):
    for setting in ("unified_domain", "class_specific_domain"):
        learner = model_for(bundle, CLASSES, ["a", "b", "c"], setting, m1=4, m2=2).prompts
        full, chunked = learner.text_features(), learner.text_features(chunk=3)
        assert_close(chunked, full)
        assert prompt_tokens(learner) < 3 * len(CLASSES) * learner.length


def test_steps_run_and_report_block(bundle, tmp_path):
    model = model_for(bundle, CLASSES, ["source", "target"], "unified_domain", m1=2, m2=2)
    assert torch.isfinite(torch.tensor(OursStep(bundle, model, n_images=16)()))
    off = model_for(bundle, CLASSES, ["source", "target"], "unified_domain", m1=2, m2=2)
    assert torch.isfinite(torch.tensor(OfficialStep(bundle, off, make_batch(bundle, len(CLASSES), 2, 2))()))
    out = tmp_path / "P.md"
    out.write_text("# P\n\nhand-written\n")
    write_block(out, "cpu-quick", "one")
    write_block(out, "cpu-quick", "two")
    text = out.read_text()
    assert "hand-written" in text and "two" in text and "one" not in text
