"""The config object: presets, overrides, validation, round trips."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from dapl.config import DaplConfig, PromptConfig, PromptSetting, TrainConfig
from dapl.config_errors import describe_field, unknown_key_message, validated
from dapl.errors import ConfigError, UserError
from dapl.overrides import parse_set_args
from dapl.plan import resolve_config
from dapl.toy.pretrain_config import ToyPretrainConfig


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


@pytest.mark.parametrize("key,expect", [
    ("train.lrr", "did you mean `train.lr`?"),  # a sibling spelt alike
    ("trian.lr", "did you mean `train.lr`?"),  # a misspelt section
    ("train.tau", "did you mean `pseudo.tau`?"),  # the right name in another section
    ("epochs", "did you mean `train.epochs`?"),
    ("train.zzzz", "valid keys of `train`: epochs, lr, momentum"),  # nothing close: the section's keys
    ("zzz.yyy", "valid keys: preset, model, prompt"),
])
def test_unknown_keys_get_the_nearest_valid_key(key, expect):
    msg = unknown_key_message(key, DaplConfig)
    assert msg.startswith(f"unknown key `{key}`; ") and expect in msg


def test_field_descriptions_say_type_bounds_and_default():
    assert describe_field(TrainConfig.model_fields["lr"]) == "float > 0 (default 0.003)"
    assert describe_field(TrainConfig.model_fields["loss"]) == "'contrastive' or 'kway' (default \"contrastive\")"
    tau = DaplConfig.model_fields["pseudo"].annotation.model_fields["tau"]
    assert describe_field(tau) == "float >= 0.0 and <= 1.0, or null (default null)"


def test_resolve_config_errors_are_one_line_user_errors(tmp_path):
    with pytest.raises(ConfigError) as e:
        resolve_config(overrides={"train.lrr": 0.1}, workdir=tmp_path)
    assert str(e.value) == "unknown key `train.lrr`; did you mean `train.lr`?"
    assert isinstance(e.value, UserError) and isinstance(e.value, ValueError)  # every caller already catches it
    with pytest.raises(ConfigError, match=r"^train.epochs=\"abc\": input should be a valid integer.*int >= 1"):
        resolve_config(overrides={"train.epochs": "abc"}, workdir=tmp_path)
    f = tmp_path / "params.yaml"
    f.write_text("dapl:\n  train:\n    lr: -1\n")
    with pytest.raises(ConfigError) as e:
        resolve_config(f, workdir=tmp_path)
    assert str(e.value).startswith(f"{f}: train.lr=-1: input should be greater than 0") and "\n" not in str(e.value)
    f.write_text("dapl: {train: {lr: 0.1}")
    with pytest.raises(ConfigError, match=f"^{f}: not valid YAML"):
        resolve_config(f, workdir=tmp_path)


def test_set_args_with_bad_yaml_or_no_value_are_config_errors():
    with pytest.raises(ConfigError, match=r"^--set data.target=\[art: not valid YAML"):
        parse_set_args(["data.target=[art"])
    with pytest.raises(ConfigError, match="expects key=value"):
        parse_set_args(["train.lr"])


def test_toy_pretrain_config_rejects_unknown_keys():
    with pytest.raises(ConfigError, match=r"^unknown key `stepz`; did you mean `steps`\?$"):
        validated(ToyPretrainConfig, {"stepz": 3})
    with pytest.raises(ValidationError):
        ToyPretrainConfig(stepz=3)  # the class itself forbids them too, whoever builds it
    assert validated(ToyPretrainConfig, {"steps": 3}).steps == 3
