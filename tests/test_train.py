"""The trainer: exactness of the fast path, the five settings, resume, selection, artifacts."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from dapl.artifacts import AdaptedClassifier, load_prompts, nearest_tokens, save_prompts
from dapl.clip import load_clip
from dapl.config import DaplConfig, PromptConfig, PromptSetting
from dapl.features import FeatureCache
from dapl.imageset import AdaptationData, ImageSet
from dapl.prompts import PromptLearner
from dapl.pseudo_labels import zero_shot_text
from dapl.train import train
from dapl.transforms import eval_transform
from tests.tolerances import assert_close

from .conftest import CLASSES


def blob_task(root: Path, per_class: int = 12) -> AdaptationData:
    def images(domain: str, d: int, labelled: bool = True) -> ImageSet:
        paths, labels = [], []
        for k, c in enumerate(CLASSES):
            for i in range(per_class):
                paths.append(f"{domain}/{c}/{i}.png")
                labels.append(k)
        return ImageSet.build(paths, labels if labelled else None, d, root)

    names = [c.replace("_", " ") for c in CLASSES]
    return AdaptationData(names, ["light", "dark"], images("light", 0), images("dark", 1))


def make_cfg(tmp_path: Path, model: str, **over) -> DaplConfig:
    base = {
        "model": {"name": model, "pretrained": None, "device": "cpu"},
        "prompt": {"m1": 2, "m2": 2},
        "features": {"views": 2, "cache_dir": str(tmp_path / "cache"), "num_workers": 0, "batch_size": 16},
        "train": {"epochs": 2, "batch_source": 8, "batch_target": 8, "lr": 0.01},
        "data": {"source": ["light"], "target": ["dark"]},
        "output_dir": str(tmp_path / "run"),
    }
    return DaplConfig.from_preset("paper", base).with_overrides(over)


@pytest.fixture(scope="module")
def vit(tiny_config_dir):
    return str(tiny_config_dir / "tiny-vit.json")


def test_cached_shared_path_matches_online_77_token_reference(tmp_path, blob_world, tiny_model_name):
    """Fast path (cached fp32 features, shared-prefix cut text encoder) == plain CLIP computation."""
    cfg = make_cfg(tmp_path, tiny_model_name, **{"features.dtype": "float32"})
    bundle = load_clip(cfg.model)
    task = blob_task(blob_world, per_class=3)
    imgs = task.target
    cache = FeatureCache(cfg.features.cache_dir, bundle, 8, 0, "float32", precision="fp32", memmap=False)
    cached = cache.test_features(imgs)
    learner = PromptLearner(bundle, task.classnames, task.domains, PromptConfig(m1=3, m2=2))
    y = torch.as_tensor(imgs.labels)

    # reference: image encoder on the fly, full 77-token prompts through CLIP's own encode_text path
    tf = eval_transform(bundle)
    x = torch.stack([tf(Image.open(imgs.resolve(i)).convert("RGB")) for i in range(len(imgs))])
    ref_img = bundle.model.encode_image(x)
    m = bundle.model
    M = 5
    emb = m.token_embedding(learner.tokens)
    ctx = torch.cat([learner.ctx_agnostic.expand(2, 4, -1, -1),
                     learner.ctx_domain.unsqueeze(1).expand(2, 4, -1, -1)], 2).flatten(0, 1)
    full = torch.cat([emb[:, :1], ctx, emb[:, 1 + M:]], 1) + m.positional_embedding
    h = m.ln_final(m.transformer(full, attn_mask=m.attn_mask))
    ref_text = h[torch.arange(8), learner.tokens.argmax(-1)] @ m.text_projection

    def logits_and_grads(img, text):
        logits = m.logit_scale.exp() * F.normalize(img, dim=-1) @ F.normalize(text, dim=-1).T
        loss = F.cross_entropy(logits, 4 + y)
        return logits, torch.autograd.grad(loss, [learner.ctx_agnostic, learner.ctx_domain])

    l_ref, g_ref = logits_and_grads(ref_img, ref_text)
    l_fast, g_fast = logits_and_grads(cached.float(), learner.text_features().flatten(0, 1))
    assert learner.shares_prefix
    assert_close(l_fast, l_ref)
    for a, b in zip(g_fast, g_ref, strict=True):
        assert_close(a, b)


@pytest.mark.parametrize("setting", [s for s in PromptSetting if s is not PromptSetting.manual])
def test_each_setting_trains_and_changes_the_loss(tmp_path, blob_world, vit, setting):
    p = PromptConfig.for_setting(setting, m1=2, m2=2).model_dump()
    cfg = make_cfg(tmp_path, vit, prompt=p, **{"train.epochs": 3})
    bundle = load_clip(cfg.model)
    res = train(cfg, bundle, blob_task(blob_world), progress=False)
    losses = [r["loss"] for r in res.history]
    assert len(losses) == 3 and all(np.isfinite(losses))
    assert losses[-1] != losses[0]
    before = PromptLearner(bundle, res.model.prompts.classnames, res.model.prompts.domains, cfg.prompt)
    before.reset_parameters(cfg.train.seed)
    changed = [not torch.equal(a, b) for a, b in
               zip(before.context_tensors().values(), res.model.prompts.context_tensors().values(), strict=True)]
    assert all(changed)
    assert "target_acc" in res.final and "pl_coverage" in res.final


def test_manual_setting_is_zero_shot(tmp_path, blob_world, vit):
    cfg = make_cfg(tmp_path, vit, prompt={"m1": 0, "m2": 0})
    res = train(cfg, load_clip(cfg.model), blob_task(blob_world), progress=False)
    assert res.final["target_acc"] == pytest.approx(res.zero_shot["target_acc"])


def test_no_pseudo_label_passes_tau_is_finite(tmp_path, blob_world, vit):
    cfg = make_cfg(tmp_path, vit, **{"pseudo.tau": 1.0})
    res = train(cfg, load_clip(cfg.model), blob_task(blob_world), progress=False)
    assert all(r["loss_target"] == 0.0 and np.isfinite(r["loss"]) for r in res.history)
    assert res.final["pl_coverage"] == 0.0


def test_resume_after_kill_is_bit_equal(tmp_path, blob_world, vit):
    """Bit-equal by construction: same process, same thread count, same inputs, same op order."""
    task = blob_task(blob_world)
    full_cfg = make_cfg(tmp_path / "a", vit, **{"train.epochs": 3})
    bundle = load_clip(full_cfg.model)
    full = train(full_cfg, bundle, task, progress=False)

    cut_cfg = make_cfg(tmp_path / "b", vit, **{"train.epochs": 3})

    class Killed(Exception):
        pass

    def die_after_first(rec):
        if rec["epoch"] == 1:
            raise Killed

    with pytest.raises(Killed):
        train(cut_cfg, bundle, task, on_epoch=die_after_first, progress=False)
    # the callback fires before the epoch checkpoint is written: the run resumes from epoch 0 or 1
    resumed = train(cut_cfg, bundle, task, progress=False)
    for k, v in full.model.prompts.context_tensors().items():
        assert torch.equal(v, resumed.model.prompts.context_tensors()[k])
    assert [r["loss"] for r in resumed.history] == [r["loss"] for r in full.history]


def test_training_neither_reads_nor_reseeds_the_global_rng(tmp_path, blob_world, vit):
    """torch's global RNG belongs to the caller and to the other threads of a flow: a run (feature extraction
    included) must leave it exactly as it found it, and what it learns must not depend on it."""
    task = blob_task(blob_world)
    bundle = load_clip(make_cfg(tmp_path, vit).model)
    torch.manual_seed(1234)
    state = torch.get_rng_state()
    a = train(make_cfg(tmp_path / "a", vit), bundle, task, progress=False)
    assert torch.equal(torch.get_rng_state(), state), "the run drew from or reseeded the global RNG"
    torch.manual_seed(99)
    torch.rand(1000)
    b = train(make_cfg(tmp_path / "b", vit), bundle, task, progress=False)
    for k, v in a.model.prompts.context_tensors().items():
        assert_close(b.model.prompts.context_tensors()[k], v, msg=k)
    assert [r["target_acc"] for r in b.history] == [r["target_acc"] for r in a.history]


def kill_after_checkpoint(cfg: DaplConfig, bundle, task: AdaptationData, epoch: int) -> dict:
    """Train to the end, then roll the checkpoint back to the one written after ``epoch``: what a kill right after
    that checkpoint leaves. Returns that checkpoint's state."""
    import dapl.train as tr
    from dapl.checkpoint import CHECKPOINT

    saved, orig = {}, tr.save_checkpoint

    def spy(out_dir, state):
        orig(out_dir, state)
        if state["epoch"] == epoch:
            saved["ck"], saved["state"] = (Path(out_dir) / CHECKPOINT).read_bytes(), state

    tr.save_checkpoint = spy
    try:
        train(cfg, bundle, task, progress=False)
    finally:
        tr.save_checkpoint = orig
    (Path(cfg.output_dir) / CHECKPOINT).write_bytes(saved["ck"])
    return saved["state"]


def test_resume_from_epoch_checkpoint(tmp_path, blob_world, vit):
    task = blob_task(blob_world)
    bundle = load_clip(make_cfg(tmp_path, vit).model)
    full = train(make_cfg(tmp_path / "a", vit, **{"train.epochs": 3}), bundle, task, progress=False)
    part_cfg = make_cfg(tmp_path / "b", vit, **{"train.epochs": 3})
    kill_after_checkpoint(part_cfg, bundle, task, epoch=2)  # a kill right after epoch 2's checkpoint
    seen = []
    resumed = train(part_cfg, bundle, task, on_epoch=lambda r: seen.append(r["epoch"]), progress=False)
    assert seen == [3]
    for k, v in full.model.prompts.context_tensors().items():
        assert torch.equal(v, resumed.model.prompts.context_tensors()[k])


def test_checkpoint_from_other_config_is_refused(tmp_path, blob_world, vit):
    task = blob_task(blob_world)
    cfg = make_cfg(tmp_path, vit)
    bundle = load_clip(cfg.model)
    train(cfg, bundle, task, progress=False)
    with pytest.raises(RuntimeError, match="different run"):
        train(cfg.with_overrides({"train.lr": 0.5}), bundle, task, progress=False)
    # same configuration, but the target files were rewritten under the same paths (a regenerated world)
    rewritten = dataclasses.replace(task, target=dataclasses.replace(
        task.target, digests=tuple(f"new{i}" for i in range(len(task.target)))))
    with pytest.raises(RuntimeError, match="image files differ"):
        train(cfg, bundle, rewritten, progress=False)
    train(cfg, bundle, task, progress=False)  # the original run still resumes (here: is already complete)


def test_label_free_selection_and_oracle(tmp_path, blob_world, vit):
    cfg = make_cfg(tmp_path, vit, **{"eval.selection": "source_val", "eval.source_val_fraction": 0.25,
                                      "train.epochs": 3})
    res = train(cfg, load_clip(cfg.model), blob_task(blob_world), progress=False)
    assert res.selection["criterion"] == "source_val"
    vals = [r["source_val_loss"] for r in res.history]
    assert res.selection["epoch"] == int(np.argmin(vals)) + 1
    assert "oracle" in res.oracle["label"]
    cfg2 = make_cfg(tmp_path / "pl", vit, **{"eval.selection": "pl_agreement"})
    res2 = train(cfg2, load_clip(cfg2.model), blob_task(blob_world), progress=False)
    assert all("pl_agreement" in r for r in res2.history) or res2.pseudo["coverage"] == 0


def test_online_mode_trains(tmp_path, blob_world, vit):
    cfg = make_cfg(tmp_path, vit, **{"features.mode": "online", "train.epochs": 1})
    res = train(cfg, load_clip(cfg.model), blob_task(blob_world, per_class=4), progress=False)
    assert np.isfinite(res.final["loss"])


def test_prompts_artifacts_roundtrip_and_classifier(tmp_path, blob_world, vit):
    random_cfg = make_cfg(tmp_path, vit)
    bundle = load_clip(random_cfg.model)
    torch.save(bundle.model.state_dict(), tmp_path / "w.pt")
    cfg = random_cfg.with_overrides({"model.pretrained": str(tmp_path / "w.pt")})
    bundle = load_clip(cfg.model)
    task = blob_task(blob_world)
    res = train(cfg, bundle, task, progress=False)
    out = save_prompts(tmp_path / "p", res.model.prompts, cfg, bundle.identity)
    tensors, meta = load_prompts(out)
    assert set(tensors) == {"ctx_agnostic", "ctx_domain"} and meta["domains"] == ["light", "dark"]
    dec = nearest_tokens(res.model.prompts, bundle, k=2)
    assert len(dec["agnostic"]) == 2 and set(dec["domain"]) == {"light", "dark"}
    clf = AdaptedClassifier.load(out, device="cpu")
    paths = [task.target.resolve(i) for i in range(8)]
    probs = clf.predict_proba(paths)
    assert probs.shape == (8, 4)
    assert_close(probs.sum(1), np.ones(8))
    # the classifier reproduces the trainer's own predictions on the target test view
    cache = FeatureCache(cfg.features.cache_dir, bundle, 16, 0, "float32", precision="fp32", memmap=False)
    f = F.normalize(cache.test_features(task.target.subset(range(8))).float(), dim=-1)
    text = F.normalize(res.model.prompts.text_features(), dim=-1)[1]
    assert (probs.argmax(1) == (f @ text.T).argmax(1).numpy()).all()
    # prompts learned on a random model cannot be rebuilt: a clear error, not silently wrong predictions
    save_prompts(tmp_path / "r", res.model.prompts, random_cfg, "tiny-vit:random")
    with pytest.raises(ValueError, match="randomly initialised"):
        AdaptedClassifier.load(tmp_path / "r")


def test_multi_target_domains(tmp_path, blob_world, vit):
    """Any number of domains: one domain context each; per-domain metrics plus the union."""
    base = blob_task(blob_world, per_class=6)
    dark2 = ImageSet(base.target.paths, base.target.labels, base.target.domains + 1, base.target.root)
    task = AdaptationData(base.classnames, ["light", "dark", "dark2"], base.source,
                          ImageSet.concat([base.target, dark2]))
    cfg = make_cfg(tmp_path, vit, **{"data.target": ["dark", "dark2"]})
    res = train(cfg, load_clip(cfg.model), task, progress=False)
    assert res.model.prompts.ctx_domain.shape[0] == 3
    assert set(res.target_metrics) == {"dark", "dark2", "all"}
    assert res.target_metrics["all"].n == 2 * res.target_metrics["dark"].n


def test_a_diverging_run_says_so(tmp_path, blob_world, vit, caplog):
    """A run whose loss blows up (non-finite) is flagged (history, result, log), not hidden. (Prompts that stop
    telling the classes apart are the other case; the tiny random model here cannot show it, since its untrained
    prompts already sit at chance: see tests/test_toy_dapl.py.)"""
    task = blob_task(blob_world, per_class=4)
    bundle = load_clip(make_cfg(tmp_path, vit).model)
    ok = train(make_cfg(tmp_path, vit, **{"output_dir": str(tmp_path / "ok")}), bundle, task, progress=False)
    assert ok.diverged is None and not any(r["diverged"] for r in ok.history)
    with caplog.at_level("WARNING", logger="dapl.train"):
        bad = train(make_cfg(tmp_path, vit, **{"train.lr": 1e20, "output_dir": str(tmp_path / "bad")}), bundle, task,
                    progress=False)
    assert bad.diverged is not None and bad.history[bad.diverged["epoch"] - 1]["diverged"]
    assert not np.isfinite(bad.diverged["source_loss"]) or bad.diverged["source_acc"] < bad.diverged["floor"]
    assert "diverged" in caplog.text


def test_max_grad_norm_bounds_a_step(tmp_path, blob_world, vit):
    """``train.max_grad_norm`` caps the prompt gradient's total norm: one SGD step (momentum buffer empty) then
    moves the context by at most lr * (max_norm + weight_decay * |context|); without it the same step moves more."""
    task = blob_task(blob_world, per_class=4)
    bundle = load_clip(make_cfg(tmp_path, vit).model)

    def first_step(max_norm: float) -> tuple[float, float, dict]:
        from dapl.model import DaplModel
        from dapl.train import Side, TrainStep, load_features, make_optimizer

        cfg = make_cfg(tmp_path, vit, **{"train.lr": 100.0, "train.max_grad_norm": max_norm,
                                         "output_dir": str(tmp_path / f"r{max_norm}")})
        model = DaplModel(bundle, task.classnames, task.domains, cfg.prompt, cfg.pseudo.template)
        model.prompts.reset_parameters(cfg.train.seed)
        src_views, tgt_views, *_ = load_features(cfg, bundle, task, progress=False)
        opt, sched = make_optimizer(model, cfg.train, iters=4)
        step = TrainStep(model, opt, sched, cfg.train, Side.of(src_views, task.source, bundle.device),
                         Side.of(tgt_views, task.target, bundle.device),
                         zero_shot_text(bundle, task.classnames, cfg.pseudo.template), cfg.tau)
        before = torch.cat([p.detach().flatten().clone() for p in model.parameters() if p.requires_grad])
        out = step(torch.arange(8), torch.arange(8), torch.Generator().manual_seed(0))
        after = torch.cat([p.detach().flatten() for p in model.parameters() if p.requires_grad])
        bound = cfg.train.lr * (max_norm + cfg.train.weight_decay * float(before.norm()))
        return float((after - before).norm()), bound, out

    moved, bound, out = first_step(1e-3)
    assert out["grad_clipped"] == 1.0
    assert moved <= bound * (1 + 1e-5), (moved, bound)
    unclipped, _, out = first_step(0.0)
    assert "grad_clipped" not in out
    assert unclipped > 10 * bound, (unclipped, bound)


def test_divergence_floor_needs_prompts_that_read_the_class():
    """The accuracy rule only applies when the untrained prompts beat twice chance: a random model's prompts (at
    chance) have nothing to lose, so a dip below chance is noise, not divergence; prompts that could read the class
    and fell to chance are flagged."""
    from dapl import divergence

    K = 4  # chance 0.25
    rec = {"epoch": 1, "loss": 1.4, "probe_source_loss": 1.5, "probe_source_acc": 0.15}
    assert divergence.check(rec, (1.39, 0.25), K) is None and not rec["diverged"]
    init = (0.5, 0.9)  # floor: 0.9 - 0.5 * (0.9 - 0.25) = 0.575
    ok = {"epoch": 1, "loss": 0.5, "probe_source_loss": 0.6, "probe_source_acc": 0.6}
    assert divergence.check(ok, init, K) is None and not ok["diverged"]
    bad = {"epoch": 2, "loss": 1.4, "probe_source_loss": 1.39, "probe_source_acc": 0.26}
    broke = divergence.check(bad, init, K)
    assert bad["diverged"] and broke["epoch"] == 2 and broke["floor"] == pytest.approx(0.575)
    nan = {"epoch": 3, "loss": float("nan"), "probe_source_loss": 1.0, "probe_source_acc": 0.9}
    assert divergence.check(nan, init, K) is not None and nan["diverged"]


def test_refreshed_labels_blend_zero_shot_and_model():
    """w = 0 is the paper's labeller exactly; w = 1 the model's argmax; τ applies to the blend."""
    from dapl.pseudo_labels import pseudo_label

    g = torch.Generator().manual_seed(0)
    feats, text = torch.randn(50, 8, generator=g), F.normalize(torch.randn(4, 8, generator=g), dim=-1)
    model = torch.randn(50, 4, generator=g).softmax(-1)
    paper = pseudo_label(feats, text, 10.0, 0.3)
    same = pseudo_label(feats, text, 10.0, 0.3, model, 0.0)
    assert torch.equal(same.labels, paper.labels) and torch.equal(same.confidence, paper.confidence)
    full = pseudo_label(feats, text, 10.0, 0.0, model, 1.0)
    assert torch.equal(full.labels, model.argmax(-1))
    half = pseudo_label(feats, text, 10.0, 0.6, model, 0.5)
    blend = 0.5 * (10.0 * F.normalize(feats, dim=-1) @ text.T).softmax(-1) + 0.5 * model
    assert_close(half.confidence, blend.max(-1).values)
    assert torch.equal(half.mask, half.confidence >= 0.6)


def test_template_ensemble_is_the_normalised_mean(tmp_path, vit):
    from dapl.pseudo_labels import zero_shot_text

    bundle = load_clip(make_cfg(tmp_path, vit).model)
    names = ["dog", "traffic_light"]
    one = zero_shot_text(bundle, names, "a photo of a {}.")
    assert torch.equal(zero_shot_text(bundle, names, ["a photo of a {}."]), one)
    two = zero_shot_text(bundle, names, ["a photo of a {}.", "a drawing of a {}."])
    other = zero_shot_text(bundle, names, "a drawing of a {}.")
    assert_close(two, F.normalize(one + other, dim=-1))
    with pytest.raises(ValueError, match="needs a"):
        zero_shot_text(bundle, names, ["a photo of a {}.", "no slot"])


def test_resume_with_refreshed_labels_is_exact(tmp_path, blob_world, vit):
    """A run that relabels every 2 epochs, killed after epoch 1, resumes to the same prompts: the blend partner
    computed at epoch 0 travels in the checkpoint."""
    task = blob_task(blob_world)
    over = {"train.epochs": 3, "pseudo.refresh": "constant", "pseudo.refresh_every": 2, "pseudo.tau": 0.0}
    bundle = load_clip(make_cfg(tmp_path, vit).model)
    full = train(make_cfg(tmp_path / "a", vit, **over), bundle, task, progress=False)
    assert [r["pl_weight"] for r in full.history] == [0.5, 0.5, 0.5]
    part_cfg = make_cfg(tmp_path / "b", vit, **over)
    state = kill_after_checkpoint(part_cfg, bundle, task, epoch=1)
    assert state["target_probs"] is not None
    resumed = train(part_cfg, bundle, task, progress=False)
    for k, v in full.model.prompts.context_tensors().items():
        assert torch.equal(v, resumed.model.prompts.context_tensors()[k])
    paper = train(make_cfg(tmp_path / "c", vit, **{**over, "pseudo.refresh": "none"}), bundle, task, progress=False)
    assert any(not torch.equal(v, paper.model.prompts.context_tensors()[k])
               for k, v in full.model.prompts.context_tensors().items())


def test_validators_are_scored_per_epoch_and_against_the_oracle(tmp_path, blob_world, vit):
    cfg = make_cfg(tmp_path, vit, **{"train.epochs": 3, "eval.selection": "im"})
    res = train(cfg, load_clip(cfg.model), blob_task(blob_world), progress=False)
    assert all({"val_entropy", "val_im", "val_snd"} <= set(r) for r in res.history)
    best_im = max(res.history, key=lambda r: r["val_im"])
    assert res.selection["epoch"] == best_im["epoch"]
    im = res.validators["val_im"]
    assert im["epoch"] == best_im["epoch"]
    assert im["regret"] == pytest.approx(im["oracle_target_metric"] - im["target_metric"]) and im["regret"] >= 0
