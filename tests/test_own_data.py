"""Your own data: a labelled source folder and a flat unlabelled target, `dapl adapt` end to end, and bad input."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import polars as pl
import pytest

from dapl.cli import main
from dapl.errors import UserError
from dapl.own_data import index_own_data, read_labelled_sample
from tests.conftest import tiny_params


def _flat_target(blob_world: Path, out: Path) -> dict[str, str]:
    """The dark domain's images in one flat folder; returns file name -> its true class folder."""
    out.mkdir()
    truth = {}
    for cls in sorted(p.name for p in (blob_world / "dark").iterdir()):
        for f in sorted((blob_world / "dark" / cls).iterdir()):
            name = f"{cls}-{f.name}"
            shutil.copyfile(f, out / name)
            truth[name] = cls
    return truth


def _sample_csv(path: Path, rows: list[tuple[str, str]]) -> Path:
    path.write_text("path,label\n" + "".join(f"{p},{label}\n" for p, label in rows))
    return path


def test_own_data_manifest_has_an_unlabelled_target(tmp_path, blob_world):
    truth = _flat_target(blob_world, tmp_path / "target")
    (tmp_path / "target" / "notes.txt").write_text("not an image")
    m = index_own_data(blob_world / "light", tmp_path / "target", progress=False)
    assert m.domains == ["source", "target"] and m.class_folders == sorted(set(truth.values()))
    tgt = m.ok.filter(pl.col("domain") == "target")
    assert tgt.height == len(truth) and tgt["class_idx"].to_list() == [-1] * len(truth)
    assert m.df.filter(pl.col("path").str.ends_with("notes.txt"))["status"].to_list() == ["excluded"]
    kinds = m.problems["kind"].to_list()
    assert "unlabelled_domain" in kinds and "missing_class" not in kinds  # a flat target lacks no class
    sample = read_labelled_sample(_sample_csv(tmp_path / "s.csv", [(n, c) for n, c in list(truth.items())[:5]]),
                                  m, tmp_path / "target")
    assert len(sample) == 5 and [m.class_folders[k] for k in sample.labels] == list(truth.values())[:5]


def test_own_data_never_follows_a_link(tmp_path, blob_world):
    """A link in a source class folder or in the target is excluded and named, never read through."""
    src = tmp_path / "source"
    shutil.copytree(blob_world / "light", src)
    truth = _flat_target(blob_world, tmp_path / "target")
    outside = tmp_path / "outside.png"
    shutil.copyfile(tmp_path / "target" / next(iter(truth)), outside)
    cls = sorted(p.name for p in src.iterdir())[0]
    (src / cls / "linked.png").symlink_to(outside)
    (tmp_path / "target" / "linked.png").symlink_to(outside)
    m = index_own_data(src, tmp_path / "target", progress=False)
    assert not m.ok.filter(pl.col("path").str.ends_with("linked.png")).height
    linked = [n for n in m.notes if "linked.png" in (n.get("path") or "")]
    assert len(linked) == 2 and all(n["severity"] == "excluded" for n in linked), m.notes


def test_bad_own_data_is_one_clear_error(tmp_path, blob_world):
    truth = _flat_target(blob_world, tmp_path / "target")
    mixed = tmp_path / "mixed"
    shutil.copytree(tmp_path / "target", mixed)
    shutil.copytree(blob_world / "dark" / sorted(truth.values())[0], mixed / "red")
    with pytest.raises(UserError, match=r"holds folders with files \(red/\).*flat folder"):
        index_own_data(blob_world / "light", mixed, progress=False)
    with pytest.raises(UserError, match="no class folder"):
        index_own_data(tmp_path / "target", blob_world / "dark", progress=False)
    m = index_own_data(blob_world / "light", tmp_path / "target", progress=False)
    first = next(iter(truth))
    with pytest.raises(UserError, match=r"1 path\(s\) are not usable images.*nope.png"):
        read_labelled_sample(_sample_csv(tmp_path / "a.csv", [(first, truth[first]), ("nope.png", "red")]), m,
                             tmp_path / "target")
    with pytest.raises(UserError, match="unknown class label.*purple"):
        read_labelled_sample(_sample_csv(tmp_path / "b.csv", [(first, "purple")]), m, tmp_path / "target")


def test_adapt_reports_without_labels_and_scores_a_sample(tmp_path, blob_world, tiny_config_dir, capsys,
                                                         monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    truth = _flat_target(blob_world, tmp_path / "target")
    rows = list(truth.items())[::4]
    sample = _sample_csv(tmp_path / "sample.csv", rows)
    out = tmp_path / "adapt"
    args = ["adapt", "-c", str(tiny_params(tmp_path, tiny_config_dir)), "--source", str(blob_world / "light"),
            "--target", str(tmp_path / "target"), "--out", str(out), "--quiet"]
    assert main([*args, "--labelled-sample", str(sample), "--register", "own-dapl"]) == 0
    report = json.loads((out / "adapt_report.json").read_text())
    assert [m["method"] for m in report["methods"]] == ["zero_shot", "source_only", "dapl"]
    for m in report["methods"]:
        dist = m["predicted_classes"]
        assert sum(v["images"] for v in dist.values()) == len(truth)
        s = m["labelled_sample"]
        assert s["n"] == len(rows) and 0 <= s["accuracy"] <= 100 and "labelled sample" in s["note"]
    dapl = report["methods"][-1]
    assert len(dapl["pl_coverage_per_epoch"]) == 2 and dapl["selection"]["criterion"] == "im"
    # the exported prompts classify the sample as the report says
    assert main(["predict", "--prompts", report["exported"], *(str(tmp_path / "target" / p) for p, _ in rows)]) == 0
    lines = [ln.split("\t") for ln in capsys.readouterr().out.strip().splitlines()[-len(rows):]]
    names = json.loads((Path(report["exported"]) / "prompts.json").read_text())["classnames"]
    right = sum(cls == names[sorted(set(truth.values())).index(truth[Path(p).name])] for p, cls, _ in lines)
    assert abs(100 * right / len(rows) - dapl["labelled_sample"]["accuracy"]) < 1e-6
    # registered: the model by its alias classifies as the exported prompts do
    images = [str(tmp_path / "target" / p) for p, _ in rows]
    assert main(["predict", "--model", "models:/own-dapl@champion", *images]) == 0
    by_model = [ln.split("\t")[:2] for ln in capsys.readouterr().out.strip().splitlines()[-len(rows):]]
    assert by_model == [ln[:2] for ln in lines]
    assert "labelled-sample accuracy" in (out / "adapt_report.md").read_text()
    # bad input: one line, exit 2, nothing lost
    assert main([*args, "--labelled-sample", str(_sample_csv(tmp_path / "bad.csv", [("gone.png", "red")]))]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("dapl adapt: error:") and "gone.png" in err[0]
    assert (out / "adapt_report.json").is_file()
