"""Pretraining of the tiny ``toy-clip`` on image-caption pairs drawn from the toy world's renderer.

What makes a tiny CLIP learn in minutes on 2 CPU cores (measured, issue 4): a small conv tower at 32 px, a
narrow 3-layer text tower run only up to the last EOT token (exact, causal mask), and a *class-contrastive*
objective: each image is scored against the class captions written with its own caption's template, so
there are no duplicate-caption false negatives. Logit scale: from 1/0.07, 10x learning rate, capped at 100.

Where the domain gap comes from (see ``captions.py``): drawings are captioned in their own medium's words,
and a class's second depiction (sunglasses for "glasses") is called by its specific name in photo captions,
which are scored against both names. So under photo wording a class name means its usual depiction, under
drawing wording the broad category: "a photo of a {c}." misses many drawings that "a painting of a {c}."
finds, though the image features are good. Captions of a medium that does not describe the image are further
negatives (``cross_style_negatives``), as a web batch would have them.

Images come from a separate RNG stream (``PRETRAIN_STREAM``), so no benchmark image is ever seen.
"""

from __future__ import annotations

import json
import math
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import open_clip
import torch
import torch.nn.functional as F
from tqdm import tqdm

from dapl.toy.captions import (
    CAPTION_STYLES,
    DOMAIN_CAPTION_MIX,
    FILLER_WORDS,
    SPECIFIC_NAMES,
)
from dapl.toy.pretrain_config import ToyPretrainConfig
from dapl.toy.world import PRETRAIN_STREAM, TOY_CLASSES, TOY_DOMAINS, class_display_name, render_batch
from dapl.toy.zeroshot import (
    MODEL_NAME,
    load_toy_clip,
    register_model_configs,
    render_world,
    zero_shot_report,
)

_MEAN = torch.tensor(open_clip.OPENAI_DATASET_MEAN).view(1, 3, 1, 1)
_STD = torch.tensor(open_clip.OPENAI_DATASET_STD).view(1, 3, 1, 1)
_STYLES = tuple(CAPTION_STYLES)


def _render_pool(cfg: ToyPretrainConfig) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(images NHWC uint8, labels, domain indices, depictions) of the pretraining stream."""
    rng = np.random.default_rng([cfg.seed, PRETRAIN_STREAM])
    k = len(TOY_CLASSES)
    labels = np.arange(cfg.pool_size) % k
    mix = np.array([cfg.domain_mix.get(d, 0.0) for d in TOY_DOMAINS], float)
    domains = rng.choice(len(TOY_DOMAINS), cfg.pool_size, p=mix / mix.sum())
    chunk = 500
    jobs = [
        (cfg.seed, labels[s : s + chunk], domains[s : s + chunk], s, cfg.render_size, cfg.depiction_b)
        for s in range(0, cfg.pool_size, chunk)
    ]
    if cfg.workers > 1:
        with ProcessPoolExecutor(max_workers=cfg.workers) as pool:
            parts = list(pool.map(_render_job, jobs))
    else:
        parts = [_render_job(j) for j in jobs]
    return np.concatenate([p[0] for p in parts]), labels, domains, np.concatenate([p[1] for p in parts])


def _render_job(args: tuple) -> tuple[np.ndarray, np.ndarray]:
    seed, labels, domains, start, size, p_other = args
    return render_batch(seed, labels, domains, start, size, p_other=p_other)


def _augment(
    images: torch.Tensor, out_size: int, scale: tuple[float, float], g: torch.Generator
) -> torch.Tensor:
    """Random resized crop + flip on a uint8 NHWC batch, resized like the eval transform (bicubic,
    antialiased), then CLIP-normalised."""
    x = images.permute(0, 3, 1, 2).float() / 255.0
    n = x.shape[0]
    area = torch.empty(n).uniform_(*scale, generator=g)
    logr = torch.empty(n).uniform_(math.log(3 / 4), math.log(4 / 3), generator=g)
    w = (area * logr.exp()).sqrt().clamp(max=1.0)
    h = (area / logr.exp()).sqrt().clamp(max=1.0)
    tx = (torch.rand(n, generator=g) * 2 - 1) * (1 - w)
    ty = (torch.rand(n, generator=g) * 2 - 1) * (1 - h)
    flip = torch.where(torch.rand(n, generator=g) < 0.5, -1.0, 1.0)
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0], theta[:, 0, 2], theta[:, 1, 1], theta[:, 1, 2] = w * flip, tx, h, ty
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
    x = F.interpolate(x, size=(out_size, out_size), mode="bicubic", antialias=True, align_corners=False)
    return (x.clamp(0, 1) - _MEAN) / _STD


def encode_text_cut(model, tokens: torch.Tensor) -> torch.Tensor:
    """``model.encode_text`` computed only up to the last EOT position: identical output (causal mask), far
    fewer positions than the 77 of the context."""
    eot = tokens.argmax(dim=-1)
    n = int(eot.max()) + 1
    x = model.token_embedding(tokens[:, :n]) + model.positional_embedding[:n]
    x = model.transformer(x, attn_mask=model.attn_mask[:n, :n])
    x = model.ln_final(x)
    x = x[torch.arange(x.shape[0]), eot]
    return x @ model.text_projection


def filler_vocabulary(bank: torch.Tensor, tokenizer, kind: str) -> np.ndarray:
    """Filler token ids that no caption uses, so a prefix never says a medium or a class name: the neutral
    ``FILLER_WORDS`` ("words"), or every ordinary BPE token between the byte tokens and SOT/EOT ("random")."""
    if kind == "words":
        ids = tokenizer(list(FILLER_WORDS))
        pool = ids[:, 1][ids.argmax(-1) == 2].numpy()  # words that are one token
    elif kind == "random":
        pool = np.arange(256, 49406)
    else:
        raise ValueError(f"filler {kind!r}: choose 'words' or 'random'")
    return np.setdiff1d(pool, bank.unique().numpy())


def _with_filler(captions: torch.Tensor, name_at: int, rng: np.random.Generator, filler_max: int,
                 vocab: np.ndarray) -> torch.Tensor:
    """The captions of one template (rows; the class name starts at token ``name_at``) with 0..filler_max random
    ``vocab`` tokens inserted, split at random between the front (after SOT) and just before the class name.

    Shared by every class it is compared across, like a learned DAPL context. The part before the name puts a
    medium's words ("a painting of a") far from the class name, so the tower learns to read them at any distance,
    as a learned context 16 + 16 positions long must be read. EOT stays inside the context length."""
    f = int(rng.integers(0, filler_max + 1)) if filler_max > 0 else 0
    if f == 0:
        return captions
    n, context = captions.shape
    front = int(rng.integers(0, f + 1))
    fill = torch.from_numpy(vocab[rng.integers(0, len(vocab), f)]).to(captions.dtype).expand(n, f)
    parts = [captions[:, :1], fill[:, :front], captions[:, 1:name_at], fill[:, front:], captions[:, name_at:]]
    return torch.cat(parts, dim=1)[:, :context]


def _caption_bank(tokenizer) -> tuple[list[tuple[str, str]], torch.Tensor, list[int]]:
    """All (style, template) pairs, their tokenised captions, shape (templates, 2K, 77): the K class names, then
    the K specific names of the classes' second depictions; and per template the position of the class name."""
    entries = [(s, t) for s in _STYLES for t in CAPTION_STYLES[s]]
    names = [class_display_name(c) for c in TOY_CLASSES] + [SPECIFIC_NAMES[c] for c in TOY_CLASSES]
    tokens = torch.stack([tokenizer([t.format(c=n) for n in names]) for _, t in entries])
    head = tokenizer([t.split("{c}")[0].strip() for _, t in entries])
    name_at = [int(h.argmax()) for h in head]  # SOT + the words before "{c}" (EOT's index in the head alone)
    return entries, tokens, name_at


def _candidates(
    cfg: ToyPretrainConfig,
    rng: np.random.Generator,
    labels: np.ndarray,
    dom: np.ndarray,
    variant: np.ndarray,
    p_style: np.ndarray,
    valid: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """Which captions each image is scored against (B, styles, 2K) and the index of its own caption.

    Own style: the K class names and the K specific names (so "a photo of a glasses" must not claim a photo
    captioned "sunglasses"). Styles that do not describe the image: the K class names as negatives, for a
    ``cross_style_negatives`` share of the images.
    """
    n, k, n_styles = len(labels), len(TOY_CLASSES), len(_STYLES)
    style = (rng.random((n, 1)) < p_style[dom].cumsum(1)).argmax(1)
    rate = np.array([cfg.specific_name_rate.get(d, 0.0) for d in TOY_DOMAINS])[dom]
    named_specific = (variant == 1) & (rng.random(n) < rate)
    neg = rng.random(n) < cfg.cross_style_negatives
    allowed = np.zeros((n, n_styles, 2 * k), bool)
    rows = np.arange(n)
    allowed[rows, style, :] = True
    # a second depiction captioned by its class name: its specific name is true as well, not a negative
    loose = (variant == 1) & ~named_specific
    allowed[rows[loose], style[loose], k + labels[loose]] = False
    allowed[:, :, :k] |= (~valid[dom] & neg[:, None])[:, :, None]
    target = style * 2 * k + labels + k * named_specific
    return allowed, target


def _style_tables(cfg: ToyPretrainConfig) -> tuple[np.ndarray, np.ndarray]:
    """P(style | domain) (D, S) and valid(style | domain) (D, S)."""
    p = np.array([[DOMAIN_CAPTION_MIX[d].get(s, 0.0) for s in _STYLES] for d in TOY_DOMAINS])
    return p / p.sum(1, keepdims=True), p > 0


def _param_groups(model, cfg: ToyPretrainConfig) -> list[dict]:
    decay, no_decay, scale = [], [], []
    for name, p in model.named_parameters():
        if name == "logit_scale":
            scale.append(p)
        elif p.ndim < 2 or "embedding" in name or ".bn" in name:
            no_decay.append(p)
        else:
            decay.append(p)
    return [
        {"params": decay, "weight_decay": cfg.weight_decay, "lr_mult": 1.0},
        {"params": no_decay, "weight_decay": 0.0, "lr_mult": 1.0},
        {"params": scale, "weight_decay": 0.0, "lr_mult": cfg.logit_scale_lr_mult},
    ]


def _lr_at(step: int, cfg: ToyPretrainConfig) -> float:
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    t = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
    return cfg.lr * 0.5 * (1 + math.cos(math.pi * min(t, 1.0)))


def train_toy_clip(cfg: ToyPretrainConfig) -> tuple[torch.nn.Module, dict]:
    """Train a fresh ``toy-clip`` in memory; returns (model in eval mode, training metrics)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(cfg.num_threads)
    try:
        return _train(cfg)
    finally:
        torch.set_num_threads(threads)


def _train(cfg: ToyPretrainConfig) -> tuple[torch.nn.Module, dict]:
    t0 = time.perf_counter()
    register_model_configs()
    torch.manual_seed(cfg.seed)
    model = open_clip.create_model(MODEL_NAME)
    tokenizer = open_clip.get_tokenizer(MODEL_NAME)
    image_size = int(model.visual.image_size)

    pool, labels, domains, variants = _render_pool(cfg)
    t_render = time.perf_counter() - t0
    pool_t = torch.from_numpy(pool)
    entries, bank, name_at = _caption_bank(tokenizer)
    filler_vocab = filler_vocabulary(bank, tokenizer, cfg.filler)
    if int(bank.argmax(-1).max()) + 1 + cfg.filler_max > bank.shape[-1]:
        raise ValueError(f"filler_max={cfg.filler_max} would push the longest caption's EOT past the "
                         f"{bank.shape[-1]}-token context; lower it")
    style_of = np.array([_STYLES.index(s) for s, _ in entries])
    p_style, valid = _style_tables(cfg)
    n_styles = len(_STYLES)
    opt = torch.optim.AdamW(_param_groups(model, cfg), lr=cfg.lr, betas=(0.9, 0.98), eps=1e-6, fused=True)
    rng = np.random.default_rng([cfg.seed, PRETRAIN_STREAM, 1])
    g = torch.Generator().manual_seed(cfg.seed)
    max_scale = math.log(cfg.max_logit_scale)
    history: list[dict] = []
    model.train()
    bar = tqdm(range(cfg.steps), desc="pretrain toy-clip", disable=not cfg.progress)
    steps_done = 0
    for step in bar:
        if cfg.max_minutes is not None and time.perf_counter() - t0 > cfg.max_minutes * 60:
            break
        lr = _lr_at(step, cfg)
        for group in opt.param_groups:
            group["lr"] = lr * group["lr_mult"]
        idx = rng.integers(0, len(labels), cfg.batch_size)
        # one template per style this step; each image captioned in a style drawn from its domain's mix
        tmpl = np.array([rng.choice(np.flatnonzero(style_of == s)) for s in range(n_styles)])
        allowed, target = _candidates(cfg, rng, labels[idx], domains[idx], variants[idx], p_style, valid)

        x = _augment(pool_t[idx], image_size, cfg.crop_scale, g)
        img = F.normalize(model.encode_image(x), dim=-1)
        # one forward per style: each is cut at its own last EOT, so short captions do not pay for long ones
        txt = F.normalize(torch.cat([encode_text_cut(model, _with_filler(bank[t], name_at[t], rng, cfg.filler_max,
                                                                  filler_vocab))
                                     for t in tmpl]), dim=-1)
        logits = model.logit_scale.exp() * img @ txt.T  # (B, styles * 2K)
        logits = logits.masked_fill(~torch.from_numpy(allowed.reshape(len(idx), -1)), float("-inf"))
        target = torch.from_numpy(target)
        loss = F.cross_entropy(logits, target)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, max_scale)
        steps_done = step + 1
        acc = float((logits.argmax(1) == target).float().mean())
        history.append({"step": step, "loss": float(loss.detach()), "acc": acc})
        if step % 10 == 0:
            scale = float(model.logit_scale.detach().exp())
            bar.set_postfix(loss=f"{history[-1]['loss']:.3f}", acc=f"{acc:.2f}", scale=f"{scale:.1f}")
    bar.close()
    model.eval()
    win = max(1, min(20, len(history) // 4))
    first = np.mean([h["loss"] for h in history[:win]]) if history else float("nan")
    last = np.mean([h["loss"] for h in history[-win:]]) if history else float("nan")
    metrics = {
        "steps": steps_done,
        "render_seconds": round(t_render, 1),
        "train_seconds": round(time.perf_counter() - t0 - t_render, 1),
        "loss_first": float(first),  # mean over the first (last) min(20, steps/4) steps
        "loss_last": float(last),
        "logit_scale": float(model.logit_scale.detach().exp()),
        "stopped_by_time": steps_done < cfg.steps,
    }
    return model, metrics


def save_open_clip_checkpoint(model: torch.nn.Module, out_path: Path) -> None:
    """State dict in open_clip format, floating tensors in fp16 (half the bytes; loads into fp32 params)."""
    sd = {
        k: (v.half() if v.is_floating_point() else v).detach().clone() for k, v in model.state_dict().items()
    }
    out_path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(sd, out_path)


def record_zero_shot(checkpoint: Path, seed: int = 0, images_per_class: int = 20) -> dict:
    """Reload ``checkpoint`` through the standard loader and score it on a small benchmark world; the
    figures are merged into ``<stem>.json`` (what the checkpoint test checks again)."""
    checkpoint = Path(checkpoint)
    loaded, preprocess, tokenizer = load_toy_clip(checkpoint)
    world = render_world(seed, images_per_class)
    rec = {
        "zero_shot": zero_shot_report(loaded, preprocess, tokenizer, world),
        "eval_world": {"seed": seed, "images_per_class": images_per_class},
        "checkpoint_bytes": checkpoint.stat().st_size,
    }
    path = checkpoint.with_suffix(".json")
    old = json.loads(path.read_text()) if path.is_file() else {}
    path.write_text(json.dumps({**old, **rec}, indent=2, sort_keys=True) + "\n")
    return rec


def pretrain_toy_clip(out_path: Path, config: ToyPretrainConfig | None = None) -> dict:
    """Pretrain, save the fp16 open_clip checkpoint at ``out_path`` and record its training metrics and
    zero-shot figures next to it (``<stem>.json``)."""
    cfg = config or ToyPretrainConfig()
    out_path = Path(out_path)
    t0 = time.perf_counter()
    model, metrics = train_toy_clip(cfg)
    save_open_clip_checkpoint(model, out_path)
    metrics["pretrain_seconds"] = round(time.perf_counter() - t0, 1)
    metrics["config"] = cfg.model_dump()
    out_path.with_suffix(".json").write_text(json.dumps(metrics, indent=2, sort_keys=True) + "\n")
    metrics.update(record_zero_shot(out_path, cfg.eval_seed, cfg.eval_images_per_class))
    return metrics
