"""The config object: presets, overrides, validation, round trips."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from dapl.config import DaplConfig, PromptConfig, PromptSetting, parse_set_args


def test_paper_preset_defaults():
    c = DaplConfig()
    assert c.preset == "paper" and c.prompt.m1 == 16 and c.prompt.m2 == 16 and not c.prompt.csc
    assert c.train.lr == 0.003 and c.train.momentum == 0.9 and c.train.weight_decay == 5e-4
    assert c.train.batch_source == 32 and c.train.batch_target == 32 and c.train.loss == "contrastive"
    assert c.prompt.setting is PromptSetting.unified_domain


def test_official_preset_and_tau_defaults():
    c = DaplConfig.from_preset("official", {"data.dataset": "office_home"})
    assert c.prompt.text == "official" and c.train.loss == "kway"
    assert c.tau == 0.6
    assert DaplConfig.from_preset("paper", {"data": {"dataset": "visda2017"}}).tau == 0.5
    assert DaplConfig.from_preset("paper", {"pseudo.tau": 0.7}).tau == 0.7


def test_overrides_and_roundtrip(tmp_path):
    c = DaplConfig.from_preset("paper", parse_set_args(["train.lr=0.01", "data.target=[art, clipart]"]))
    assert c.train.lr == 0.01 and c.data.target == ["art", "clipart"]
    f = tmp_path / "c.yaml"
    c.dump(f)
    assert DaplConfig.load(f) == c
    assert c.digest("prompt") == DaplConfig().digest("prompt") and c.digest() != DaplConfig().digest()
    assert c.flat()["train.lr"] == 0.01


@pytest.mark.parametrize("setting,expect", [
    ("manual", (0, 0, False)), ("unified", (16, 0, False)), ("class_specific", (16, 0, True)),
    ("unified_domain", (16, 16, False)), ("class_specific_domain", (16, 16, True))])
def test_five_settings(setting, expect):
    p = PromptConfig.for_setting(setting)
    assert (p.m1, p.m2, p.csc) == expect and p.setting.value == setting


def test_validation_errors():
    with pytest.raises(ValidationError, match="both source and target"):
        DaplConfig.from_preset("paper", {"data": {"source": ["art"], "target": ["art"]}})
    with pytest.raises(ValidationError, match="source_val_fraction"):
        DaplConfig.from_preset("paper", {"eval.selection": "source_val"})
    with pytest.raises(ValidationError):
        DaplConfig.from_preset("paper", {"train.lrr": 1})
    with pytest.raises(ValueError, match="unknown preset"):
        DaplConfig.from_preset("nope")
