"""One front door for every frozen CLIP: by name + tag, from a local file, or from a custom config.

Offline, open_clip retries the hub for ~47 s before failing; here a missing weight file is reported in
seconds with the exact place to put it.

Weight files are read as users have them (:func:`read_checkpoint`): OpenAI TorchScript archives, state dicts
in fp16 or fp32, nested under ``"state_dict"``, with ``module.`` prefixes, or safetensors. Rules:
- **OpenAI weights** (a TorchScript archive, OpenAI's ``input_resolution``/``context_length``/``vocab_size``
  entries, or a state dict in OpenAI's key layout with exactly the fp16/fp32 mix OpenAI's ``convert_weights``
  leaves): the architecture is read from the shapes and always uses QuickGELU. A named config that uses GELU,
  or whose shapes differ, is an error naming both (fix: the ``-quickgelu`` name): never a silent GELU load.
- **Any other state dict** is an open_clip checkpoint of the named config: its shapes (and, when an open_clip
  ``open_clip_config.json`` sits beside it, its activation) must agree with the config, else an error naming
  both. Its keys alone cannot tell an all-fp32 (or all-fp16) OpenAI state dict from a LAION one (same layout),
  so fp16-exact weights under a GELU name that open_clip also lists OpenAI weights for get a warning.

A file's cache identity is the digest of its weights' content as the loaded model holds them
(:func:`weights_digest`) plus the model's config, so one set of weights in any accepted format shares one cache.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import math
import os
import socket
import warnings
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import open_clip
import torch
from torch import nn
from torchvision import transforms as T
from torchvision.transforms import functional as TF

from dapl.config import FeatureConfig, ModelConfig
from dapl.errors import UserError

CONFIG_DIR = Path(__file__).parent / "model_configs"
ASSET_DIR = Path(__file__).parent / "assets"
OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)
SHIPPED_TAG = "dapl"  # weights shipped inside the package (dapl/assets/<name>.pt), e.g. the toy-clip
_WEIGHT_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors")


class WeightsNotFoundError(UserError, RuntimeError):
    """Pretrained weights are neither on disk nor downloadable right now."""


@dataclass
class ClipBundle:
    """A frozen CLIP with what every stage needs beside it."""

    model: nn.Module
    tokenizer: open_clip.tokenizer.SimpleTokenizer
    image_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    identity: str  # what the model computes (config + weights content, or name + tag): part of every cache key
    device: torch.device
    amp: bool

    @property
    def embed_dim(self) -> int:
        return int(self.model.text_projection.shape[1])

    @property
    def width(self) -> int:
        return int(self.model.ln_final.weight.shape[0])

    @property
    def logit_scale(self) -> torch.Tensor:
        return self.model.logit_scale.detach().exp()

    def autocast(self, dtype: torch.dtype = torch.float16):
        enabled = self.amp and self.device.type == "cuda"
        return torch.autocast(self.device.type, dtype=dtype, enabled=enabled)

    @torch.no_grad()
    def encode_images(self, x: torch.Tensor) -> torch.Tensor:
        with self.autocast():
            return self.model.encode_image(x.to(self.device, non_blocking=True)).float()

    @torch.no_grad()
    def encode_texts(self, texts: list[str]) -> torch.Tensor:
        tokens = self.tokenizer(texts).to(self.device)
        with self.autocast(torch.bfloat16):
            return self.model.encode_text(tokens).float()


def register_configs() -> None:
    """Make dapl's own model configs (e.g. ``toy-clip``) loadable by name through open_clip."""
    if CONFIG_DIR.is_dir() and CONFIG_DIR not in open_clip.factory._MODEL_CONFIG_PATHS:
        open_clip.add_model_config(CONFIG_DIR)


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def default_weights_dir(cfg: ModelConfig) -> Path:
    if cfg.weights_dir is not None:
        return Path(cfg.weights_dir)
    return Path(os.environ.get("DAPL_WEIGHTS_DIR", Path.home() / ".cache" / "dapl" / "weights"))


def _hub_reachable(timeout: float = 3.0) -> bool:
    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("", "0") or os.environ.get("DAPL_OFFLINE"):
        return False
    try:
        with socket.create_connection(("huggingface.co", 443), timeout=timeout):
            return True
    except OSError:
        return False


def resolve_weights(cfg: ModelConfig) -> str | None:
    """Turn ``cfg.pretrained`` into a local file path, a downloadable tag, or None (random init)."""
    p = cfg.pretrained
    if p is None or p == "" or p.lower() == "none":
        return None
    if p == SHIPPED_TAG:
        f = ASSET_DIR / f"{cfg.name}.pt"
        if not f.is_file():
            raise WeightsNotFoundError(f"model.pretrained='{SHIPPED_TAG}' means weights shipped in {ASSET_DIR}, "
                                       f"but {f.name} is not there; produce it with `dapl toy pretrain --out {f}`")
        return str(f)
    path = Path(p).expanduser()
    if path.suffix in _WEIGHT_SUFFIXES or os.sep in p:
        if not path.is_file():
            raise WeightsNotFoundError(f"model.pretrained={p!r}: no such file. Check the path, or give a known "
                                       f"tag for {cfg.name} (e.g. 'openai').")
        return str(path)
    wdir = default_weights_dir(cfg)
    for suf in _WEIGHT_SUFFIXES:
        cand = wdir / f"{cfg.name}_{p}{suf}"
        if cand.is_file():
            return str(cand)
    name = _model_name(cfg.name)
    if not open_clip.pretrained.is_pretrained_cfg(name, p):
        tags = open_clip.list_pretrained_tags_by_model(name)
        raise WeightsNotFoundError(f"model.pretrained={p!r} is neither a file nor a known tag for {name}; "
                                   f"known tags: {tags or 'none'}")
    if not _hub_reachable():
        raise WeightsNotFoundError(
            f"CLIP weights {name}/{p} are not on this machine and the hub cannot be reached (offline).\n"
            f"  Fix: put the weights file at {wdir / f'{cfg.name}_{p}.pt'}\n"
            f"       (or set DAPL_WEIGHTS_DIR, or pass model.pretrained=/path/to/file.pt). Both OpenAI files "
            f"(TorchScript or state dict, e.g. RN50.pt) and open_clip checkpoints are accepted."
        )
    return p  # a tag open_clip will download


def _model_name(name: str) -> str:
    register_configs()
    path = Path(name)
    if path.suffix == ".json" and path.is_file():
        open_clip.add_model_config(path)
        return path.stem
    return name


OPENAI_EXTRA_KEYS = ("input_resolution", "context_length", "vocab_size")  # only OpenAI's files carry these


class CheckpointMismatchError(UserError, ValueError):
    """A weights file does not fit the model named in the config (architecture or activation)."""


@dataclass
class Checkpoint:
    """A weights file read into one normalised state dict, with what the file says about its origin."""

    state_dict: dict[str, torch.Tensor]
    kind: str  # "TorchScript archive", "state dict", or OPENAI_CONVERTED
    openai: bool  # certainly OpenAI's: a TorchScript archive, OpenAI's extra entries, or convert_weights' mix
    sidecar: dict | None  # open_clip's ``open_clip_config.json`` beside the file (Hugging Face layout), if any


def _is_torchscript(path: str) -> bool:
    """TorchScript archives are zip files with ``code/`` and ``constants.pkl``; ``torch.save`` files have neither."""
    try:
        with zipfile.ZipFile(path) as zf:
            return any(n.endswith("/constants.pkl") or "/code/" in n for n in zf.namelist())
    except (zipfile.BadZipFile, OSError):
        return False


def read_checkpoint(path: str) -> Checkpoint:
    """Read any CLIP weights file as users have them: an OpenAI TorchScript archive, a (full or partial-fp16)
    state dict with or without OpenAI's ``input_resolution``/``context_length``/``vocab_size`` entries, nested
    under ``"state_dict"`` (training checkpoints), with DataParallel's ``module.`` prefixes, or safetensors."""
    kind, openai = "state dict", False
    if _is_torchscript(path):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            sd = dict(torch.jit.load(path, map_location="cpu").state_dict())
        kind, openai = "TorchScript archive", True
    elif path.endswith(".safetensors"):
        from safetensors.torch import load_file

        sd = load_file(path, device="cpu")
    else:
        try:
            sd = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # noqa: BLE001 - pickles with code, torn files: one clear message
            raise ValueError(f"{path}: not a readable weights file ({type(e).__name__}: {e}). Expected an OpenAI "
                             "TorchScript archive, a state dict saved with torch.save, or safetensors.") from e
    while isinstance(sd, dict) and isinstance(sd.get("state_dict"), dict):
        sd = sd["state_dict"]
    if not isinstance(sd, dict) or not sd or not all(isinstance(k, str) for k in sd):
        raise ValueError(f"{path}: holds no state dict (a {type(sd).__name__}); save model.state_dict()")
    if all(k.startswith("module.") for k in sd):
        sd = {k[len("module."):]: v for k, v in sd.items()}
    for k in OPENAI_EXTRA_KEYS:
        if k in sd:
            sd.pop(k)
            openai = True
    sd = {k: v for k, v in sd.items() if isinstance(v, torch.Tensor) and not k.endswith("attn_mask")}
    if not openai and openai_converted(sd):
        kind, openai = OPENAI_CONVERTED, True
    sidecar = None
    side = Path(path).parent / "open_clip_config.json"
    if side.is_file():
        try:
            sidecar = json.loads(side.read_text()).get("model_cfg")
        except (json.JSONDecodeError, AttributeError):
            sidecar = None
    return Checkpoint(sd, kind, openai, sidecar)


OPENAI_CONVERTED = "state dict with OpenAI's fp16/fp32 mix"


def _fp16_by_convert_weights(model: nn.Module) -> set[str]:
    """The state-dict keys OpenAI's ``convert_weights`` turns fp16: Conv1d/Conv2d/Linear weight and bias,
    MultiheadAttention's input projections and biases, and parameters named ``text_projection`` or ``proj``."""
    out: set[str] = set()
    mha = ("in_proj_weight", "q_proj_weight", "k_proj_weight", "v_proj_weight", "in_proj_bias", "bias_k", "bias_v")
    for prefix, m in model.named_modules():
        names: tuple[str, ...] = ()
        if isinstance(m, nn.Conv1d | nn.Conv2d | nn.Linear):
            names = ("weight", "bias")
        elif isinstance(m, nn.MultiheadAttention):
            names = mha
        names += ("text_projection", "proj")
        out.update(f"{prefix}.{n}".lstrip(".") for n in names if isinstance(getattr(m, n, None), nn.Parameter))
    return out


def openai_converted(sd: dict[str, torch.Tensor]) -> bool:
    """Whether ``sd`` is an OpenAI CLIP exactly as ``clip.model.convert_weights`` leaves it (what OpenAI's
    ``build_model`` returns): OpenAI's key layout and shapes, fp16 exactly where that function converts, fp32
    elsewhere. open_clip's GELU checkpoints share the keys but are saved in one precision."""
    try:
        with torch.device("meta"):  # shapes and module types only: no memory, no initialisation cost
            model = open_clip.CLIP(**openai_architecture(sd))
    except (KeyError, IndexError, ValueError, TypeError, RuntimeError):
        return False
    own = model.state_dict()
    own_keys = {k for k in own if not k.endswith("num_batches_tracked")}
    if own_keys != {k for k in sd if not k.endswith("num_batches_tracked")}:
        return False
    if any(sd[k].shape != own[k].shape for k in own_keys):
        return False
    half = _fp16_by_convert_weights(model)
    want = {k: torch.float16 if k in half else torch.float32 for k in own_keys if own[k].is_floating_point()}
    return all(sd[k].dtype == dtype for k, dtype in want.items())


def _blocks(sd: dict, prefix: str) -> int:
    """Number of distinct block indices ``<prefix><i>.`` among the keys."""
    return len({k[len(prefix):].split(".", 1)[0] for k in sd if k.startswith(prefix)})


def openai_architecture(sd: dict[str, torch.Tensor]) -> dict:
    """The open_clip config of an OpenAI-layout state dict, read from the shapes alone (QuickGELU, 64-wide heads:
    OpenAI's convention). Raises KeyError when a key the layout needs is missing."""
    if "visual.proj" in sd:
        conv = sd["visual.conv1.weight"]
        grid = round((sd["visual.positional_embedding"].shape[0] - 1) ** 0.5)
        vision = {"image_size": int(conv.shape[-1] * grid), "layers": _blocks(sd, "visual.transformer.resblocks."),
                  "width": int(conv.shape[0]), "patch_size": int(conv.shape[-1])}
    else:
        out = round((sd["visual.attnpool.positional_embedding"].shape[0] - 1) ** 0.5)
        vision = {"image_size": int(out * 32), "layers": [_blocks(sd, f"visual.layer{b}.") for b in (1, 2, 3, 4)],
                  "width": int(sd["visual.layer1.0.conv1.weight"].shape[0]), "patch_size": None}
    width = int(sd["ln_final.weight"].shape[0])
    text = {"context_length": int(sd["positional_embedding"].shape[0]),
            "vocab_size": int(sd["token_embedding.weight"].shape[0]), "width": width, "heads": max(1, width // 64),
            "layers": _blocks(sd, "transformer.resblocks.")}
    return {"embed_dim": int(sd["text_projection"].shape[1]), "quick_gelu": True, "vision_cfg": vision,
            "text_cfg": text}


def _arch_summary(cfg: dict) -> dict:
    """The architecture facts two configs must share (defaults filled in by open_clip's own dataclasses)."""
    v = open_clip.model.CLIPVisionCfg(**{k: x for k, x in cfg.get("vision_cfg", {}).items()
                                         if k in open_clip.model.CLIPVisionCfg.__dataclass_fields__})
    t = open_clip.model.CLIPTextCfg(**{k: x for k, x in cfg.get("text_cfg", {}).items()
                                       if k in open_clip.model.CLIPTextCfg.__dataclass_fields__})
    resnet = isinstance(v.layers, tuple | list)
    out = {"embed_dim": cfg.get("embed_dim"), "vision.image_size": v.image_size,
           "vision.layers": list(v.layers) if resnet else v.layers, "vision.width": v.width,
           "vision.heads": v.width * (32 if resnet else 1) // v.head_width,
           "text.context_length": t.context_length, "text.vocab_size": t.vocab_size, "text.width": t.width,
           "text.heads": t.heads, "text.layers": t.layers}
    if not resnet:
        out["vision.patch_size"] = v.patch_size
    return out


def _arch_diff(a: dict, b: dict) -> list[str]:
    sa, sb = _arch_summary(a), _arch_summary(b)
    return [f"{k}: {sa.get(k)} vs {sb.get(k)}" for k in dict.fromkeys([*sa, *sb]) if sa.get(k) != sb.get(k)]


def _quickgelu_name(name: str) -> str:
    cand = f"{name}-quickgelu"
    return f"--set model.name={cand}" if cand in open_clip.list_models() else "a config with \"quick_gelu\": true"


def _fp16_exact(sd: dict[str, torch.Tensor]) -> bool:
    """OpenAI released its CLIPs in fp16: every float weight of theirs survives a round trip through fp16."""
    floats = [v for v in sd.values() if v.is_floating_point()]
    return bool(floats) and all(v.dtype == torch.float16 or torch.equal(v.half().to(v.dtype), v) for v in floats)


def _load_strict(model: nn.Module, sd: dict[str, torch.Tensor], path: str, what: str) -> None:
    """Copy ``sd`` into ``model`` (fp16 values widen exactly to fp32); any missing/extra key or shape is an error."""
    own = model.state_dict()
    missing = [k for k in own if k not in sd and not k.endswith("num_batches_tracked")]
    extra = [k for k in sd if k not in own]
    shapes = [f"{k} {tuple(sd[k].shape)} vs {tuple(own[k].shape)}" for k in own
              if k in sd and sd[k].shape != own[k].shape]
    if missing or extra or shapes:
        raise CheckpointMismatchError(
            f"{path} does not fit {what}: {len(missing)} missing, {len(extra)} unexpected, {len(shapes)} "
            f"differently shaped weights (e.g. {(shapes or missing or extra)[:3]}). Name the model config the file "
            "was saved from (model.name), or give its OpenAI file.")
    model.load_state_dict({k: v for k, v in sd.items()}, strict=False)


def _build_openai(ck: Checkpoint, path: str, name: str, named: dict | None) -> nn.Module:
    """OpenAI weights: the architecture from the shapes, QuickGELU always; a named config must agree."""
    try:
        arch = openai_architecture(ck.state_dict)
    except KeyError as e:
        raise ValueError(f"{path}: an OpenAI {ck.kind} without the key {e} of OpenAI's CLIP layout") from e
    if named is not None:
        if not named.get("quick_gelu", False):
            raise CheckpointMismatchError(
                f"{path} is OpenAI's CLIP layout ({ck.kind}), which uses QuickGELU, but model.name={name!r} uses "
                f"GELU (its features would be wrong): use {_quickgelu_name(name)}")
        diff = _arch_diff(arch, named)
        if diff:
            raise CheckpointMismatchError(
                f"{path} (OpenAI {ck.kind}) and model.name={name!r} disagree (file vs config): {'; '.join(diff)}. "
                "Name the config of the file's architecture.")
    model = open_clip.CLIP(**arch)
    _load_strict(model, ck.state_dict, path, f"the OpenAI architecture read from its shapes {arch}")
    return model


def _build_open_clip(ck: Checkpoint, path: str, name: str, named: dict) -> nn.Module:
    """An open_clip-format file for the named config: shapes (and the activation, where the file says) must agree."""
    if ck.sidecar:
        if bool(ck.sidecar.get("quick_gelu", False)) != bool(named.get("quick_gelu", False)):
            act = {True: "QuickGELU", False: "GELU"}
            raise CheckpointMismatchError(
                f"{path} was saved from a {act[bool(ck.sidecar.get('quick_gelu', False))]} model "
                f"(open_clip_config.json), but model.name={name!r} uses {act[bool(named.get('quick_gelu', False))]}"
                ": name the config the file was saved from.")
        diff = _arch_diff(ck.sidecar, named)
        if diff:
            raise CheckpointMismatchError(f"{path} (open_clip_config.json) and model.name={name!r} disagree "
                                          f"(file vs config): {'; '.join(diff)}")
    try:
        arch = openai_architecture(ck.state_dict)
    except KeyError:
        arch = None
    if arch is not None:
        diff = [d for d in _arch_diff(arch, named) if not d.startswith(("vision.heads", "text.heads"))]
        if diff:  # heads are invisible in shapes; the rest must match
            raise CheckpointMismatchError(
                f"{path} and model.name={name!r} disagree (file's shapes vs config): {'; '.join(diff)}. Name the "
                "config the file was saved from.")
        if not named.get("quick_gelu", False) and _fp16_exact(ck.state_dict) and name in _openai_names():
            warnings.warn(f"{path} is loaded as an open_clip checkpoint with GELU (model.name={name!r}). If it holds "
                          f"OpenAI's weights, they need QuickGELU: use {_quickgelu_name(name)}.", stacklevel=3)
    with _quiet_random_init():
        model = open_clip.create_model(name, pretrained=None, precision="fp32", device="cpu")
    if hasattr(model, "token_embedding"):
        _load_strict(model, ck.state_dict, path, f"model.name={name!r}")
    return model


class _RandomInitNotice(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "Model initialized randomly" not in record.getMessage()


@contextlib.contextmanager
def _quiet_random_init() -> Iterator[None]:
    """Drop open_clip's "No pretrained weights loaded ... initialized randomly" while building a model whose
    weights this module loads right after: users read it as "the checkpoint was ignored"."""
    quiet = _RandomInitNotice()
    root = logging.getLogger()
    root.addFilter(quiet)
    try:
        yield
    finally:
        root.removeFilter(quiet)


def _openai_names() -> set[str]:
    return {m for m, tag in open_clip.list_pretrained() if tag == "openai"}


_DIGESTS: dict[tuple[str, int, int], str] = {}  # (absolute path, size, mtime_ns) -> weights_digest


def state_dict_digest(sd: dict[str, torch.Tensor]) -> str:
    """sha256 of weights as a loaded (fp32) model holds them: sorted keys, dtype, shape and bytes, floats widened
    to fp32, so one set of weights hashes alike in every file format. BatchNorm's step counters are left out."""
    h = hashlib.sha256()
    for k in sorted(sd):
        if k.endswith("num_batches_tracked"):
            continue
        v = sd[k].detach().cpu()
        v = (v.float() if v.is_floating_point() else v).contiguous().reshape(-1)
        h.update(json.dumps([k, str(v.dtype), list(sd[k].shape)]).encode())
        h.update(v.view(torch.uint8).numpy())
    return h.hexdigest()


def _stamp(path: str) -> tuple[str, int, int]:
    """What the digest memo is keyed by (taken before reading, so a rewrite during the read gets a new stamp)."""
    st = os.stat(path)
    return os.path.abspath(path), st.st_size, st.st_mtime_ns


def weights_digest(path: str, sd: dict[str, torch.Tensor] | None = None,
                   stamp: tuple[str, int, int] | None = None) -> str:
    """The content digest of a weights file (:func:`state_dict_digest` of what :func:`read_checkpoint` reads),
    computed once per process and file version; ``sd``/``stamp``: the file already read, and its stamp then."""
    stamp = stamp or _stamp(path)
    if stamp not in _DIGESTS:
        _DIGESTS[stamp] = state_dict_digest(read_checkpoint(path).state_dict if sd is None else sd)
    return _DIGESTS[stamp]


def config_digest(cfg: dict) -> str:
    """A digest of what an open_clip config builds, defaults filled in, so two spellings of one model agree."""
    vision = {**dataclasses.asdict(open_clip.model.CLIPVisionCfg()), **cfg.get("vision_cfg", {})}
    text = {**dataclasses.asdict(open_clip.model.CLIPTextCfg()), **cfg.get("text_cfg", {})}
    full = {"quick_gelu": False, **cfg, "vision_cfg": vision, "text_cfg": text}
    return hashlib.sha256(json.dumps(full, sort_keys=True, default=str).encode()).hexdigest()


def freeze(model: nn.Module) -> nn.Module:
    """Frozen and in eval mode (ResNet BatchNorm statistics must never update)."""
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def load_clip(cfg: ModelConfig) -> ClipBundle:
    """Load a frozen CLIP as ``cfg`` says; fp32 weights (autocast on CUDA when ``cfg.amp``)."""
    device = resolve_device(cfg.device)
    name = _model_name(cfg.name)
    weights = resolve_weights(cfg)
    named = open_clip.get_model_config(name) if name in open_clip.list_models() else None
    if weights is not None and Path(weights).is_file():
        stamp = _stamp(weights)
        ck = read_checkpoint(weights)
        if ck.openai:
            model = _build_openai(ck, weights, name, named)
            built = openai_architecture(ck.state_dict)
        elif named is None:
            raise ValueError(f"model.name={cfg.name!r} is not an open_clip model or a config in {CONFIG_DIR}; "
                             f"name the config of {weights}")
        else:
            model, built = _build_open_clip(ck, weights, name, named), named
        # content, not file bytes: a TorchScript archive and a state dict of the same weights share one cache
        identity = f"file:{weights_digest(weights, ck.state_dict, stamp)[:16]}:config:{config_digest(built)[:12]}"
    else:
        if named is None:
            raise ValueError(f"model.name={cfg.name!r} is not an open_clip model or a config in {CONFIG_DIR}")
        model = open_clip.create_model(name, pretrained=weights, precision="fp32", device="cpu")
        identity = f"{name}:random" if weights is None else f"{name}:{weights}"
    model = freeze(model.float()).to(device)
    if not hasattr(model, "token_embedding"):
        raise ValueError(f"{cfg.name}: only CLIP models with the standard text tower are supported "
                         "(prompt learning needs token embeddings); got a custom text tower")
    size = model.visual.image_size
    size = int(size[0] if isinstance(size, tuple | list) else size)
    pp = getattr(model.visual, "preprocess_cfg", {}) or {}
    mean = tuple(pp.get("mean", OPENAI_MEAN))
    std = tuple(pp.get("std", OPENAI_STD))
    tok = open_clip.get_tokenizer(name) if name in open_clip.list_models() else open_clip.get_tokenizer("RN50")
    return ClipBundle(model, tok, size, mean, std, identity, device, cfg.amp)


def model_config_dict(name: str) -> dict:
    """The open_clip architecture dict of a model name (for artifacts and cache keys)."""
    cfg = open_clip.get_model_config(_model_name(name))
    return json.loads(json.dumps(cfg)) if cfg else {}


class TrainTransform:
    """The paper's train augmentation: RandomResizedCrop (scale (``crop_scale_min``, 1), ratio 3/4–4/3, bicubic),
    an optional horizontal flip and CLIP's normalisation, drawing its randomness from the ``generator`` of each
    call instead of torch's global RNG.

    Why: the global RNG is shared by every thread of the process (Prefect runs tasks in threads), and anything
    may draw from or reseed it meanwhile (building a model initialises its weights from it), so a view "seeded"
    through it could change with whatever ran beside it: a cached view of one image was measured to differ
    between two extractions of the same images. With a private generator seeded ``s`` it draws exactly what
    torchvision's ``RandomResizedCrop`` + ``RandomHorizontalFlip`` draw after ``torch.manual_seed(s)``, so the
    views (and the caches keyed by them) are those of the serial runs. ``generator=None`` uses the global RNG.
    """

    RATIO = (3.0 / 4.0, 4.0 / 3.0)

    def __init__(self, size: int, scale_min: float, hflip: bool, mean, std):
        self.size, self.scale, self.hflip = size, (scale_min, 1.0), hflip
        # log of the aspect-ratio bounds in float32, as torchvision takes them (once, not per image)
        self.log_ratio = tuple(float(x) for x in torch.log(torch.tensor(self.RATIO)))
        self.finish = T.Compose([T.ToTensor(), T.Normalize(mean, std)])

    def crop(self, width: int, height: int, g: torch.Generator | None) -> tuple[int, int, int, int]:
        """``(top, left, h, w)``: up to 10 draws of an area share and a log aspect ratio, else the central crop
        (torchvision's procedure, in its order of draws)."""
        area = height * width
        for _ in range(10):
            target = area * torch.empty(1).uniform_(self.scale[0], self.scale[1], generator=g).item()
            aspect = torch.exp(torch.empty(1).uniform_(*self.log_ratio, generator=g)).item()
            w, h = int(round(math.sqrt(target * aspect))), int(round(math.sqrt(target / aspect)))
            if 0 < w <= width and 0 < h <= height:
                top = int(torch.randint(0, height - h + 1, size=(1,), generator=g).item())
                left = int(torch.randint(0, width - w + 1, size=(1,), generator=g).item())
                return top, left, h, w
        in_ratio = width / height
        if in_ratio < min(self.RATIO):
            w, h = width, int(round(width / min(self.RATIO)))
        elif in_ratio > max(self.RATIO):
            w, h = int(round(height * max(self.RATIO))), height
        else:
            w, h = width, height
        return (height - h) // 2, (width - w) // 2, h, w

    def __call__(self, img, generator: torch.Generator | None = None) -> torch.Tensor:
        top, left, h, w = self.crop(*img.size, generator)
        img = TF.resized_crop(img, top, left, h, w, [self.size, self.size], T.InterpolationMode.BICUBIC,
                              antialias=True)
        if self.hflip and torch.rand(1, generator=generator) < 0.5:
            img = TF.hflip(img)
        return self.finish(img)


def train_transform(bundle: ClipBundle, cfg: FeatureConfig) -> TrainTransform:
    """Paper: RandomResizedCrop(scale (0.08, 1), bicubic) + flip + CLIP normalisation (:class:`TrainTransform`)."""
    return TrainTransform(bundle.image_size, cfg.crop_scale_min, cfg.hflip, bundle.mean, bundle.std)


def eval_transform(bundle: ClipBundle) -> T.Compose:
    """Resize the short side (bicubic) + centre crop + CLIP normalisation."""
    return T.Compose([
        T.Resize(bundle.image_size, interpolation=T.InterpolationMode.BICUBIC),
        T.CenterCrop(bundle.image_size),
        T.ToTensor(),
        T.Normalize(bundle.mean, bundle.std),
    ])


def transform_identity(bundle: ClipBundle, cfg: FeatureConfig | None) -> str:
    """What a transform does, for cache keys (None = the test transform)."""
    if cfg is None:
        return f"test:{bundle.image_size}:{bundle.mean}:{bundle.std}"
    return f"train:{bundle.image_size}:{cfg.crop_scale_min}:{cfg.hflip}:{bundle.mean}:{bundle.std}"
