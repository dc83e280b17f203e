"""The adapted classifier as a table, as an MLflow model (logged, registered, loaded by alias) and served."""

from __future__ import annotations

import base64
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch
import yaml

from dapl.artifacts import AdaptedClassifier
from dapl.cli import main
from dapl.clip import load_clip
from dapl.config import ModelConfig
from tests.tolerances import assert_close

REPO = Path(__file__).resolve().parents[1]
NAME = "dapl-test-light-dark-dapl"
COLUMNS = ["path", "class", "probability", "top1_class", "top1_probability", "top2_class", "top2_probability",
           "top3_class", "top3_probability", "error"]


def _tiny_weights(path: Path, model_cfg: str, seed: int) -> Path:
    torch.manual_seed(seed)
    torch.save(load_clip(ModelConfig(name=model_cfg, pretrained=None, device="cpu")).model.state_dict(), path)
    return path


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, blob_world, tiny_config_dir) -> Path:
    """A run folder of `dapl train` (tiny ViT, 1 epoch, light -> dark)."""
    d = tmp_path_factory.mktemp("adapted")
    model_cfg = str(tiny_config_dir / "tiny-vit.json")
    weights = _tiny_weights(d / "tiny.pt", model_cfg, 0)
    manifest = d / "manifest.parquet"
    assert main(["data", "index", "folder", "--root", str(blob_world), "--out", str(manifest)]) == 0
    params = d / "params.yaml"
    params.write_text(yaml.safe_dump({"dapl": {
        "model": {"name": model_cfg, "pretrained": str(weights), "device": "cpu"},
        "prompt": {"m1": 2, "m2": 2},
        "features": {"views": 1, "cache_dir": str(d / "cache"), "num_workers": 0},
        "train": {"epochs": 1, "batch_source": 8, "batch_target": 8},
        "data": {"dataset": "folder", "root": str(blob_world), "manifest": str(manifest),
                 "source": ["light"], "target": ["dark"]},
        "output_dir": str(d / "run"),
    }}))
    assert main(["train", "-c", str(params)]) == 0
    return d / "run"


@pytest.fixture(scope="module")
def store(tiny_run) -> str:
    """A sqlite MLflow store beside the run, holding ``NAME`` version 1 (alias champion)."""
    from tasks.adapted_model import register_run_folder

    uri = f"sqlite:///{tiny_run.parent / 'mlflow.db'}"
    ref = register_run_folder(tiny_run, NAME, tracking_uri=uri)
    assert (ref.name, ref.version, ref.alias) == (NAME, "1", "champion")
    return uri


@pytest.fixture(scope="module")
def images(blob_world, tiny_run) -> list[Path]:
    """Four readable images of the target domain and one corrupt file."""
    bad = tiny_run.parent / "corrupt.png"
    bad.write_bytes(np.random.default_rng(0).bytes(512))
    good = [blob_world / "dark" / c / "0.png" for c in ("red_thing", "green_thing", "blue_thing", "yellow_thing")]
    return [*good, bad]


def _predict_out(capsys, out: Path, *args: str) -> pl.DataFrame:
    capsys.readouterr()
    assert main(["predict", "--device", "cpu", "--out", str(out), *args]) == 0
    return pl.read_csv(out) if out.suffix == ".csv" else pl.read_parquet(out)


def _check_against_classifier(table: pl.DataFrame, run: Path, images: list[Path]) -> None:
    """Each readable row is AdaptedClassifier.predict_proba's top 3 in order; the corrupt file is an error row."""
    clf = AdaptedClassifier.load(run, device="cpu")
    good, bad = images[:-1], images[-1]
    probs = clf.predict_proba(good)
    rows = {Path(r["path"]).name + Path(r["path"]).parent.name: r for r in table.iter_rows(named=True)}
    for p, pr in zip(good, probs, strict=True):
        r = rows[p.name + p.parent.name]
        order = np.argsort(-pr, kind="stable")[:3]
        assert [r[f"top{i}_class"] for i in (1, 2, 3)] == [clf.classnames[j] for j in order]
        got = [r[f"top{i}_probability"] for i in (1, 2, 3)]
        assert got == sorted(got, reverse=True)
        assert_close(got, pr[order], rtol=1e-5, atol=1e-6)
        assert r["class"] == r["top1_class"] and r["probability"] == r["top1_probability"] and r["error"] is None
    r = rows[bad.name + bad.parent.name]
    assert r["error"] == "unknown format or corrupt data" and r["class"] is None and r["probability"] is None


def test_predict_table_csv_and_parquet(tiny_run, images, tmp_path, capsys):
    for suffix in (".csv", ".parquet"):
        table = _predict_out(capsys, tmp_path / f"p{suffix}", "--prompts", str(tiny_run), *map(str, images))
        assert table.columns == COLUMNS and table.height == len(images)
        assert table["path"].to_list() == [str(p) for p in images]
        _check_against_classifier(table, tiny_run, images)
        err = capsys.readouterr().err
        assert f"dapl predict: warning: {images[-1]}: not a readable image" in err and "Traceback" not in err
    csv, parquet = pl.read_csv(tmp_path / "p.csv"), pl.read_parquet(tmp_path / "p.parquet")
    assert csv.drop("error").equals(parquet.drop("error"))
    # batches of 2 give the same table as one batch; --top-k 1 keeps one pair of columns
    again = _predict_out(capsys, tmp_path / "b.parquet", "--prompts", str(tiny_run), "--batch-size", "2",
                         "--top-k", "1", *map(str, images))
    assert again.columns == [*COLUMNS[:5], "error"]
    assert_close(np.array(again["probability"].fill_null(0)), np.array(parquet["probability"].fill_null(0)),
                 rtol=1e-5)


def test_predict_table_bad_out_path(tiny_run, images, tmp_path, capsys):
    assert main(["predict", "--prompts", str(tiny_run), "--out", str(tmp_path / "p.txt"), str(images[0])]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"dapl predict: error: --out {tmp_path / 'p.txt'}: give a file ending in .csv or .parquet"]


def test_registered_model_by_alias_predicts_as_the_prompts(tiny_run, store, images, tmp_path, monkeypatch, capsys):
    import mlflow

    from tasks.adapted_model import load_adapted_model

    monkeypatch.setenv("MLFLOW_TRACKING_URI", store)
    # the CLI registers a second version and moves the alias onto it
    assert main(["register", str(tiny_run), "--name", NAME]) == 0
    assert f"registered {NAME} version 2, alias champion" in capsys.readouterr().out
    assert str(mlflow.MlflowClient(store).get_model_version_by_alias(NAME, "champion").version) == "2"
    uri = f"models:/{NAME}@champion"
    expected = _predict_out(capsys, tmp_path / "prompts.parquet", "--prompts", str(tiny_run), *map(str, images))
    via_model = _predict_out(capsys, tmp_path / "model.parquet", "--model", uri, *map(str, images))
    assert via_model.columns == COLUMNS
    assert via_model.select("path", "class", "error").equals(expected.select("path", "class", "error"))
    for c in ("probability", "top1_probability", "top2_probability", "top3_probability"):
        assert_close(np.array(via_model[c].fill_null(0)), np.array(expected[c].fill_null(0)), rtol=0, atol=1e-5)
    # pyfunc predict on paths and on base64 image bytes
    model = load_adapted_model(uri)
    meta = model.metadata.metadata["dapl"]
    prompts_meta = json.loads((tiny_run / "prompts.json").read_text())
    assert meta["model_identity"] == prompts_meta["model_identity"] and meta["domain"] == "dark"
    assert meta["classnames"] == prompts_meta["classnames"] and meta["config"] == prompts_meta["config"]
    import pandas as pd

    by_path = model.predict(pd.DataFrame({"path": [str(p) for p in images]}))
    by_image = model.predict(pd.DataFrame({"image": [base64.b64encode(p.read_bytes()).decode() for p in images]}))
    for out in (by_path, by_image):
        assert out["class"].tolist()[:-1] == expected["class"].to_list()[:-1]
        assert_close(out["probability"].tolist()[:-1], expected["probability"].to_list()[:-1], rtol=0, atol=1e-5)
        assert out["error"].tolist()[-1] == "unknown format or corrupt data" and out["probability"].tolist()[-1] is None


def test_model_uri_that_does_not_exist_is_one_line(store, images, monkeypatch, capsys):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store)
    assert main(["predict", "--model", "models:/no-such-model@champion", str(images[0])]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("dapl predict: error: --model models:/no-such-model@champion: "
                                               "cannot be loaded from ")


def test_model_refuses_other_clip_weights(tiny_run, store, images, tmp_path, monkeypatch, capsys):
    """The weights file the prompts' config names now holds other weights: loading says so, in one line."""
    other = tmp_path / "run"
    other.mkdir()
    (other / "prompts.safetensors").write_bytes((tiny_run / "prompts.safetensors").read_bytes())
    meta = json.loads((tiny_run / "prompts.json").read_text())
    model_cfg = meta["config"]["model"]["name"]
    meta["config"]["model"]["pretrained"] = str(_tiny_weights(tmp_path / "swapped.pt", model_cfg, 1))
    (other / "prompts.json").write_text(json.dumps(meta))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store)
    assert main(["register", str(other), "--name", "dapl-swapped"]) == 0
    capsys.readouterr()
    assert main(["predict", "--model", "models:/dapl-swapped@champion", str(images[0])]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "these prompts were learned on CLIP file:" in err[0] and "swapped.pt" in err[0]
    assert main(["predict", "--prompts", str(other), str(images[0])]) == 2  # the run folder itself: the same check
    assert "these prompts were learned on CLIP file:" in capsys.readouterr().err


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _post(url: str, payload: dict) -> dict:
    req = urllib.request.Request(url, json.dumps(payload).encode(), {"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=120) as r:
        return json.loads(r.read())


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
        return True
    except ProcessLookupError:
        return False


@pytest.mark.slow
def test_served_model_answers_as_dapl_predict(tiny_run, store, images, tmp_path, capsys):
    """A real `mlflow models serve` of models:/NAME@champion on 127.0.0.1; stopped (its process group) after."""
    expected = _predict_out(capsys, tmp_path / "expected.parquet", "--prompts", str(tiny_run), *map(str, images))
    port = _free_port()
    env = {**os.environ, "MLFLOW_TRACKING_URI": store,  # uvicorn: the venv's bin, as `source .venv/bin/activate`
           "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]),
           "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    log = open(tmp_path / "serve.log", "ab")  # noqa: SIM115 - the child owns it
    proc = subprocess.Popen([sys.executable, "-m", "mlflow", "models", "serve", "-m", f"models:/{NAME}@champion",
                             "--env-manager", "local", "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
                            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                            start_new_session=True)
    log.close()
    try:
        base = f"http://127.0.0.1:{port}"
        end = time.monotonic() + 240  # 20-60 s on 2 busy cores
        while time.monotonic() < end and proc.poll() is None:
            with contextlib.suppress(OSError), urllib.request.urlopen(f"{base}/ping", timeout=2) as r:
                if r.status == 200:
                    break
            time.sleep(1)
        else:
            pytest.fail(f"mlflow models serve did not answer: {(tmp_path / 'serve.log').read_text()[-3000:]}")
        by_path = _post(f"{base}/invocations", {"dataframe_split": {
            "columns": ["path"], "data": [[str(p)] for p in images]}})["predictions"]
        by_image = _post(f"{base}/invocations", {"dataframe_split": {
            "columns": ["image"], "data": [[base64.b64encode(p.read_bytes()).decode()] for p in images]}})
        for rows in (by_path, by_image["predictions"]):
            assert [r["class"] for r in rows[:-1]] == expected["class"].to_list()[:-1]
            for c in ("probability", "top1_probability", "top2_probability", "top3_probability"):
                assert_close([r[c] for r in rows[:-1]], expected[c].to_numpy()[:-1], rtol=0, atol=1e-5)
            assert rows[-1]["error"] == "unknown format or corrupt data" and rows[-1]["class"] is None
            assert rows[-1]["probability"] is None and rows[-1]["top3_probability"] is None  # null, not NaN
            assert all(r["error"] is None for r in rows[:-1])
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
        deadline = time.monotonic() + 30
        while _group_alive(proc.pid) and time.monotonic() < deadline:  # uvicorn's worker leaves after its parent
            time.sleep(0.5)
        if _group_alive(proc.pid):
            os.killpg(proc.pid, signal.SIGKILL)
    assert not _group_alive(proc.pid)
