"""CLIP weight files as users have them, recognised by what they hold, and their content digest.

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
import os
import warnings
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import open_clip
import torch
from torch import nn

from dapl.errors import UserError

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


def build_openai(ck: Checkpoint, path: str, name: str, named: dict | None) -> nn.Module:
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


def build_open_clip(ck: Checkpoint, path: str, name: str, named: dict) -> nn.Module:
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


def file_stamp(path: str) -> tuple[str, int, int]:
    """What the digest memo is keyed by (taken before reading, so a rewrite during the read gets a new stamp)."""
    st = os.stat(path)
    return os.path.abspath(path), st.st_size, st.st_mtime_ns


def weights_digest(path: str, sd: dict[str, torch.Tensor] | None = None,
                   stamp: tuple[str, int, int] | None = None) -> str:
    """The content digest of a weights file (:func:`state_dict_digest` of what :func:`read_checkpoint` reads),
    computed once per process and file version; ``sd``/``stamp``: the file already read, and its stamp then."""
    stamp = stamp or file_stamp(path)
    if stamp not in _DIGESTS:
        _DIGESTS[stamp] = state_dict_digest(read_checkpoint(path).state_dict if sd is None else sd)
    return _DIGESTS[stamp]


def config_digest(cfg: dict) -> str:
    """A digest of what an open_clip config builds, defaults filled in, so two spellings of one model agree."""
    vision = {**dataclasses.asdict(open_clip.model.CLIPVisionCfg()), **cfg.get("vision_cfg", {})}
    text = {**dataclasses.asdict(open_clip.model.CLIPTextCfg()), **cfg.get("text_cfg", {})}
    full = {"quick_gelu": False, **cfg, "vision_cfg": vision, "text_cfg": text}
    return hashlib.sha256(json.dumps(full, sort_keys=True, default=str).encode()).hexdigest()
