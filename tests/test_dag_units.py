"""Fast checks of the orchestration layer without a Prefect server: run planning, cache keys, MLflow sweep."""

from __future__ import annotations

import inspect
import subprocess

import pytest

pytest.importorskip("prefect")
pytest.importorskip("mlflow")

from dapl import cli  # noqa: E402
from dapl.config import DaplConfig  # noqa: E402
from dapl.paths import PROJECT_ROOT  # noqa: E402
from flows import plan  # noqa: E402
from tasks import tracking  # noqa: E402
from tasks.common import code_version, task_key  # noqa: E402

TOY_DOMAINS = ["art", "clipart", "product", "real"]


def _request(**params) -> plan.FlowRequest:
    """What the flow plans for ``params`` (the rest at their declared defaults)."""
    return plan.FlowParams(**params).request()


def test_flow_parameters_are_flowparams_fields():
    """The flow's signature, Prefect's parameter schema and FlowParams agree name by name, each typed and
    described; a by-name parameter (`-p seeds=[1,2]`) is validated by that type; an unknown name is refused."""
    from prefect.exceptions import ParameterTypeError, SignatureMismatchError

    from flows.dapl_flow import dapl

    fields = plan.FlowParams.model_fields
    sig = inspect.signature(dapl.fn).parameters
    assert list(sig) == list(fields) and all(sig[k].default == f.default for k, f in fields.items())
    props = dapl.parameters.properties
    assert list(props) == list(fields)
    assert all(p["description"] == fields[k].description for k, p in props.items())
    assert props["seeds"]["anyOf"][0] == {"items": {"type": "integer"}, "type": "array"}
    assert props["refresh"]["type"] == "boolean" and props["experiment"]["default"] == "dapl"
    got = dapl.validate_parameters({"kind": "ablations", "seeds": [1, 2], "taus": [0.5], "epochs": "3"})
    assert (got["seeds"], got["epochs"], got["dataset"]) == ([1, 2], 3, None)
    assert plan.FlowParams(**got) == plan.FlowParams(kind="ablations", seeds=[1, 2], taus=[0.5], epochs=3)
    with pytest.raises(SignatureMismatchError):
        dapl.validate_parameters({"seedz": [1]})
    with pytest.raises(ParameterTypeError):
        dapl.validate_parameters({"seeds": "one"})


@pytest.mark.parametrize("kind,flow_kind", [("benchmark", "full-benchmark"), ("ablations", "ablations")])
def test_cli_and_flow_plan_identical_runs(kind, flow_kind, monkeypatch):
    """The deployment with no parameters and `dapl <kind> -c params.yaml` (what the demo and `dvc repro` run):
    the same runs, the same configs, the same runs folder; and the same again for explicit grids."""
    monkeypatch.chdir(PROJECT_ROOT)
    req = _request(kind=flow_kind)
    cli_cfg, cli_dir, cli_runs = cli.plan_of(cli.build_parser().parse_args([kind, "-c", "params.yaml"]), TOY_DOMAINS)
    # the bases differ only in the output_dir that every run replaces
    assert req.config.with_overrides({"output_dir": "x"}) == cli_cfg.with_overrides({"output_dir": "x"})
    assert req.runs_dir == cli_dir
    assert [(r.spec, r.config) for r in req.runs(TOY_DOMAINS)] == [(r.spec, r.config) for r in cli_runs]
    if kind == "ablations":
        req = _request(kind=flow_kind, seeds=[1, 2], pair="art->real", m1m2=["8x4"], taus=[0.6],
                       overrides={"train.lr": 0.01})
        args = [kind, "--seeds", "1,2", "--pair", "art->real", "--m1m2", "8x4", "--taus", "0.6",
                "--set", "train.lr=0.01"]
        cli_cfg, cli_dir, cli_runs = cli.plan_of(cli.build_parser().parse_args(args), TOY_DOMAINS)
        assert [(r.spec, r.config) for r in req.runs(TOY_DOMAINS)] == [(r.spec, r.config) for r in cli_runs]
        assert len(cli_runs) == 1 + 4 * 2 + 2 + 2 + 4 * 2


def test_config_paths_resolve_against_the_file_not_the_workdir(tmp_path):
    """The flow with config=params.yaml and another workdir reads the project's checkpoint and data."""
    req = _request(config=str(PROJECT_ROOT / "params.yaml"), workdir=str(tmp_path))
    assert req.config.model.pretrained == str(PROJECT_ROOT / "dapl" / "assets" / "toy-clip.pt")
    assert req.config.data.root == PROJECT_ROOT / "data" / "toy"
    assert str(req.runs_dir).startswith(str(tmp_path))


def test_cache_keys_follow_their_inputs_only():
    cfg = DaplConfig().to_dict()
    k = task_key("extract-features", cfg, ("model", "features", "data"), manifest_sha="a")
    assert k == task_key("extract-features", cfg, ("model", "features", "data"), manifest_sha="a")
    lr = DaplConfig().with_overrides({"train.lr": 0.1}).to_dict()
    assert k == task_key("extract-features", lr, ("model", "features", "data"), manifest_sha="a")  # not read
    assert k != task_key("extract-features", cfg, ("model", "features", "data"), manifest_sha="b")
    views = DaplConfig().with_overrides({"features.views": 2}).to_dict()
    assert k != task_key("extract-features", views, ("model", "features", "data"), manifest_sha="a")
    assert code_version().startswith("0.") or "+" in code_version()


def test_sweep_marks_runs_of_dead_processes_failed(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    exp = tracking.ensure_experiment(uri, "sweep")
    assert tracking.client(uri).get_experiment(exp).tags["mlflow.experimentKind"] == "custom_model_development"
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


def test_sweep_marks_an_earlier_attempt_of_this_flow_run_failed_on_any_host(tmp_path):
    """A flow run that starts again (its worker died, another took it) owns no RUNNING run yet: those tagged
    with its id are its dead worker's, whatever host that was; another flow run's runs elsewhere are left alone."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    exp = tracking.ensure_experiment(uri, "sweep")
    mine, other = (tracking.start_run(uri, exp, name, {}) for name in ("mine", "other"))
    tracking.set_tags(uri, mine, {"dapl.host": "gpu-7", "dapl.pid": "4242", "prefect.flow_run_id": "fr-1"})
    tracking.set_tags(uri, other, {"dapl.host": "gpu-8", "dapl.pid": "4242", "prefect.flow_run_id": "fr-2"})
    assert tracking.sweep_orphans(uri, exp) == []  # without the flow run's id: another host's runs stay
    assert tracking.sweep_orphans(uri, exp, "fr-1") == [mine]
    c = tracking.client(uri)
    assert c.get_run(mine).info.status == "FAILED" and "gpu-7" in c.get_run(mine).data.tags["dapl.failure"]
    assert c.get_run(other).info.status == "RUNNING"


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
