"""Fast checks of the orchestration layer without a Prefect server: run planning, cache keys, MLflow sweep."""

from __future__ import annotations

import subprocess

import pytest

pytest.importorskip("prefect")
pytest.importorskip("mlflow")

from dapl.config import DaplConfig  # noqa: E402
from flows import plan  # noqa: E402
from tasks import tracking  # noqa: E402
from tasks.common import cache_key, code_version  # noqa: E402

TOY_DOMAINS = ["art", "clipart", "product", "real"]


def test_benchmark_plan_covers_every_pair_and_encodes_each_domain_once():
    cfg = DaplConfig()
    specs = plan.plan_runs("full-benchmark", cfg, TOY_DOMAINS, [1, 2])
    assert len({s.pair for s in specs}) == 12
    assert len(specs) == 12 * (1 + 2 + 2)  # zero-shot is deterministic: one seed
    groups = plan.feature_groups(specs)
    assert sorted(d for g in groups for d in g) == sorted(TOY_DOMAINS)
    odd = plan.feature_groups(plan.plan_runs("full-benchmark", cfg, TOY_DOMAINS[:3], [1]))
    assert {d for g in odd for d in g} == set(TOY_DOMAINS[:3]) and len(odd) == 2


def test_ablation_plan_is_the_papers_grid():
    specs = plan.plan_runs("ablations", DaplConfig(), TOY_DOMAINS, [1], m1m2=["4x4", "8x16"], taus=[0.4, 0.7])
    methods = [s.method for s in specs]
    assert methods[:5] == [f"setting:{x}" for x in ("manual", "unified", "class_specific", "unified_domain",
                                                     "class_specific_domain")]
    assert methods[5:] == ["m1m2:4x4", "m1m2:8x16", "tau:0.4", "tau:0.7"]
    assert {s.pair for s in specs} == {"real->art"}
    with pytest.raises(ValueError, match="not in toy"):
        plan.plan_runs("ablations", DaplConfig(), TOY_DOMAINS, [1], pair="real->nowhere")


def test_base_config_resolves_paths_and_defaults(tmp_path):
    cfg = plan.base_config("toy", workdir=tmp_path, epochs=3, overrides={"train.lr": 0.01})
    assert cfg.model.name == "toy-clip" and cfg.model.pretrained.endswith("dapl/assets/toy-clip.pt")
    assert cfg.data.root == tmp_path / "data" / "toy"
    assert cfg.data.manifest == tmp_path / "artifacts" / "manifests" / "toy.parquet"
    assert cfg.features.cache_dir.is_absolute() and cfg.train.epochs == 3 and cfg.train.lr == 0.01
    other = plan.base_config("office_home", root="elsewhere/oh", backbone="RN50-quickgelu", workdir=tmp_path)
    assert other.model.pretrained == "openai" and other.data.manifest.name.startswith("office_home-")


def test_cache_keys_follow_their_inputs_only():
    cfg = DaplConfig().to_dict()
    k = cache_key("extract-features", cfg, ("model", "features", "data"), manifest_sha="a")
    assert k == cache_key("extract-features", cfg, ("model", "features", "data"), manifest_sha="a")
    lr = DaplConfig().with_overrides({"train.lr": 0.1}).to_dict()
    assert k == cache_key("extract-features", lr, ("model", "features", "data"), manifest_sha="a")  # not read
    assert k != cache_key("extract-features", cfg, ("model", "features", "data"), manifest_sha="b")
    views = DaplConfig().with_overrides({"features.views": 2}).to_dict()
    assert k != cache_key("extract-features", views, ("model", "features", "data"), manifest_sha="a")
    assert code_version().startswith("0.") or "+" in code_version()


def test_sweep_marks_runs_of_dead_processes_failed(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    exp = tracking.ensure_experiment(uri, "sweep")
    live = tracking.start_run(uri, exp, "live", {})
    dead = tracking.start_run(uri, exp, "dead", {})
    p = subprocess.Popen(["true"])
    p.wait()
    tracking.set_tags(uri, dead, {"dapl.pid": p.pid})
    assert tracking.sweep_orphans(uri, exp) == [dead]
    c = tracking.client(uri)
    assert c.get_run(dead).info.status == "FAILED" and "killed" in c.get_run(dead).data.tags["dapl.failure"]
    assert c.get_run(live).info.status == "RUNNING"
    tracking.end_run(uri, live)


def test_unreachable_server_is_reported_in_seconds():
    with pytest.raises(tracking.TrackingUnavailable, match="scripts/mlflow_ui.sh"):
        tracking.check_tracking("http://127.0.0.1:9", timeout=2)


def test_fetch_retries_only_transient_failures():
    from prefect.states import Failed

    from dapl.datasets.errors import DatasetUnavailable, UnsafeArchiveError
    from tasks.data import _transient

    def retry(exc: Exception) -> bool:
        return _transient(None, None, Failed(data=exc))

    assert retry(DatasetUnavailable("downloading http://x/a.tar failed (timed out); the partial file is kept"))
    assert not retry(DatasetUnavailable("Dataset office_home is not complete in data/oh and cannot be fetched"))
    assert not retry(UnsafeArchiveError("member ../x escapes"))
    assert retry(ConnectionResetError())


def test_fetch_is_never_cached_while_its_data_is_missing(tmp_path):
    from tasks.data import _fetch_key

    params = {"dataset": "toy", "root": str(tmp_path / "toy"), "sources": None, "toy": None}
    assert _fetch_key(None, params) is None  # a deleted world must be generated again, whatever ran before
    (tmp_path / "toy" / "art").mkdir(parents=True)
    assert _fetch_key(None, params) is None
    (tmp_path / "toy" / "art" / "x.png").write_bytes(b"png")
    k = _fetch_key(None, params)
    assert k and k == _fetch_key(None, params)
    (tmp_path / "toy" / "art" / "y.png").write_bytes(b"png")
    assert _fetch_key(None, params) != k
