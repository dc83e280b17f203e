"""Prompt assembly and the text encoder's exactness against CLIP's own 77-token computation."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from dapl.clip import load_clip
from dapl.config import DaplConfig, ModelConfig, PromptConfig, PromptSetting
from dapl.prompts import PromptLearner, prompt_text
from dapl.pseudo_labels import zero_shot_text
from tests.tolerances import assert_close

CLASSES = ["dog", "traffic light", "alarm clock"]
DOMAINS = ["real_world", "clipart"]


@pytest.fixture(scope="module")
def bundle(tiny_model_name):
    return load_clip(ModelConfig(name=tiny_model_name, pretrained=None, device="cpu"))


def reference_text_features(bundle, learner: PromptLearner) -> torch.Tensor:
    """CLIP's encode_text over full 77-token sequences, with the learned rows written in place."""
    m = bundle.model
    tokens = learner.tokens
    emb = m.token_embedding(tokens).float()
    M = learner.cfg.m1 + learner.cfg.m2
    if learner.cfg.learned:
        rows = []
        K, D = learner.n_classes, learner.n_domains
        for d in range(D):
            for k in range(K):
                parts = []
                if learner.ctx_agnostic is not None:
                    a = learner.ctx_agnostic
                    parts.append(a[k] if a.dim() == 3 else a)
                if learner.ctx_domain is not None:
                    parts.append(learner.ctx_domain[d])
                rows.append(torch.cat(parts))
        ctx = torch.stack(rows)
        emb = torch.cat([emb[:, :1], ctx, emb[:, 1 + M:]], dim=1)
    x = emb + m.positional_embedding
    x = m.transformer(x, attn_mask=m.attn_mask)
    x = m.ln_final(x)[torch.arange(len(tokens)), tokens.argmax(-1)] @ m.text_projection
    return x.view(learner.n_domains, learner.n_classes, -1)


def test_paper_prompt_text_and_token_positions(bundle):
    cfg = PromptConfig(m1=4, m2=2)
    assert prompt_text(cfg, "traffic light", "clipart") == "X X X X X X traffic light."
    learner = PromptLearner(bundle, CLASSES, DOMAINS, cfg)
    tok = bundle.tokenizer
    x_id = int(tok(["X"])[0, 1])
    sot, eot = tok.sot_token_id, tok.eot_token_id
    for row in learner.tokens:
        assert int(row[0]) == sot
        assert (row[1:7] == x_id).all()
        n = int(row.argmax())
        assert int(row[n]) == eot
    # "traffic light." = 'traffic', 'light', '.'
    t = learner.tokens[1]
    assert int(t.argmax()) == 1 + 6 + 3
    assert learner.length == int(learner.tokens.argmax(-1).max()) + 1


def test_official_prompt_text(bundle):
    cfg = DaplConfig.from_preset("official", {"prompt.m1": 2, "prompt.m2": 2}).prompt
    assert prompt_text(cfg, "alarm clock", "real_world") == "X X X X alarm clock , a real_world image.."
    learner = PromptLearner(bundle, CLASSES, DOMAINS, cfg)
    dec = bundle.tokenizer.decode(learner.tokens[2 * 0 + 2].tolist())
    assert "alarm clock , a real _ world image .." in dec.replace("  ", " ")
    # domain-major order: index = d*K + k
    dec_clip = bundle.tokenizer.decode(learner.tokens[1 * 3 + 0].tolist())
    assert "dog , a clipart image" in dec_clip


@pytest.mark.parametrize("setting", list(PromptSetting))
@pytest.mark.parametrize("text", ["paper", "official"])
def test_cut_and_shared_match_full_77_token_reference(bundle, setting, text):
    cfg = PromptConfig.for_setting(setting, m1=3, m2=2, text=text)
    learner = PromptLearner(bundle, CLASSES, DOMAINS, cfg)
    learner.reset_parameters(seed=3)
    ref = reference_text_features(bundle, learner)
    cut = learner.text_features(shared=False)
    assert learner.length < 77
    assert_close(cut, ref)
    if learner.shares_prefix:
        shared = learner.text_features(shared=True)
        assert_close(shared, ref)
    chunked = learner.text_features(shared=False, chunk=2)
    assert_close(chunked, ref)


@pytest.mark.parametrize("setting", ["unified_domain", "class_specific_domain", "unified"])
def test_gradients_match_reference(bundle, setting):
    cfg = PromptConfig.for_setting(setting, m1=3, m2=2)
    learner = PromptLearner(bundle, CLASSES, DOMAINS, cfg)
    img = F.normalize(torch.randn(5, bundle.embed_dim), dim=-1)
    y = torch.tensor([0, 5, 2, 3, 1])

    def grads(text):
        loss = F.cross_entropy(10 * img @ F.normalize(text, dim=-1).flatten(0, 1).T, y)
        ps = [p for p in learner.parameters() if p.requires_grad]
        return torch.autograd.grad(loss, ps)

    g_ref = grads(reference_text_features(bundle, learner))
    for shared in ([False, True] if learner.shares_prefix else [False]):
        g = grads(learner.text_features(shared=shared))
        for a, b in zip(g, g_ref, strict=True):
            assert_close(a, b, msg=f"shared={shared}")
    g_chunk = grads(learner.text_features(shared=False, chunk=2))
    for a, b in zip(g_chunk, g_ref, strict=True):
        assert_close(a, b)


def test_init_from_words(bundle):
    learner = PromptLearner(bundle, CLASSES, DOMAINS, PromptConfig(m1=4, m2=0, init="a photo of a"))
    words = bundle.tokenizer(["a photo of a"])[0, 1:5]
    assert torch.equal(learner.ctx_agnostic.detach(), bundle.model.token_embedding(words))
    with pytest.raises(ValueError, match="tokens but prompt.m1"):
        PromptLearner(bundle, CLASSES, DOMAINS, PromptConfig(m1=3, m2=0, init="a photo of a"))


def test_init_words_then_random_like_dapl(bundle):
    """Source-only's unified M1 + M2 context: the first M1 vectors from the words, the other M2 N(0, std²),
    re-drawn by the training seed while the words stay."""
    learner = PromptLearner(bundle, CLASSES, DOMAINS, PromptConfig(m1=4 + 64, m2=0, init="a photo of a"))
    words = bundle.tokenizer(["a photo of a"])[0, 1:5]
    ctx = learner.ctx_agnostic.detach()
    assert ctx.shape[0] == 68 and torch.equal(ctx[:4], bundle.model.token_embedding(words))
    assert abs(float(ctx[4:].std()) - 0.02) < 0.004
    before = ctx.clone()
    learner.reset_parameters(seed=7)
    after = learner.ctx_agnostic.detach()
    assert torch.equal(after[:4], before[:4]) and not torch.equal(after[4:], before[4:])


def test_any_number_of_domains(bundle):
    learner = PromptLearner(bundle, CLASSES, ["a", "b", "c", "d", "e"], PromptConfig(m1=2, m2=2))
    assert learner.ctx_domain.shape[0] == 5
    assert learner.text_features().shape == (5, 3, bundle.embed_dim)


def test_init_distribution(bundle):
    learner = PromptLearner(bundle, CLASSES * 30, DOMAINS, PromptConfig(m1=16, m2=16, csc=True))
    assert abs(float(learner.ctx_agnostic.std()) - 0.02) < 0.002
    assert abs(float(learner.ctx_agnostic.mean())) < 0.002


@pytest.mark.parametrize("text", ["paper", "official"])
def test_folder_names_and_display_names_give_the_same_tokens(bundle, text):
    """The released code replaces ``_`` by a space itself: raw folder names must not change the prompts."""
    cfg = PromptConfig.for_setting("unified_domain", m1=2, m2=2, text=text)
    raw = PromptLearner(bundle, ["dog", "traffic_light", "alarm_clock"], DOMAINS, cfg)
    shown = PromptLearner(bundle, CLASSES, DOMAINS, cfg)
    assert torch.equal(raw.tokens, shown.tokens)
    manual = PromptConfig.for_setting("manual")
    assert torch.equal(PromptLearner(bundle, ["traffic_light"], DOMAINS, manual).tokens,
                       PromptLearner(bundle, ["traffic light"], DOMAINS, manual).tokens)
    assert torch.equal(zero_shot_text(bundle, ["traffic_light"], "a photo of a {}."),
                       zero_shot_text(bundle, ["traffic light"], "a photo of a {}."))
    dec = bundle.tokenizer.decode(raw.tokens[1].tolist())
    assert "traffic light" in dec and "traffic _" not in dec  # (the official text keeps the raw domain key)
