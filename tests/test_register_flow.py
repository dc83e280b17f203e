"""The flow's ``register_models``: each trained run's prompts become a version of dapl-<dataset>-<pair>-<method>."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("prefect")
pytest.importorskip("mlflow")

from tests.test_dag_flow import _run, env  # noqa: E402,F401  (the module's tiny world, model and Prefect server)
from tests.tolerances import assert_close  # noqa: E402


@pytest.mark.slow
def test_flow_registers_each_trained_run(env):  # noqa: F811
    from mlflow import MlflowClient

    from dapl.artifacts import AdaptedClassifier
    from dapl.config import DaplConfig
    from tasks.adapted_model import load_adapted_model

    res = _run(env, "full-benchmark", pairs=["real->art"], methods=["zero_shot", "dapl"], register_models=True,
               experiment="register")
    client = MlflowClient(env["uri"])
    names = {m.name for m in client.search_registered_models()}
    assert "dapl-toy-real-art-dapl" in names and not any("zero_shot" in n for n in names)  # nothing learned there
    version = client.get_model_version_by_alias("dapl-toy-real-art-dapl", "champion")
    run = client.get_run(version.run_id)
    assert run.data.tags["mlflow.parentRunId"] == res["parent_run_id"] and run.data.tags["method"] == "dapl"
    run_dir = Path(version.tags["dapl.run_dir"])
    cfg = DaplConfig.model_validate(json.loads((run_dir / "prompts.json").read_text())["config"])
    serving = {k for k in run.data.params if k.startswith("serving.")}
    assert serving == {"serving.domain", "serving.device", "serving.top_k"}  # the model's, apart from the config
    swept = {k for k in run.data.params if k.startswith("sweep.")}
    assert set(run.data.params) - serving - swept == set(cfg.flat()) - {"output_dir"}  # output_dir: a tag
    image = next((Path(env["wd"]) / "toy" / "art").rglob("*.png"))
    import pandas as pd

    got = load_adapted_model("models:/dapl-toy-real-art-dapl@champion", env["uri"]).predict(
        pd.DataFrame({"path": [str(image)]}))
    want = AdaptedClassifier.load(run_dir, device="cpu").predict_proba([image])[0]
    assert_close(np.array(got["probability"]), [want.max()], rtol=0, atol=1e-5)
