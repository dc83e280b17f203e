"""The CLI end to end on a folder dataset: index -> zero-shot -> train -> evaluate -> predict."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from dapl.cli import main
from tests.conftest import tiny_params

REPO = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "open_clip", "timm", "prefect")
# Runs the front doors in a fresh interpreter and reports their exit codes and which heavy modules got imported.
FRONT_DOORS = """
import json, sys
from dapl.cli import main
codes = {}
try:
    main(["--help"])
except SystemExit as e:
    codes["help"] = e.code
codes["list"] = main(["data", "list"])
codes["fetch"] = main(["data", "fetch", "folder", "--root", "fold", "--source", "src"])
codes["index"] = main(["data", "index", "folder", "--root", "fold", "--workers", "1", "--out", "m.parquet"])
codes["config"] = main(["config", "--set", "train.epochs=3"])
codes["bad_key"] = main(["config", "--set", "train.lrr=0.1"])
codes["bad_value"] = main(["train", "--set", "train.lr=-1"])
codes["bad_toy"] = main(["toy", "pretrain", "--set", "stepz=1"])
print(json.dumps({"codes": codes, "heavy": sorted(m for m in HEAVY if m in sys.modules)}))
"""


def test_cli_stages_on_a_folder_dataset(tmp_path, blob_world, tiny_config_dir, capsys):
    manifest = tmp_path / "manifest.parquet"
    assert main(["data", "index", "folder", "--root", str(blob_world), "--out", str(manifest)]) == 0
    params = tiny_params(tmp_path, tiny_config_dir, data={
        "dataset": "folder", "root": str(blob_world), "manifest": str(manifest), "source": ["light"],
        "target": ["dark"]}, output_dir=str(tmp_path / "run"))
    c = ["-c", str(params)]
    assert main(["zero-shot", *c, "--out", str(tmp_path / "zs.json")]) == 0
    assert "coverage" in json.loads((tmp_path / "zs.json").read_text())
    assert main(["train", *c]) == 0
    run = tmp_path / "run"
    for f in ("prompts.safetensors", "prompts.json", "metrics.json", "history.csv", "nearest_tokens.txt",
              "per_class.csv", "confusion.csv", "checkpoint.pt"):
        assert (run / f).is_file(), f
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["oracle"]["label"].startswith("oracle")
    assert main(["evaluate", *c, "--prompts", str(run), "--out", str(tmp_path / "ev.json")]) == 0
    ev = json.loads((tmp_path / "ev.json").read_text())
    assert abs(ev["metrics"]["dark"]["accuracy"] - metrics["final"]["target_acc"]) < 1e-6
    capsys.readouterr()
    assert main(["predict", "--prompts", str(run), "--device", "cpu", str(blob_world / "dark" / "red_thing")]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 12 and all(len(line.split("\t")) == 3 for line in lines)
    _check_predict_on_bad_files(run, blob_world, tmp_path, capsys)


def _check_predict_on_bad_files(run: Path, blob_world: Path, tmp_path: Path, capsys) -> None:
    """A corrupt, an empty and a missing file are reported one by one; the readable image is still classified."""
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    (mixed / "corrupt.jpg").write_bytes(np.random.default_rng(0).bytes(2048))
    (mixed / "empty.jpg").write_bytes(b"")
    (mixed / "truncated.png").write_bytes((blob_world / "dark" / "red_thing" / "0.png").read_bytes()[:200])
    good = blob_world / "dark" / "red_thing" / "0.png"
    missing = tmp_path / "missing.png"
    assert main(["predict", "--prompts", str(run), "--device", "cpu", str(mixed), str(good), str(missing)]) == 0
    cap = capsys.readouterr()
    rows = {Path(line.split("\t")[0]).name: line.split("\t") for line in cap.out.strip().splitlines()}
    assert sorted(rows) == ["0.png", "corrupt.jpg", "empty.jpg", "missing.png", "truncated.png"]
    assert rows["0.png"][1] != "(error)" and 0 < float(rows["0.png"][2]) <= 1
    assert rows["empty.jpg"][1:] == ["(error)", "empty file"] and rows["missing.png"][1:] == ["(error)", "no such file"]
    assert rows["corrupt.jpg"][1] == rows["truncated.png"][1] == "(error)"
    warnings = cap.err.strip().splitlines()
    assert len(warnings) == 4 and all("dapl predict: warning:" in w for w in warnings)
    assert any(str(mixed / "corrupt.jpg") in w for w in warnings) and "Traceback" not in cap.err
    assert main(["predict", "--prompts", str(run), "--device", "cpu", str(mixed)]) == 2  # nothing readable
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("dapl predict: error: none of the 3 file(s) is a readable image")


def test_cli_reports_bad_input_clearly(tmp_path, capsys):
    assert main(["train", "--set", "data.manifest=" + str(tmp_path / "none.parquet")]) == 2
    err = capsys.readouterr().err
    assert "none.parquet" in err and "dapl data index" in err


def test_front_doors_import_no_torch_open_clip_timm_or_prefect(tmp_path):
    """``--help``, ``data list/fetch/index``, ``config`` and every config error answer without the heavy stack."""
    for dom in ("a", "b"):
        for cls in ("x", "y"):
            (tmp_path / "src" / dom / cls).mkdir(parents=True)
            for i in range(2):
                Image.new("RGB", (8, 8), (60 * i, 90, 0)).save(tmp_path / "src" / dom / cls / f"{i}.png")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    code = f"HEAVY = {HEAVY!r}\n{FRONT_DOORS}"
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
                         check=True).stdout
    report = json.loads(out.strip().splitlines()[-1])
    assert report["codes"] == {"help": 0, "list": 0, "fetch": 0, "index": 0, "config": 0, "bad_key": 2,
                               "bad_value": 2, "bad_toy": 2}
    assert report["heavy"] == []
    assert (tmp_path / "m.parquet").is_file()


@pytest.mark.parametrize("argv,expect", [
    (["config", "--set", "train.lrr=0.1"], "unknown key `train.lrr`; did you mean `train.lr`?"),
    (["config", "--set", "trian.lr=0.1"], "unknown key `trian.lr`; did you mean `train.lr`?"),
    (["train", "--set", "train.lr=-1"], "train.lr=-1: input should be greater than 0; `train.lr` takes float > 0"),
    (["config", "--set", "train.epochs=abc"], "`train.epochs` takes int >= 1 (default 25)"),
    (["config", "--set", "prompt.text=paperr"], "`prompt.text` takes 'paper' or 'official'"),
    (["config", "--set", "train.lr=[1"], "--set train.lr=[1: not valid YAML"),
    (["toy", "pretrain", "--set", "stepz=10"], "unknown key `stepz`; did you mean `steps`?"),
    (["toy", "pretrain", "--set", "lr=fast"], "`lr` takes float (default 0.002)"),
])
def test_config_errors_are_one_line_with_the_fix(argv, expect, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and expect in err, err
    assert "pydantic" not in err and "Traceback" not in err


def test_config_file_errors_name_the_file(tmp_path, capsys):
    bad_key, bad_yaml = tmp_path / "keys.yaml", tmp_path / "broken.yaml"
    bad_key.write_text(yaml.safe_dump({"dapl": {"train": {"lrr": 0.1}}}))
    bad_yaml.write_text("dapl:\n  train: [1\n")
    assert main(["config", "-c", str(bad_key)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{bad_key}: unknown key `train.lrr`; did you mean `train.lr`?" in err
    assert main(["config", "-c", str(bad_key), "--set", "train.lr=-1"]) == 2  # an argument's value: no file named
    err = capsys.readouterr().err
    assert err == ("dapl config: error: train.lr=-1: input should be greater than 0; `train.lr` takes float > 0 "
                   "(default 0.003) (and 1 more problem(s))\n")
    assert main(["config", "-c", str(bad_yaml)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{bad_yaml}: not valid YAML" in err


def test_every_public_dataset_name_resolves():
    """``dapl.datasets`` imports its submodules on first use; every name of ``__all__`` must still be there."""
    import dapl.datasets as ds

    for name in ds.__all__:
        assert getattr(ds, name) is not None, name
    with pytest.raises(AttributeError):
        ds.no_such_name  # noqa: B018
