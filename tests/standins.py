"""Stand-ins for OpenAI's released CLIP files (nothing can be downloaded): full-size, random weights, OpenAI's
exact layouts.

OpenAI's weights exist in two forms: the released TorchScript archives (``RN50.pt``), whose ``state_dict()``
holds the CLIP keys plus ``input_resolution``/``context_length``/``vocab_size`` as tensors, and the state dict
of the model ``clip.load(..., jit=False)`` builds, left by ``clip.model.convert_weights`` in a fp16/fp32 mix
(conv, linear, attention and projection weights fp16; embeddings, LayerNorm and BatchNorm fp32). open_clip's
CLIP has OpenAI's state-dict names (its ``build_model_from_openai_state_dict`` loads OpenAI's dicts strictly),
and ``open_clip.model.convert_weights_to_lp`` is its copy of ``convert_weights``: both are used here, so the
stand-ins do not depend on dapl's own reading of the layout.
"""

from __future__ import annotations

import copy
import warnings
from pathlib import Path

import open_clip
import torch

FORMATS = ("state-dict", "torchscript")


def _calibrate_batchnorm(visual: torch.nn.Module) -> None:
    """Random affine BatchNorm parameters and running statistics measured on two noise images: with open_clip's
    init (zero residual gains, unit statistics) a random ResNet maps every image to nearly the same feature."""
    bns = [m for m in visual.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    size = visual.image_size
    size = size[0] if isinstance(size, tuple | list) else size
    with torch.no_grad():
        for bn in bns:
            bn.weight.uniform_(0.5, 1.0)
            bn.bias.normal_(0.0, 0.1)
            bn.momentum = 1.0  # the running statistics become this one batch's
        visual.train()
        visual(torch.randn(2, 3, size, size))
    for bn in bns:
        bn.momentum = 0.1
    visual.eval()


def openai_clip(arch: str = "RN50", seed: int = 0) -> torch.nn.Module:
    """A random CLIP of OpenAI's ``arch`` (RN50, RN101, ViT-B-32, ...) as ``convert_weights`` leaves it, whose
    image features differ between images; torch's global RNG is left as it was."""
    cfg = open_clip.get_model_config(f"{arch}-quickgelu")
    if cfg is None:
        raise ValueError(f"open_clip has no {arch}-quickgelu config to build an OpenAI {arch} from")
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = open_clip.CLIP(**cfg).eval()
        if any(isinstance(m, torch.nn.BatchNorm2d) for m in model.visual.modules()):
            _calibrate_batchnorm(model.visual)
    open_clip.model.convert_weights_to_lp(model, torch.float16)
    return model


def save_openai(model: torch.nn.Module, path: Path, fmt: str) -> Path:
    """Write ``model`` as OpenAI's files exist: ``state-dict`` (torch.save of the converted model's state dict)
    or ``torchscript`` (a scripted archive whose state dict also holds OpenAI's three extra entries)."""
    if fmt == "state-dict":
        torch.save(model.state_dict(), path)
        return path
    if fmt != "torchscript":
        raise ValueError(f"unknown format {fmt!r}; one of {FORMATS}")
    m = copy.deepcopy(model)
    size = m.visual.image_size
    extra = {"input_resolution": size[0] if isinstance(size, tuple | list) else size,
             "context_length": m.context_length, "vocab_size": m.vocab_size}
    for k, v in extra.items():
        if hasattr(m, k):
            delattr(m, k)
        m.register_buffer(k, torch.tensor(v))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TorchScript's deprecation notices
        torch.jit.script(m).save(str(path))
    return path


def build_openai_files(folder: Path, arch: str = "RN50", seed: int = 0) -> tuple[torch.nn.Module, dict[str, Path]]:
    """One random OpenAI ``arch`` and both its forms in ``folder`` (``{format: path}``), named as OpenAI does."""
    model = openai_clip(arch, seed)
    files = {}
    for fmt in FORMATS:
        (folder / fmt).mkdir(parents=True, exist_ok=True)
        files[fmt] = save_openai(model, folder / fmt / f"{arch}.pt", fmt)
    return model, files


# --- Datasets: the released archives' names and layouts, a few odd images each --------------------------------------

# Office-Home's 65 class folders as the release spells them (written out here, not read from dapl's registry, so a
# registry typo is caught rather than mirrored).
OFFICE_HOME_CLASS_FOLDERS = (
    "Alarm_Clock", "Backpack", "Batteries", "Bed", "Bike", "Bottle", "Bucket", "Calculator", "Calendar", "Candles",
    "Chair", "Clipboards", "Computer", "Couch", "Curtains", "Desk_Lamp", "Drill", "Eraser", "Exit_Sign", "Fan",
    "File_Cabinet", "Flipflops", "Flowers", "Folder", "Fork", "Glasses", "Hammer", "Helmet", "Kettle", "Keyboard",
    "Knives", "Lamp_Shade", "Laptop", "Marker", "Monitor", "Mop", "Mouse", "Mug", "Notebook", "Oven", "Pan",
    "Paper_Clip", "Pen", "Pencil", "Postit_Notes", "Printer", "Push_Pin", "Radio", "Refrigerator", "Ruler",
    "Scissors", "Screwdriver", "Shelf", "Sink", "Sneakers", "Soda", "Speaker", "Spoon", "TV", "Table", "Telephone",
    "ToothBrush", "Toys", "Trash_Can", "Webcam",
)
OFFICE_HOME_DOMAINS = ("Art", "Clipart", "Product", "Real World")  # the zip's spelling, space included
VISDA_CLASS_FOLDERS = ("aeroplane", "bicycle", "bus", "car", "horse", "knife", "motorcycle", "person", "plant",
                       "skateboard", "train", "truck")


def odd_image(i: int, seed: int = 0) -> tuple[str, bytes]:
    """The ``i``-th of a cycle of image files as real benchmarks hold them: RGB, greyscale, CMYK and progressive
    JPEGs, one with an EXIF rotation, a PNG behind a ``.jpg`` name, and a thin strip; (suffix, bytes)."""
    import io

    import numpy as np
    from PIL import Image

    rng = np.random.default_rng([seed, i])
    pixels = rng.integers(0, 256, (40 + i % 7, 56 - i % 5, 3), dtype=np.uint8)
    img = Image.fromarray(pixels)
    buf = io.BytesIO()
    kind = i % 7
    if kind == 1:
        img.convert("L").save(buf, "JPEG")
    elif kind == 2:
        img.convert("CMYK").save(buf, "JPEG")
    elif kind == 3:
        img.save(buf, "JPEG", progressive=True, quality=80)
    elif kind == 4:
        exif = Image.Exif()
        exif[0x0112] = 6  # orientation: rotate 90
        img.save(buf, "JPEG", exif=exif.tobytes())
    elif kind == 5:
        img.save(buf, "PNG")  # a PNG named .jpg, as scraped datasets hold
    elif kind == 6:
        img.resize((3, 97)).save(buf, "JPEG")
    else:
        img.save(buf, "JPEG", quality=90)
    return ".jpg", buf.getvalue()


def office_home_zip(folder: Path, classes: int | dict[str, int] = 65, per_class: int = 1) -> Path:
    """``OfficeHomeDataset_10072016.zip`` as released: the wrapper folder, four domains (``Real World`` with its
    space), all 65 class folders in each, ``per_class`` images in the first ``classes`` of them (a number for
    every domain or ``{domain: number}``), ImageInfo.csv."""
    import zipfile

    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "OfficeHomeDataset_10072016.zip"
    n = 0
    with zipfile.ZipFile(path, "w") as zf:
        for dom in OFFICE_HOME_DOMAINS:
            filled = classes.get(dom, 0) if isinstance(classes, dict) else classes
            for c, cls in enumerate(OFFICE_HOME_CLASS_FOLDERS):
                zf.writestr(f"OfficeHomeDataset_10072016/{dom}/{cls}/", "")
                for k in range(per_class if c < filled else 0):
                    suffix, data = odd_image(n)
                    zf.writestr(f"OfficeHomeDataset_10072016/{dom}/{cls}/{k + 1:05d}{suffix}", data)
                    n += 1
        zf.writestr("OfficeHomeDataset_10072016/ImageInfo.csv", "artist,source,domain,class\n")
        zf.writestr("OfficeHomeDataset_10072016/imagelist.txt", "")
    return path


def visda_tars(folder: Path, per_class: int = 1) -> dict[str, Path]:
    """VisDA-2017's ``train.tar`` (synthetic PNG renders) and ``validation.tar`` (real JPEGs), each one split
    folder with ``<class>/<file>`` images and ``image_list.txt`` lines ``<class>/<file> <label>``."""
    import io
    import tarfile

    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    out = {}
    n = 0
    for split, prefix in (("train", "src_1_02691156_"), ("validation", "")):
        path = folder / f"{split}.tar"
        lines = []
        with tarfile.open(path, "w") as tf:
            for label, cls in enumerate(VISDA_CLASS_FOLDERS):
                for k in range(per_class):
                    suffix, data = odd_image(n, seed=1)
                    if split == "train":  # renders are PNGs
                        buf = io.BytesIO()
                        Image.open(io.BytesIO(data)).convert("RGB").save(buf, "PNG")
                        suffix, data = ".png", buf.getvalue()
                    name = f"{cls}/{prefix}{n:08x}__{k}{suffix}" if prefix else f"{cls}/{cls}_{n:05d}{suffix}"
                    info = tarfile.TarInfo(f"{split}/{name}")
                    info.size = len(data)
                    tf.addfile(info, io.BytesIO(data))
                    lines.append(f"{name} {label}")
                    n += 1
            listing = ("\n".join(lines) + "\n").encode()
            info = tarfile.TarInfo(f"{split}/image_list.txt")
            info.size = len(listing)
            tf.addfile(info, io.BytesIO(listing))
        out[split] = path
    return out
