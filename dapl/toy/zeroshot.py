"""Zero-shot checks of the toy CLIP: per-domain accuracy, confidence coverage at the pseudo-label threshold τ,
and the same with each domain's own caption phrasing (how much a learned domain context could recover).

It goes through the same loader and preprocessing as real weights (``open_clip.create_model`` on the
registered ``toy-clip`` config), so the figures it records are the ones the pipeline will see.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import open_clip
import torch
import torch.nn.functional as F
from PIL import Image

from dapl.toy.captions import MANUAL_PROMPT, OWN_TEMPLATE
from dapl.toy.world import TOY_CLASSES, TOY_DOMAINS, WORLD_STREAM, class_display_name, image_rng, render

MODEL_NAME = "toy-clip"
MODEL_CONFIG_DIR = Path(__file__).resolve().parents[1] / "model_configs"
DEFAULT_CHECKPOINT = Path(__file__).resolve().parents[1] / "assets" / "toy-clip.pt"

DomainImages = dict[str, tuple[list[Image.Image], np.ndarray]]


def register_model_configs() -> None:
    """Make ``toy-clip`` (and every other JSON in dapl/model_configs) known to open_clip; idempotent."""
    if MODEL_NAME not in open_clip.list_models():
        open_clip.add_model_config(MODEL_CONFIG_DIR)


def load_toy_clip(checkpoint: Path | str = DEFAULT_CHECKPOINT) -> tuple[torch.nn.Module, object, object]:
    """(model in eval mode, fp32; validation preprocess; tokenizer), through the standard open_clip path."""
    register_model_configs()
    model, _, preprocess = open_clip.create_model_and_transforms(MODEL_NAME, pretrained=str(checkpoint))
    return model.float().eval(), preprocess, open_clip.get_tokenizer(MODEL_NAME)


def render_world(
    seed: int = 0,
    images_per_class: int = 20,
    size: int = 64,
    domains: Sequence[str] = TOY_DOMAINS,
    stream: int = WORLD_STREAM,
) -> DomainImages:
    """In memory, the same pixels ``generate_world`` writes for the first ``images_per_class`` indices."""
    out: DomainImages = {}
    for dom in domains:
        imgs, labels = [], []
        for c in range(len(TOY_CLASSES)):
            for i in range(images_per_class):
                imgs.append(render(c, dom, image_rng(seed, dom, c, i, stream), size))
                labels.append(c)
        out[dom] = (imgs, np.asarray(labels, np.int64))
    return out


def load_world(root: Path | str, domains: Sequence[str] = TOY_DOMAINS) -> DomainImages:
    """Read a written world (``root/<domain>/<class>/*.png``) back, labels by ``TOY_CLASSES`` order."""
    out: DomainImages = {}
    for dom in domains:
        imgs, labels = [], []
        for c, name in enumerate(TOY_CLASSES):
            for p in sorted((Path(root) / dom / name).glob("*.png")):
                with Image.open(p) as im:
                    imgs.append(im.convert("RGB"))
                labels.append(c)
        out[dom] = (imgs, np.asarray(labels, np.int64))
    return out


@torch.no_grad()
def text_features(model, tokenizer, template: str, classes: Sequence[str] = TOY_CLASSES) -> torch.Tensor:
    tokens = tokenizer([template.format(c=class_display_name(c)) for c in classes])
    return F.normalize(model.encode_text(tokens).float(), dim=-1)


@torch.no_grad()
def image_features(model, preprocess, images: Sequence[Image.Image], batch_size: int = 512) -> torch.Tensor:
    feats = []
    for i in range(0, len(images), batch_size):
        x = torch.stack([preprocess(im) for im in images[i : i + batch_size]])
        feats.append(F.normalize(model.encode_image(x).float(), dim=-1))
    return torch.cat(feats)


def score(probs: torch.Tensor, labels: np.ndarray, taus: Sequence[float]) -> dict:
    """Accuracy, and per τ the share of images whose top probability reaches τ and their accuracy."""
    conf, pred = probs.max(dim=1)
    correct = pred.numpy() == labels
    out = {"acc": float(correct.mean())}
    for tau in taus:
        keep = conf.numpy() >= tau
        out[f"coverage@{tau}"] = float(keep.mean())
        out[f"acc@{tau}"] = float(correct[keep].mean()) if keep.any() else float("nan")
    return out


@torch.no_grad()
def zero_shot_report(
    model,
    preprocess,
    tokenizer,
    world: DomainImages,
    templates: dict[str, str] | None = None,
    taus: Sequence[float] = (0.5, 0.6),
) -> dict:
    """Per domain: the manual prompt's scores, and (``own`` key) the domain's own phrasing's scores.

    ``templates`` maps a label (e.g. "manual") to a template; default: the manual prompt plus each domain's
    own template under "own". Also returns the means over domains and the easiest-hardest spread.
    """
    scale = float(model.logit_scale.exp())
    manual = text_features(model, tokenizer, MANUAL_PROMPT)
    fixed = {k: text_features(model, tokenizer, t) for k, t in (templates or {}).items()}
    report: dict = {"logit_scale": scale, "domains": {}}
    for dom, (imgs, labels) in world.items():
        feats = image_features(model, preprocess, imgs)
        row = {"manual": score((scale * feats @ manual.T).softmax(-1), labels, taus)}
        if templates is None:
            own = text_features(model, tokenizer, OWN_TEMPLATE[dom])
            row["own"] = score((scale * feats @ own.T).softmax(-1), labels, taus)
        for k, tf in fixed.items():
            row[k] = score((scale * feats @ tf.T).softmax(-1), labels, taus)
        row["linear_probe"] = nearest_mean_accuracy(feats, labels)
        report["domains"][dom] = row
    accs = [r["manual"]["acc"] for r in report["domains"].values()]
    report["manual_mean_acc"] = float(np.mean(accs))
    report["manual_spread"] = float(max(accs) - min(accs))
    if templates is None:
        report["own_mean_acc"] = float(np.mean([r["own"]["acc"] for r in report["domains"].values()]))
    return report


def nearest_mean_accuracy(feats: torch.Tensor, labels: np.ndarray, folds: int = 2) -> float:
    """Cross-validated nearest-class-mean accuracy of the image features: how separable the domain's
    features are at all (an upper-bound hint for what prompts alone can reach)."""
    n = len(labels)
    idx = np.arange(n)
    correct = 0
    lab = torch.as_tensor(labels)
    for f in range(folds):
        test = idx % folds == f
        tr = torch.as_tensor(~test)
        means = torch.stack([feats[tr & (lab == c)].mean(0) for c in range(int(labels.max()) + 1)])
        pred = (feats[torch.as_tensor(test)] @ F.normalize(means, dim=-1).T).argmax(1).numpy()
        correct += int((pred == labels[test]).sum())
    return correct / n


def format_report(report: dict) -> str:
    """A small text table for logs and notes."""
    lines = [f"logit scale {report['logit_scale']:.1f}"]
    for dom, row in report["domains"].items():
        parts = [f"{dom:8s}"]
        for k, s in row.items():
            if isinstance(s, dict):
                cov = " ".join(
                    f"cov{t.split('@')[1]} {s[t]:.2f}/acc {s['acc@' + t.split('@')[1]]:.2f}"
                    for t in s
                    if t.startswith("coverage@")
                )
                parts.append(f"{k} {s['acc']:.3f} ({cov})")
            else:
                parts.append(f"{k} {s:.3f}")
        lines.append("  ".join(parts))
    lines.append(f"manual mean {report['manual_mean_acc']:.3f} spread {report['manual_spread']:.3f}")
    return "\n".join(lines)
