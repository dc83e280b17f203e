"""params.yaml holds every setting of the default run, and dvc.yaml's stages list the keys they read."""

from __future__ import annotations

import yaml

from dapl.config import DaplConfig
from dapl.overrides import flatten
from dapl.paths import PROJECT_ROOT
from dapl.plan import resolve_config

PARAMS = PROJECT_ROOT / "params.yaml"


def _params() -> dict:
    return yaml.safe_load(PARAMS.read_text())


def test_params_yaml_is_every_key_of_the_resolved_toy_default():
    """The file spells out what the preset and the toy recipe resolve to (a recipe change must show here, where
    DVC sees it); it changes nothing but the DVC run's output folder."""
    assert set(flatten(_params()["dapl"])) == set(DaplConfig().flat())
    from_file = resolve_config(PARAMS, workdir=PROJECT_ROOT)
    default = resolve_config(workdir=PROJECT_ROOT, overrides={"output_dir": "runs/dvc/train"})
    assert from_file == default
    assert from_file == resolve_config(dataset="toy", workdir=PROJECT_ROOT, overrides={"output_dir": "runs/dvc/train"})
    from flows.plan import FlowParams  # the deployments' request (pure: no Prefect)

    assert FlowParams().request().config.with_overrides({"output_dir": str(from_file.output_dir)}) == from_file


def _stage_params(stage: dict) -> list[str]:
    return [p for p in stage.get("params", []) if isinstance(p, str)]


def test_dvc_stages_list_the_keys_they_read():
    """Named keys, not the whole `dapl` section, so `dvc params diff`/`dvc status` say what changed; every key
    named exists in params.yaml, and the training stages read every setting."""
    stages = yaml.safe_load((PROJECT_ROOT / "dvc.yaml").read_text())["stages"]
    flat = flatten(_params())
    keys = [k for s in stages.values() for k in _stage_params(s)]
    assert "dapl" not in keys
    for k in keys:
        assert k in flat or any(f.startswith(k + ".") for f in flat), k
    assert {"dapl.pseudo.tau", "dapl.pseudo.template", "dapl.model", "dapl.features", "dapl.data"} <= set(
        _stage_params(stages["zero_shot"]))
    assert "dapl.train" not in _stage_params(stages["features"]) + _stage_params(stages["zero_shot"])
    top = {k.split(".")[0] for k in flatten(_params()["dapl"])}  # preset, the sections, output_dir
    for name in ("train", "benchmark"):
        assert {k.split(".")[1] for k in _stage_params(stages[name]) if k.startswith("dapl.")} == top, name
