"""The CLI end to end on a folder dataset: index -> zero-shot -> train -> evaluate -> predict."""

from __future__ import annotations

import json

import torch
import yaml

from dapl.cli import main
from dapl.config import ModelConfig
from dapl.models import load_clip


def test_cli_stages_on_a_folder_dataset(tmp_path, blob_world, tiny_config_dir, capsys):
    model_cfg = str(tiny_config_dir / "tiny-vit.json")
    weights = tmp_path / "tiny.pt"
    torch.save(load_clip(ModelConfig(name=model_cfg, pretrained=None, device="cpu")).model.state_dict(), weights)
    manifest = tmp_path / "manifest.parquet"
    assert main(["data", "index", "folder", "--root", str(blob_world), "--out", str(manifest)]) == 0
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"dapl": {
        "model": {"name": model_cfg, "pretrained": str(weights), "device": "cpu"},
        "prompt": {"m1": 2, "m2": 2},
        "features": {"views": 2, "cache_dir": str(tmp_path / "cache"), "num_workers": 0},
        "train": {"epochs": 2, "batch_source": 8, "batch_target": 8},
        "data": {"dataset": "folder", "root": str(blob_world), "manifest": str(manifest),
                 "source": ["light"], "target": ["dark"]},
        "output_dir": str(tmp_path / "run"),
    }}))
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


def test_cli_reports_bad_input_clearly(tmp_path, capsys):
    assert main(["train", "--set", "data.manifest=" + str(tmp_path / "none.parquet")]) == 2
    err = capsys.readouterr().err
    assert "none.parquet" in err and "dapl data index" in err
