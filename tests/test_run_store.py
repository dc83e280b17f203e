"""Each run planned and trained once: identical configs share one result within a plan (dapl.plan) and across
commands (dapl.run_store), with the same numbers as a training."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import polars as pl
import pytest

from dapl import run_store
from dapl.cli import main
from dapl.config import DaplConfig
from tests.conftest import tiny_params


def _task(*fingerprints: str | None) -> SimpleNamespace:
    sets = [None if f is None else SimpleNamespace(fingerprint=lambda f=f: f) for f in fingerprints]
    return SimpleNamespace(source=sets[0], target=sets[1], target_test=sets[2])


def test_run_key_follows_what_the_result_depends_on():
    cfg = DaplConfig()
    key = run_store.run_key(cfg, "model-a", _task("s", "t", None))
    assert key == run_store.run_key(cfg.with_overrides({"output_dir": "/elsewhere"}), "model-a", _task("s", "t", None))
    assert key != run_store.run_key(cfg.with_overrides({"train.lr": 0.1}), "model-a", _task("s", "t", None))
    assert key != run_store.run_key(cfg, "model-b", _task("s", "t", None))
    assert key != run_store.run_key(cfg, "model-a", _task("s", "t2", None))
    assert key != run_store.run_key(cfg, "model-a", _task("s", "t", "test"))


def _files(folder: Path) -> list[str]:
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if not p.is_dir())


def test_store_copies_a_finished_run_whole_and_never_links(tmp_path):
    trained = tmp_path / "runs" / "a"
    trained.mkdir(parents=True)
    for name in run_store.RESULT_FILES:
        (trained / name).parent.mkdir(exist_ok=True)
        (trained / name).write_text(json.dumps({"final": {}, "file": name}))
    (trained / "tracking_pending.json").write_text("{}")  # the run's own MLflow journal is not a result
    (tmp_path / "elsewhere.txt").write_text("x")
    (trained / "link.txt").symlink_to(tmp_path / "elsewhere.txt")
    cfg = DaplConfig().with_overrides({"features.cache_dir": str(tmp_path / "cache" / "features"),
                                       "output_dir": str(trained)})
    assert run_store.fetch(cfg, "k") is None
    run_store.record(cfg, "k")
    stored = tmp_path / "cache" / "runs" / "k"
    assert _files(stored) == sorted([*run_store.RESULT_FILES, run_store.ORIGIN_FILE])
    assert not any(p.is_symlink() for p in stored.rglob("*"))
    other = cfg.with_overrides({"output_dir": str(tmp_path / "runs" / "b")})
    summary, origin = run_store.fetch(other, "k")
    assert origin == trained.as_posix() and summary == {"final": {}, "file": "metrics.json"}
    copied = tmp_path / "runs" / "b"
    assert _files(copied) == sorted(run_store.RESULT_FILES)
    assert all((copied / n).read_bytes() == (trained / n).read_bytes() for n in run_store.RESULT_FILES)
    (trained / "metrics.json").write_text("{}")  # an entry is written once: a later record keeps it
    run_store.record(cfg, "k")
    assert json.loads((stored / "metrics.json").read_text())["file"] == "metrics.json"


@pytest.fixture()
def folder_params(tmp_path, blob_world, tiny_config_dir) -> Path:
    manifest = tmp_path / "manifest.parquet"
    assert main(["data", "index", "folder", "--root", str(blob_world), "--out", str(manifest)]) == 0
    return tiny_params(tmp_path, tiny_config_dir, views=1, data={
        "dataset": "folder", "root": str(blob_world), "manifest": str(manifest), "source": ["light"],
        "target": ["dark"]})


def test_identical_runs_train_once_across_commands(tmp_path, folder_params, monkeypatch):
    """`dapl benchmark` trains DAPL once; `dapl ablations` whose unified+domain setting, 2x2 cell and τ 0.5 cell
    are that configuration trains nothing and shows it under all three labels; a rerun trains nothing."""
    import dapl.stages

    trained: list[Path] = []
    adapt = dapl.stages.adapt

    def counting(cfg, **kw):
        trained.append(Path(cfg.output_dir))
        return adapt(cfg, **kw)

    monkeypatch.setattr(dapl.stages, "adapt", counting)
    c = ["-c", str(folder_params), "--quiet"]
    assert main(["benchmark", *c, "--methods", "dapl", "--pairs", "light->dark", "--runs-dir",
                 str(tmp_path / "bench")]) == 0
    assert trained == [tmp_path / "bench" / "light_dark" / "dapl" / "seed1"]
    bench = pl.read_csv(tmp_path / "bench" / "benchmark_runs.csv").row(0, named=True)
    assert main(["ablations", *c, "--pair", "light->dark", "--settings", "unified_domain", "--m1m2", "2x2",
                 "--taus", "0.5", "--pseudo", "paper", "--runs-dir", str(tmp_path / "abl")]) == 0
    assert len(trained) == 1, trained
    abl = pl.read_csv(tmp_path / "abl" / "ablations_runs.csv")
    assert abl["method"].to_list() == ["setting:unified_domain", "m1m2:2x2", "tau:0.5", "pseudo:paper"]
    assert abl["axis"].to_list() == ["setting", "m1m2", "tau", "pseudo"]
    assert set(abl["output_dir"].to_list()) == {str(tmp_path / "abl" / "light_dark" / "setting_unified_domain" /
                                                     "seed1")}
    assert all(abs(a - bench["accuracy"]) < 1e-9 for a in abl["accuracy"].to_list())
    shared = Path(abl["output_dir"][0])
    for name in ("metrics.json", "prompts.safetensors", "history.csv"):
        assert (shared / name).read_bytes() == (Path(bench["output_dir"]) / name).read_bytes(), name
    table = (tmp_path / "abl" / "ablations_table.md").read_text()
    assert all(label in table for label in ("setting:unified_domain", "m1m2:2x2", "tau:0.5", "pseudo:paper"))
    assert main(["benchmark", *c, "--methods", "dapl", "--pairs", "light->dark", "--runs-dir",
                 str(tmp_path / "bench")]) == 0
    assert len(trained) == 1  # its own finished run: read back, not trained again
    assert main(["benchmark", *c, "--methods", "dapl", "--pairs", "light->dark", "--runs-dir",
                 str(tmp_path / "lr"), "--set", "train.lr=0.01"]) == 0
    assert trained[1:] == [tmp_path / "lr" / "light_dark" / "dapl" / "seed1"]  # another config: trained
