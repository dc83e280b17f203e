"""Downloads that resume (HTTP Range) and are checked against a known size/sha256, and a fast offline verdict
(an environment switch or a 3 s probe) so an offline machine is told where to put the file instead of waiting."""

from __future__ import annotations

import hashlib
import os
import socket
import threading
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from tqdm.auto import tqdm

from dapl.datasets.errors import ChecksumError, DatasetUnavailable

OFFLINE_ENV = ("DAPL_OFFLINE", "HF_HUB_OFFLINE")
PROBE_ENV = "DAPL_NET_PROBE"  # "host:port" to probe instead of the download host (tests use a closed port)
PROBE_TIMEOUT = 3.0


def default_download_dir() -> Path:
    """``$DAPL_DOWNLOAD_DIR`` or ``~/.cache/dapl/downloads``: outside ``data/`` so DVC does not track archives."""
    env = os.environ.get("DAPL_DOWNLOAD_DIR")
    return Path(env) if env else Path.home() / ".cache" / "dapl" / "downloads"


def offline_reason(url: str | None = None, probe: tuple[str, int] | None = None,
                   timeout: float = PROBE_TIMEOUT) -> str | None:
    """``None`` if ``url``'s host answers a TCP connect within ``timeout`` seconds, else why not.

    ``DAPL_OFFLINE=1`` or ``HF_HUB_OFFLINE=1`` skip the probe. The connect runs in a daemon thread so that a
    hanging DNS lookup cannot stretch the wait past ``timeout``.
    """
    for var in OFFLINE_ENV:
        if os.environ.get(var, "").strip().lower() in ("1", "true", "yes", "on"):
            return f"{var}={os.environ[var]} is set"
    if probe is None and os.environ.get(PROBE_ENV):
        host, _, port = os.environ[PROBE_ENV].rpartition(":")
        probe = (host, int(port))
    if probe is None:
        if not url:
            return None
        u = urllib.parse.urlsplit(url)
        probe = (u.hostname or "", u.port or (443 if u.scheme == "https" else 80))
    result: list[str | None] = []

    def connect() -> None:
        try:
            socket.create_connection(probe, timeout=timeout).close()
            result.append(None)
        except OSError as e:
            result.append(f"cannot reach {probe[0]}:{probe[1]} ({e.__class__.__name__}: {e})")

    t = threading.Thread(target=connect, daemon=True)
    t.start()
    t.join(timeout + 0.2)
    return result[0] if result else f"cannot reach {probe[0]}:{probe[1]} (no answer in {timeout:.0f} s)"


def download(url: str, dest: Path | str, *, size: int | None = None, sha256: str | None = None,
             progress: bool = True, timeout: float = 30.0) -> Path:
    """Download ``url`` to ``dest``, resuming a ``dest.part`` left by an interrupted run (HTTP Range)."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    have = part.stat().st_size if part.exists() else 0
    if size is not None and have > size:
        part.unlink()
        have = 0
    if size is None or have < size:
        headers = {"User-Agent": "dapl-fetch"}
        if have:
            headers["Range"] = f"bytes={have}-"
        try:
            with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout) as r:
                resumed = have > 0 and r.status == 206
                if not resumed:
                    have = 0
                length = r.headers.get("Content-Length")
                total = have + int(length) if length is not None else size
                with open(part, "ab" if resumed else "wb") as f, tqdm(
                        total=total, initial=have, unit="B", unit_scale=True, desc=dest.name,
                        disable=not progress) as bar:
                    while chunk := r.read(1 << 20):
                        f.write(chunk)
                        bar.update(len(chunk))
            got = part.stat().st_size
            if total is not None and got < total:  # the connection closed early: never pass a cut file on
                raise DatasetUnavailable(f"downloading {url} stopped at {got} of {total} bytes; the partial file "
                                         f"{part} is kept and resumed next time: run the same command again")
        except urllib.error.HTTPError as e:
            if not (e.code == 416 and have and (size is None or have == size)):  # 416: .part already whole
                raise DatasetUnavailable(f"downloading {url} failed: HTTP {e.code} {e.reason}. Download it "
                                         f"yourself and put it at {dest}") from e
        except (urllib.error.URLError, OSError) as e:
            raise DatasetUnavailable(f"downloading {url} failed ({e}); the partial file {part} is kept and "
                                     f"resumed next time. Or download it yourself and put it at {dest}") from e
    try:
        verify_file(part, size=size, sha256=sha256, label=url)
    except ChecksumError:
        if size is None or part.stat().st_size >= size:
            part.unlink()  # a complete but wrong file cannot be resumed
        raise
    os.replace(part, dest)
    return dest


def sha256_file(path: Path | str, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while b := f.read(chunk):
            h.update(b)
    return h.hexdigest()


def verify_file(path: Path | str, *, size: int | None = None, sha256: str | None = None, label: str = "") -> None:
    """Check ``path`` against the expected size and sha256 (either may be unknown)."""
    path = Path(path)
    got = path.stat().st_size
    if size is not None and got != size:
        raise ChecksumError(f"{path}: {got} bytes, expected {size} ({label or path.name}); the file is "
                            "incomplete or a different version. Delete it and download it again.")
    if sha256 is not None:
        digest = sha256_file(path)
        if digest != sha256.lower():
            raise ChecksumError(f"{path}: sha256 {digest}, expected {sha256} ({label or path.name}). "
                                "Delete it and download it again.")
