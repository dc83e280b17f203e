"""OpenAI's real RN50 files, as full-size random stand-ins (tests/standins.py): refused under the GELU name,
loaded under ``RN50-quickgelu``, and one feature cache for both forms of the same weights."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

import dapl.features as features
from dapl.cli import main
from dapl.clip import load_clip
from dapl.config import ModelConfig
from dapl.features import FeatureCache
from dapl.imageset import ImageSet
from dapl.weights import CheckpointMismatchError, weights_digest
from tests.standins import FORMATS
from tests.tolerances import assert_close


@pytest.fixture(scope="session")
def rn50_bundles(rn50):
    """Both files loaded under the QuickGELU name (the slow part: two full RN50s)."""
    _, files = rn50
    return {fmt: load_clip(ModelConfig(name="RN50-quickgelu", pretrained=str(f), device="cpu"))
            for fmt, f in files.items()}


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    """root/<domain>/<class>/<i>.png: two domains, two classes, two noise images each (cheap at 224 px)."""
    root = tmp_path_factory.mktemp("rn50-world")
    rng = np.random.default_rng(0)
    for dom in ("light", "dark"):
        for cls in ("cat", "dog"):
            (root / dom / cls).mkdir(parents=True)
            for i in range(2):
                Image.fromarray(rng.integers(0, 256, (48, 48, 3), dtype=np.uint8)).save(root / dom / cls / f"{i}.png")
    return root


def _encodes(monkeypatch) -> list[tuple[int, int]]:
    """Record every encoder pass of the feature cache as ``(start, stop)``."""
    calls: list[tuple[int, int]] = []
    real = features.encode_range

    def counted(enc, images, tf, seed_fns, start, stop, **k):
        calls.append((start, stop))
        return real(enc, images, tf, seed_fns, start, stop, **k)

    monkeypatch.setattr(features, "encode_range", counted)
    return calls


@pytest.mark.parametrize("fmt", FORMATS)
def test_openai_rn50_under_the_gelu_name_is_refused_naming_the_quickgelu_name(rn50, fmt):
    _, files = rn50
    with pytest.raises(CheckpointMismatchError) as e:
        load_clip(ModelConfig(name="RN50", pretrained=str(files[fmt]), device="cpu"))
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith(f"{files[fmt]} is OpenAI's CLIP layout")
    assert "QuickGELU" in msg and msg.endswith("use --set model.name=RN50-quickgelu")


@pytest.mark.slow
def test_both_forms_load_to_one_digest_the_reference_features_and_one_cache(rn50, rn50_bundles, world, tmp_path,
                                                                            monkeypatch):
    model, files = rn50
    digests = {weights_digest(str(f)) for f in files.values()}
    assert len(digests) == 1 and len({b.identity for b in rn50_bundles.values()}) == 1
    sd, ts = rn50_bundles["state-dict"], rn50_bundles["torchscript"]
    assert all(torch.equal(v, ts.model.state_dict()[k]) for k, v in sd.model.state_dict().items())
    ref = copy.deepcopy(model).float().eval()  # the weights as built, widened: what both files must load to
    x = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        want = ref.encode_image(x)
    f = {fmt: b.encode_images(x) for fmt, b in rn50_bundles.items()}
    assert float(torch.nn.functional.cosine_similarity(want[0], want[1], dim=0)) < 0.99  # images told apart
    assert_close(f["state-dict"], want)
    assert_close(f["torchscript"], want)
    # one cache: extracting with the other form encodes nothing
    images = ImageSet.build(sorted(p.relative_to(world).as_posix() for p in (world / "dark").rglob("*.png")),
                            None, 0, world)
    calls = _encodes(monkeypatch)
    first = FeatureCache(tmp_path, sd, batch_size=4, num_workers=0, precision="fp32").test_features(images)
    assert calls == [(0, 4)]
    again = FeatureCache(tmp_path, ts, batch_size=4, num_workers=0, precision="fp32").test_features(images)
    assert calls == [(0, 4)] and torch.equal(first, again)


@pytest.mark.slow
def test_cli_zero_shot_refuses_gelu_then_shares_the_cache_between_forms(rn50, world, tmp_path, capsys, monkeypatch):
    _, files = rn50
    manifest = tmp_path / "manifest.parquet"
    assert main(["data", "index", "folder", "--root", str(world), "--out", str(manifest)]) == 0
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"dapl": {
        "model": {"name": "RN50", "pretrained": str(files["state-dict"]), "device": "cpu"},
        "features": {"cache_dir": str(tmp_path / "cache"), "num_workers": 0},
        "data": {"dataset": "folder", "root": str(world), "manifest": str(manifest),
                 "source": ["light"], "target": ["dark"]},
    }}))
    c = ["-c", str(params)]
    capsys.readouterr()
    assert main(["zero-shot", *c]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.endswith("use --set model.name=RN50-quickgelu")
    calls = _encodes(monkeypatch)
    outs = []
    for fmt in FORMATS:
        out = tmp_path / f"zs-{fmt}.json"
        assert main(["zero-shot", *c, "--set", "model.name=RN50-quickgelu", "--set",
                     f"model.pretrained={files[fmt]}", "--out", str(out)]) == 0
        outs.append(json.loads(out.read_text()))
    assert calls == [(0, 4)]  # the second form's zero-shot encoded nothing
    assert outs[0] == outs[1]
