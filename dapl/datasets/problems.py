"""The problem table: every reason a file was excluded, and dataset-level warnings, in one polars frame."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import polars as pl

from dapl.datasets.errors import UnusableDatasetError

PROBLEM_SCHEMA = {"severity": pl.Utf8, "kind": pl.Utf8, "domain": pl.Utf8, "class_name": pl.Utf8,
                  "path": pl.Utf8, "detail": pl.Utf8}
SEVERITY_ORDER = {"error": 0, "excluded": 1, "warning": 2, "info": 3}


def note(severity: str, kind: str, domain: str | None, class_name: str | None, path: str | None,
          detail: str) -> dict:
    return {"severity": severity, "kind": kind, "domain": domain, "class_name": class_name, "path": path,
            "detail": detail}


def find_problems(df: pl.DataFrame, classes: list[str], domains: list[str],
                  notes: Iterable[dict] = ()) -> pl.DataFrame:
    """All problems as one table (severity, kind, domain, class_name, path, detail).

    Severities: ``error`` (a domain has no usable image), ``excluded`` (a file left out), ``warning``
    (usable but suspicious: a class missing from a domain, identical files in two domains or under two
    classes), ``info`` (non-RGB modes converted on load, unlisted files, ...).
    """
    out: list[dict] = list(notes)
    bad = df.filter(pl.col("status") == "excluded")
    for r in bad.select("domain", "class_name", "path", "problem").iter_rows(named=True):
        kind, _, detail = (r["problem"] or "error: ?").partition(": ")
        out.append(note("excluded", kind, r["domain"], r["class_name"], r["path"], detail))
    ok = df.filter(pl.col("status") == "ok")
    for r in ok.filter(pl.col("mode") != "RGB").select("domain", "class_name", "path", "mode").iter_rows(
            named=True):
        out.append(note("info", "non_rgb_mode", r["domain"], r["class_name"], r["path"],
                         f"mode {r['mode']}; converted to RGB when loaded"))
    per = ok.group_by("domain", "class_idx").len()
    have = {(d, c) for d, c in per.select("domain", "class_idx").iter_rows()}
    counts = dict(ok.group_by("domain").len().iter_rows())
    for d in domains:
        if not counts.get(d):
            out.append(note("error", "empty_domain", d, None, None, "domain has no usable image"))
    unlabelled = {d for d, c in have if c < 0} - {d for d, c in have if c >= 0}  # a flat folder: no classes
    for d in sorted(unlabelled):
        out.append(note("info", "unlabelled_domain", d, None, None,
                        "images without class folders: adapted to, never scored (give a labelled sample to score)"))
    live = [d for d in domains if counts.get(d) and d not in unlabelled]
    for c, name in enumerate(classes):
        present = [d for d in live if (d, c) in have]
        if not present:
            out.append(note("warning", "missing_class", None, name, None,
                            f"class {name!r} has no usable image in any domain"))
            continue
        for d in live:
            if (d, c) not in have:
                out.append(note("warning", "missing_class", d, name, None,
                                f"class {name!r} has no usable image in domain {d!r} "
                                f"(present in: {', '.join(present)})"))
    out += _duplicates(ok)
    table = pl.DataFrame(out, schema=PROBLEM_SCHEMA)
    return (table.with_columns(pl.col("severity").replace_strict(SEVERITY_ORDER, default=9).alias("_s"))
            .sort(["_s", "kind", "domain", "path"], nulls_last=True).drop("_s"))


def _duplicates(ok: pl.DataFrame) -> list[dict]:
    dup = (ok.filter(pl.col("sha256").is_not_null())
           .filter(pl.col("sha256").is_duplicated())
           .sort("domain", "path"))
    out = []
    for _, g in dup.group_by("sha256", maintain_order=True):
        doms = g["domain"].unique().to_list()
        labels = g["class_idx"].unique().to_list()
        if len(doms) > 1:
            kind, sev = "duplicate_across_domains", "warning"
        elif len(labels) > 1:
            kind, sev = "duplicate_label_conflict", "warning"
        else:
            kind, sev = "duplicate_within_domain", "info"
        paths = g["path"].to_list()
        for r in g.iter_rows(named=True):
            others = [p for p in paths if p != r["path"]]
            more = f" and {len(others) - 3} more" if len(others) > 3 else ""
            out.append(note(sev, kind, r["domain"], r["class_name"], r["path"],
                             f"same content as {', '.join(others[:3])}{more}"))
    return out


def problem_counts(problems: pl.DataFrame, examples: int = 3) -> pl.DataFrame:
    """How many problems of each severity/kind, with a few example files."""
    if problems.is_empty():
        return pl.DataFrame(schema={"severity": pl.Utf8, "kind": pl.Utf8, "count": pl.UInt32,
                                    "examples": pl.Utf8})
    return (problems.group_by("severity", "kind", maintain_order=True)
            .agg(pl.len().alias("count"),
                 pl.coalesce("path", pl.concat_str("domain", "class_name", separator="/"), "class_name", "domain")
                 .drop_nulls().head(examples).str.join(", ").alias("examples")))


def check_usable(manifest, source: Sequence[str], target: Sequence[str], split: str | None = None) -> None:
    """Fail fast, before any weights load, when a run's data cannot work.

    Raises :class:`UnusableDatasetError` (one line, naming the domain or class and pointing at the problem
    table) when a source or target domain is unknown or has no usable image (in ``split`` when given), or a
    class has no usable source image (its prompts could not be learned).
    """
    hint = (f"see the problem table: dapl data index {manifest.dataset} --root {manifest.root} "
            "--problems problems.csv")
    ok = manifest.ok if split is None else manifest.ok.filter(pl.col("split") == split)
    keys: dict[str, list[str]] = {}
    for role, names in (("source", source), ("target", target)):
        keys[role] = []
        for name in names:
            try:
                key = manifest._domain_key(name)
            except KeyError:
                raise UnusableDatasetError(f"data.{role}: {manifest.dataset} has no domain {name!r}; its domains "
                                           f"are {', '.join(manifest.domains)}") from None
            if ok.filter(pl.col("domain") == key).is_empty():
                n = manifest.df.filter(pl.col("domain") == key).height
                where = f" in split {split!r}" if split else ""
                raise UnusableDatasetError(f"{role} domain {key!r} of {manifest.dataset} has no usable image{where} "
                                           f"({n} file(s) indexed, none usable); {hint}")
            keys[role].append(key)
    present = set(ok.filter(pl.col("domain").is_in(keys["source"]))["class_idx"].to_list())
    missing = [c for k, c in enumerate(manifest.classes) if k not in present]
    if missing:
        more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
        raise UnusableDatasetError(
            f"class(es) {', '.join(map(repr, missing[:5]))}{more} of {manifest.dataset} have no usable image in "
            f"source domain(s) {', '.join(keys['source'])}, so their prompts cannot be learned; add images or "
            f"choose other source domains; {hint}")
