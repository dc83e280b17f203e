"""Learned prompts on disk (safetensors + JSON), their nearest-token reading, and a ready classifier."""

from __future__ import annotations

import io
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from safetensors.torch import load_file, save_file

from dapl.clip import ClipBundle, load_clip
from dapl.config import DaplConfig
from dapl.datasets.loader import to_rgb
from dapl.errors import UserError
from dapl.model import DaplModel
from dapl.prompts import PromptLearner
from dapl.transforms import eval_transform

PROMPTS = "prompts.safetensors"
PROMPTS_META = "prompts.json"


class UnreadableImageError(UserError):
    """A file given to classify that is not a decodable image (corrupt, truncated, empty, missing)."""

    def __init__(self, path: str | Path, reason: str):
        super().__init__(f"{path}: not a readable image ({reason})")
        self.path, self.reason = Path(path), reason


def _unreadable_reason(path: Path, e: BaseException) -> str:
    """Why PIL could not read ``path``, in words that fit one line (PIL's own ones repeat the path)."""
    if isinstance(e, FileNotFoundError):
        return "no such file"
    if isinstance(e, IsADirectoryError):
        return "a folder, not a file"
    if path.is_file() and path.stat().st_size == 0:
        return "empty file"
    return _decode_reason(e)


def _decode_reason(e: BaseException) -> str:
    """Why PIL could not decode bytes it was given, on one line."""
    if isinstance(e, UnidentifiedImageError):
        return "unknown format or corrupt data"
    return " ".join(str(e).split()) or type(e).__name__


def read_image(path: str | Path) -> Image.Image:
    """``path`` fully decoded as RGB (the training loader's conversion, :func:`~dapl.datasets.loader.to_rgb`);
    a file that cannot be decoded raises :class:`UnreadableImageError` naming it."""
    try:
        with Image.open(path) as im:
            im.load()
            return to_rgb(im)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise UnreadableImageError(path, _unreadable_reason(Path(path), e)) from None


def decode_image(data: bytes, name: str) -> Image.Image:
    """Image bytes (an upload, a served request) decoded as :func:`read_image` decodes a file; ``name`` says which
    item in the :class:`UnreadableImageError` of bytes that are not an image."""
    if not data:
        raise UnreadableImageError(name, "empty file")
    try:
        with Image.open(io.BytesIO(data)) as im:
            im.load()
            return to_rgb(im)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise UnreadableImageError(name, _decode_reason(e)) from None


def save_prompts(out_dir: str | Path, learner: PromptLearner, cfg: DaplConfig, model_identity: str,
                 extra: dict | None = None, tensors: dict[str, torch.Tensor] | None = None) -> Path:
    """``prompts.safetensors`` (context vectors: the learner's, or ``tensors`` of another epoch) +
    ``prompts.json`` (config, classes, domains)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tensors = learner.context_tensors() if tensors is None else tensors
    meta = {"config": cfg.to_dict(), "classnames": learner.classnames, "domains": learner.domains,
            "model_identity": model_identity, **(extra or {})}
    if tensors:
        save_file(tensors, str(out / PROMPTS), metadata={"format": "dapl-prompts-v1"})
    (out / PROMPTS_META).write_text(json.dumps(meta, indent=1))
    return out


def load_prompts(path: str | Path) -> tuple[dict[str, torch.Tensor], dict]:
    d = Path(path)
    meta_file = d / PROMPTS_META
    if not meta_file.is_file():
        raise FileNotFoundError(f"{meta_file} not found: point to a folder written by `dapl train` "
                                f"(it holds {PROMPTS} and {PROMPTS_META})")
    meta = json.loads(meta_file.read_text())
    tensors = load_file(str(d / PROMPTS)) if (d / PROMPTS).is_file() else {}
    return tensors, meta


def load_model(prompt_dir: str | Path, bundle: ClipBundle, meta: dict | None = None) -> DaplModel:
    """The classifier saved in ``prompt_dir``, rebuilt over ``bundle`` (the CLIP it was trained on)."""
    tensors, saved_meta = load_prompts(prompt_dir)
    meta = meta or saved_meta
    cfg = DaplConfig.model_validate(meta["config"])
    model = DaplModel(bundle, meta["classnames"], meta["domains"], cfg.prompt, cfg.pseudo.template)
    model.prompts.load_context(tensors)
    return model


def _token_strings(bundle: ClipBundle) -> list[str]:
    dec = bundle.tokenizer.decoder
    return [dec.get(i, f"<{i}>").replace("</w>", " ").strip() or f"<{i}>" for i in range(len(dec))]


@torch.no_grad()
def nearest_tokens(learner: PromptLearner, bundle: ClipBundle, k: int = 3) -> dict[str, list]:
    """Each learned context vector's ``k`` nearest vocabulary tokens (Euclidean, as CoOp reports them).

    Returns ``{"agnostic": [[(token, distance), ...] per vector] (per class with CSC), "domain": {dom: ...}}``.
    """
    vocab = bundle.model.token_embedding.weight.float()
    names = _token_strings(bundle)

    def decode(vectors: torch.Tensor) -> list:
        dist = torch.cdist(vectors.float().to(vocab.device), vocab)
        d, idx = dist.topk(k, largest=False)
        return [[(names[int(i)], round(float(x), 4)) for i, x in zip(row_i, row_d, strict=True)]
                for row_i, row_d in zip(idx, d, strict=True)]

    out: dict[str, object] = {}
    if learner.ctx_agnostic is not None:
        a = learner.ctx_agnostic
        out["agnostic"] = ({c: decode(a[i]) for i, c in enumerate(learner.classnames)} if a.dim() == 3
                           else decode(a))
    if learner.ctx_domain is not None:
        out["domain"] = {d: decode(learner.ctx_domain[i]) for i, d in enumerate(learner.domains)}
    return out


def format_nearest(decoded: dict, top: int = 1) -> str:
    """Human-readable lines: ``domain[art]: painting | sketch | ...``."""
    lines = []

    def row(label: str, vecs: list) -> None:
        lines.append(f"{label}: " + " ".join("/".join(t for t, _ in v[:top]) for v in vecs))

    ag = decoded.get("agnostic")
    if isinstance(ag, dict):
        for c, v in ag.items():
            row(f"agnostic[{c}]", v)
    elif ag is not None:
        row("agnostic", ag)
    for d, v in (decoded.get("domain") or {}).items():
        row(f"domain[{d}]", v)
    return "\n".join(lines)


class AdaptedClassifier:
    """A frozen CLIP + learned prompts that classifies new images with one domain's prompts."""

    def __init__(self, bundle: ClipBundle, model: DaplModel, domain: str | None = None):
        self.bundle, self.model = bundle, model
        self.domain = domain or model.domains[-1]
        if self.domain not in model.domains:
            raise ValueError(f"domain {self.domain!r} not among the prompts' domains {model.domains}")
        with torch.no_grad():
            self.text = model.text_features()[model.domains.index(self.domain)]  # [K, E]
        self.transform = eval_transform(bundle)

    @classmethod
    def load(cls, prompt_dir: str | Path, domain: str | None = None, device: str | None = None,
             model_overrides: dict | None = None) -> AdaptedClassifier:
        """From a folder written by :func:`save_prompts`; the model is loaded from the saved config."""
        _, meta = load_prompts(prompt_dir)
        if str(meta.get("model_identity", "")).endswith(":random"):
            raise ValueError(f"{prompt_dir}: these prompts were learned on a randomly initialised CLIP, which "
                             "cannot be rebuilt; train with model.pretrained set to a weights file or tag")
        cfg = DaplConfig.model_validate(meta["config"])
        mcfg = cfg.model.model_copy(update={**(model_overrides or {}), **({"device": device} if device else {})})
        bundle = load_clip(mcfg)
        trained_on = meta.get("model_identity")
        if trained_on and trained_on != bundle.identity:
            raise UserError(f"{prompt_dir}: these prompts were learned on CLIP {trained_on}, but "
                            f"model.pretrained={mcfg.pretrained} here is {bundle.identity}; put the weights they "
                            "were trained with at that path")
        return cls(bundle, load_model(prompt_dir, bundle, meta), domain)

    @property
    def classnames(self) -> list[str]:
        return self.model.classnames

    @torch.no_grad()
    def predict_proba(self, images: Sequence[Image.Image | str | Path], batch_size: int = 64) -> np.ndarray:
        out = []
        for i in range(0, len(images), batch_size):
            batch = []
            for im in images[i:i + batch_size]:
                img = read_image(im) if isinstance(im, str | Path) else im
                batch.append(self.transform(img.convert("RGB")))
            logits = self.model.logits(self.bundle.encode_images(torch.stack(batch)), text=self.text)
            out.append(logits.softmax(-1).cpu().numpy())
        return np.concatenate(out) if out else np.zeros((0, len(self.classnames)), np.float32)

    def predict_files(self, paths: Sequence[str | Path], batch_size: int = 64
                      ) -> list[np.ndarray | UnreadableImageError]:
        """Per file its class probabilities, or the error that kept it from being read: one bad file never
        stops the others."""
        out: list[np.ndarray | UnreadableImageError] = []
        for i in range(0, len(paths), batch_size):
            chunk: list[Image.Image | UnreadableImageError] = []
            for p in paths[i:i + batch_size]:
                try:
                    chunk.append(read_image(p))
                except UnreadableImageError as e:
                    chunk.append(e)
            out += self.predict_decoded(chunk, batch_size)
        return out

    def predict_decoded(self, items: Sequence[Image.Image | UnreadableImageError], batch_size: int = 64
                        ) -> list[np.ndarray | UnreadableImageError]:
        """Per item its class probabilities; an item that failed to decode stays its error, in place."""
        rows = iter(self.predict_proba([im for im in items if isinstance(im, Image.Image)], batch_size))
        return [im if isinstance(im, UnreadableImageError) else next(rows) for im in items]

    def predict(self, images: Sequence[Image.Image | str | Path], batch_size: int = 64) -> list[str]:
        p = self.predict_proba(images, batch_size)
        return [self.classnames[i] for i in p.argmax(1)]
