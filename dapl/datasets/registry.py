"""What each dataset is: domains, classes, splits, metric, default tau, where its files come from.

A dataset's training recipe (settings that differ from the preset) is data too: ``dapl/recipes/<name>.yaml``,
read by :func:`dapl.plan.dataset_recipe`.

Pure data, no I/O, so the CLI, the Prefect tasks and the DVC stages all read the same facts. Class indices
follow the released DAPL code (Dassl): the class folders sorted with Python's case-sensitive ``sorted`` (so
Office-Home's ``TV`` comes before ``Table``); display names are the folder names lower-cased with ``_``
replaced by a space. DomainNet's 345 and mini-DomainNet's 126 classes are read from the official split files
at index time (ordered by their label there) instead of being copied here.
"""

from __future__ import annotations

import difflib
import itertools
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal

from dapl.datasets.errors import UnknownDatasetError
from dapl.datasets.tree import plain_dir, scan

DEFAULT_TAU = 0.5  # pseudo-label threshold of a dataset that sets none (DaplConfig.tau falls back to it too)
Layout = Literal["folders", "image_list", "split_files", "toy"]
Metric = Literal["accuracy", "mean_per_class"]


IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"})


def display_name(folder: str) -> str:
    """The class name used in prompts: folder name lower-cased, ``_`` -> space (released DAPL code)."""
    return folder.replace("_", " ").lower().strip()


@dataclass(frozen=True)
class DomainSpec:
    """A domain: ``key`` is what configs, prompts and manifests use; ``folder`` is its directory after
    normalisation; ``aliases`` are directory names found in the wild (renamed to ``folder`` on fetch)."""

    key: str
    folder: str
    aliases: tuple[str, ...] = ()
    split: str | None = None  # VisDA: a domain *is* a split (synthetic = train, real = validation)
    images: int | None = None  # images in the official release; fetch and index fail when fewer are there

    @property
    def all_folders(self) -> tuple[str, ...]:
        return (self.folder, *self.aliases)


@dataclass(frozen=True)
class Resource:
    """One file the dataset is made of: an archive to extract or a plain file (a split list) to copy."""

    filename: str
    url: str | None
    kind: Literal["archive", "file"] = "archive"
    manual: bool = False  # behind a click-through (Google Drive, a form): never downloaded automatically
    size: int | None = None  # exact bytes, checked when known
    sha256: str | None = None
    approx: str = ""  # human size for messages, e.g. "1.3 GB"
    provides: tuple[str, ...] = ()  # paths (relative to the dataset root) present once it is in place
    where: str = ""  # a page with the link, for click-through sources


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    title: str
    domains: tuple[DomainSpec, ...] = ()  # empty: discovered from the folder tree (folder, toy)
    class_folders: tuple[str, ...] = ()  # empty: discovered (folders, or split-file labels)
    layout: Layout = "folders"
    splits: tuple[str, ...] = ("all",)
    metric: Metric = "accuracy"
    tau: float = DEFAULT_TAU
    resources: tuple[Resource, ...] = ()
    homepage: str = ""
    split_file: str = ""  # layout split_files: pattern with {domain} and {split}; image_list: file name
    tasks: tuple[tuple[str, str], ...] = ()  # empty: every ordered pair of distinct domains
    notes: str = ""
    discovered: bool = field(default=False, compare=False)

    @property
    def classes(self) -> tuple[str, ...]:
        """Display names in class-index order."""
        return tuple(display_name(c) for c in self.class_folders)

    @property
    def domain_keys(self) -> tuple[str, ...]:
        return tuple(d.key for d in self.domains)

    @property
    def pairs(self) -> tuple[tuple[str, str], ...]:
        """Ordered (source, target) tasks; Office-Home gives its 12 in the paper's order A->C ... R->P."""
        return self.tasks or tuple(itertools.permutations(self.domain_keys, 2))

    def domain(self, name: str) -> DomainSpec:
        """A domain by key, folder or alias (case-insensitive): ``Real World`` -> ``real_world``."""
        low = name.lower()
        for d in self.domains:
            if low == d.key.lower() or low in (f.lower() for f in d.all_folders):
                return d
        raise KeyError(f"{self.name} has no domain {name!r}; its domains are {list(self.domain_keys)}")

    @property
    def downloadable(self) -> bool:
        return bool(self.resources) and all(r.url and not r.manual for r in self.resources)


# --------------------------------------------------------------------------------------------------
OFFICE_HOME_CLASSES = (
    "Alarm_Clock", "Backpack", "Batteries", "Bed", "Bike", "Bottle", "Bucket", "Calculator", "Calendar",
    "Candles", "Chair", "Clipboards", "Computer", "Couch", "Curtains", "Desk_Lamp", "Drill", "Eraser",
    "Exit_Sign", "Fan", "File_Cabinet", "Flipflops", "Flowers", "Folder", "Fork", "Glasses", "Hammer",
    "Helmet", "Kettle", "Keyboard", "Knives", "Lamp_Shade", "Laptop", "Marker", "Monitor", "Mop", "Mouse",
    "Mug", "Notebook", "Oven", "Pan", "Paper_Clip", "Pen", "Pencil", "Postit_Notes", "Printer", "Push_Pin",
    "Radio", "Refrigerator", "Ruler", "Scissors", "Screwdriver", "Shelf", "Sink", "Sneakers", "Soda",
    "Speaker", "Spoon", "TV", "Table", "Telephone", "ToothBrush", "Toys", "Trash_Can", "Webcam",
)
OFFICE31_CLASSES = (
    "back_pack", "bike", "bike_helmet", "bookcase", "bottle", "calculator", "desk_chair", "desk_lamp",
    "desktop_computer", "file_cabinet", "headphones", "keyboard", "laptop_computer", "letter_tray",
    "mobile_phone", "monitor", "mouse", "mug", "paper_notebook", "pen", "phone", "printer", "projector",
    "punchers", "ring_binder", "ruler", "scissors", "speaker", "stapler", "tape_dispenser", "trash_can",
)
VISDA_CLASSES = (
    "aeroplane", "bicycle", "bus", "car", "horse", "knife", "motorcycle", "person", "plant", "skateboard",
    "train", "truck",
)
DOMAINNET_DOMAINS = ("clipart", "infograph", "painting", "quickdraw", "real", "sketch")
MINI_DOMAINNET_DOMAINS = ("clipart", "painting", "real", "sketch")

_DN = "http://csr.bu.edu/ftp/visda/2019/multi-source"
# The "cleaned" release: clipart and painting were re-uploaded under groundtruth/.
_DN_ZIPS = {
    "clipart": (f"{_DN}/groundtruth/clipart.zip", "1.3 GB"),
    "infograph": (f"{_DN}/infograph.zip", "4.0 GB"),
    "painting": (f"{_DN}/groundtruth/painting.zip", "3.7 GB"),
    "quickdraw": (f"{_DN}/quickdraw.zip", "439 MB"),
    "real": (f"{_DN}/real.zip", "5.6 GB"),
    "sketch": (f"{_DN}/sketch.zip", "2.5 GB"),
}


def _dn_zip(domain: str) -> Resource:
    url, approx = _DN_ZIPS[domain]
    return Resource(f"{domain}.zip", url, approx=approx, provides=(domain,))


def _dn_split(domain: str, split: str) -> Resource:
    name = f"{domain}_{split}.txt"
    return Resource(name, f"{_DN}/domainnet/txt/{name}", kind="file", provides=(name,))


_MINI_SPLITS_WHERE = ("the 'splits_mini' folder of the mini-DomainNet split files published with Dassl "
                      "(https://github.com/KaiyangZhou/Dassl.pytorch/blob/master/DATASETS.md, Google Drive)")

REGISTRY: dict[str, DatasetSpec] = {
    "office_home": DatasetSpec(
        name="office_home",
        title="Office-Home",
        domains=(
            DomainSpec("art", "Art", images=2427),
            DomainSpec("clipart", "Clipart", images=4365),
            DomainSpec("product", "Product", images=4439),
            DomainSpec("real_world", "Real_World", aliases=("Real World", "RealWorld"), images=4357),
        ),
        class_folders=OFFICE_HOME_CLASSES,
        tau=0.6,
        resources=(
            Resource("OfficeHomeDataset_10072016.zip", None, manual=True,
                     provides=("Art", "Clipart", "Product", "Real_World"),
                     where="the Google Drive link on https://www.hemanthdv.org/officeHomeDataset.html "
                           "(formerly http://hemanthdv.org/OfficeHome-Dataset/; a click-through)"),
        ),
        homepage="https://www.hemanthdv.org/officeHomeDataset.html",
        notes="Archive holds OfficeHomeDataset_10072016/<Domain>/<Class>/*.jpg; 'Real World' is renamed "
              "'Real_World' on fetch (an unrenamed folder is also accepted).",
    ),
    "visda2017": DatasetSpec(
        name="visda2017",
        title="VisDA-2017 (classification)",
        domains=(DomainSpec("synthetic", "train", split="train", images=152_397),
                 DomainSpec("real", "validation", split="validation", images=55_388)),
        class_folders=VISDA_CLASSES,
        layout="image_list",
        splits=("train", "validation"),
        metric="mean_per_class",
        tau=0.5,
        resources=(
            Resource("train.tar", "http://csr.bu.edu/ftp/visda17/clf/train.tar", provides=("train",)),
            Resource("validation.tar", "http://csr.bu.edu/ftp/visda17/clf/validation.tar",
                     provides=("validation",)),
        ),
        homepage="http://ai.bu.edu/visda-2017/",
        split_file="image_list.txt",
        tasks=(("synthetic", "real"),),
        notes="<split>/image_list.txt lists '<class>/<file> <label>' relative to <split>/.",
    ),
    "domainnet": DatasetSpec(
        name="domainnet",
        title="DomainNet (cleaned)",
        domains=tuple(DomainSpec(d, d) for d in DOMAINNET_DOMAINS),
        layout="split_files",
        splits=("train", "test"),
        resources=tuple(_dn_zip(d) for d in DOMAINNET_DOMAINS)
        + tuple(_dn_split(d, s) for d in DOMAINNET_DOMAINS for s in ("train", "test")),
        homepage="http://ai.bu.edu/M3SDA/",
        split_file="{domain}_{split}.txt",
        notes="345 classes, read from the split files (lines '<domain>/<class>/<file> <label>').",
    ),
    "mini_domainnet": DatasetSpec(
        name="mini_domainnet",
        title="mini-DomainNet",
        domains=tuple(DomainSpec(d, d) for d in MINI_DOMAINNET_DOMAINS),
        layout="split_files",
        splits=("train", "test"),
        resources=tuple(_dn_zip(d) for d in MINI_DOMAINNET_DOMAINS)
        + (Resource("splits_mini.zip", None, manual=True, provides=("splits_mini",),
                    where=_MINI_SPLITS_WHERE),),
        homepage="https://github.com/KaiyangZhou/Dassl.pytorch/blob/master/DATASETS.md",
        split_file="splits_mini/{domain}_{split}.txt",
        notes="126 classes of DomainNet, read from the split files; images are DomainNet's.",
    ),
    "office31": DatasetSpec(
        name="office31",
        title="Office-31",
        domains=(DomainSpec("amazon", "amazon", images=2817), DomainSpec("dslr", "dslr", images=498),
                 DomainSpec("webcam", "webcam", images=795)),
        class_folders=OFFICE31_CLASSES,
        resources=(
            Resource("domain_adaptation_images.tar.gz", None, manual=True,
                     provides=("amazon", "dslr", "webcam"),
                     where="the 'Office dataset' Google Drive link on "
                           "https://faculty.cc.gatech.edu/~judy/domainadapt/"),
        ),
        homepage="https://faculty.cc.gatech.edu/~judy/domainadapt/",
        notes="Archive holds <domain>/images/<class>/*.jpg; the images/ level is removed on fetch.",
    ),
    "folder": DatasetSpec(
        name="folder",
        title="Any image folder tree root/<domain>/<class>/<image>",
        notes="Domains and classes are the sorted sub-folder names.",
    ),
    "toy": DatasetSpec(
        name="toy",
        title="Toy multi-domain world (generated, dapl.toy.world)",
        layout="toy",
        notes="Generated byte-deterministically by dapl.toy.world.generate_world(root, seed); "
              "laid out as root/<domain>/<class>/<image>.",
    ),
}


def list_datasets() -> list[str]:
    return list(REGISTRY)


def get_spec(name: str) -> DatasetSpec:
    """The registry entry ``name`` (``office-home`` and ``OfficeHome`` style spellings accepted)."""
    key = name.lower().replace("-", "_")
    aliases = {"officehome": "office_home", "visda": "visda2017", "visda_2017": "visda2017",
               "office_31": "office31", "minidomainnet": "mini_domainnet"}
    key = aliases.get(key, key)
    if key not in REGISTRY:
        close = difflib.get_close_matches(key, [*REGISTRY, *aliases], n=1, cutoff=0.6)
        hint = f"did you mean {aliases.get(close[0], close[0])!r}? " if close else ""
        raise UnknownDatasetError(f"unknown dataset {name!r}; {hint}known: {', '.join(REGISTRY)} "
                                  "(see `dapl data list`)")
    return REGISTRY[key]


def _subdirs(path: Path) -> list[str]:
    """Real sub-folders of ``path``, sorted: links and control-character names are never domains or classes."""
    if not plain_dir(path):
        return []
    return [p.name for p, is_dir in scan(path)[0] if is_dir]


def discover(spec: DatasetSpec, root: Path) -> DatasetSpec:
    """Fill in domains and classes found on disk for ``folder``/``toy`` specs (sorted folder names).

    The toy world publishes ``TOY_DOMAINS``/``TOY_CLASSES`` (folder names, in its class-index order) in
    :mod:`dapl.toy.world`; they win over discovery so a missing domain is reported, not silently ignored.
    """
    if spec.domains and (spec.class_folders or spec.layout == "split_files"):
        return spec
    domains: tuple[str, ...] = ()
    classes: tuple[str, ...] = ()
    if spec.layout == "toy":
        domains, classes = _toy_constants()
    root = Path(root)
    if not domains:
        domains = tuple(_subdirs(root))
    if not classes:
        found: set[str] = set()
        for d in domains:
            sub = root / d
            kids = _subdirs(sub)
            if kids == ["images"]:  # Office-31-like extra level
                kids = _subdirs(sub / "images")
            found.update(kids)
        classes = tuple(sorted(found))
    doms = tuple(DomainSpec(d, d) for d in domains)
    return replace(spec, domains=doms, class_folders=classes, discovered=True)


def _toy_constants() -> tuple[tuple[str, ...], tuple[str, ...]]:
    try:
        from dapl.toy import world  # lazy: the toy world is optional for every other dataset
    except ImportError:
        return (), ()
    doms = getattr(world, "TOY_DOMAINS", ())
    classes = getattr(world, "TOY_CLASSES", ())
    return tuple(str(d) for d in doms), tuple(str(c) for c in classes)
