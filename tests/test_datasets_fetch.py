"""Fetching: fast, instructive failure offline or behind a click-through; resumable, checked downloads.

Only localhost is ever contacted: a guard fails the test on any other connection attempt.
"""

from __future__ import annotations

import hashlib
import io
import socket
import tarfile
import threading
import time
from dataclasses import replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from dapl.datasets import (
    REGISTRY,
    ChecksumError,
    DatasetUnavailable,
    Resource,
    download,
    fetch_dataset,
    index_dataset,
    offline_reason,
)

_real_connect = socket.create_connection


@pytest.fixture(autouse=True)
def localhost_only(monkeypatch):
    def guard(address, *a, **k):
        if address[0] not in ("127.0.0.1", "localhost", "::1"):
            raise AssertionError(f"test tried to contact {address}")
        return _real_connect(address, *a, **k)

    monkeypatch.setattr(socket, "create_connection", guard)


@pytest.fixture
def online(monkeypatch):
    """As if the machine were online: no offline switches, no probe override."""
    for var in ("DAPL_OFFLINE", "HF_HUB_OFFLINE", "DAPL_NET_PROBE"):
        monkeypatch.delenv(var, raising=False)


def _closed_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there any more: connections are refused at once
    return port


def test_offline_env_fails_fast_with_instructions(tmp_path, monkeypatch):
    monkeypatch.setenv("DAPL_OFFLINE", "1")
    root, dl = tmp_path / "data" / "visda2017", tmp_path / "dl"
    t = time.perf_counter()
    with pytest.raises(DatasetUnavailable) as ei:
        fetch_dataset("visda2017", root, download_dir=dl, progress=False)
    assert time.perf_counter() - t < 5
    msg = str(ei.value)
    assert "DAPL_OFFLINE=1 is set" in msg
    assert "train.tar from http://csr.bu.edu/ftp/visda17/clf/train.tar" in msg
    assert f"put it at: {dl.absolute() / 'validation.tar'}" in msg
    assert f"dapl data fetch visda2017 --root {root}" in msg


def test_unreachable_host_fails_within_seconds(tmp_path, online, monkeypatch):
    port = _closed_port()
    monkeypatch.setenv("DAPL_NET_PROBE", f"127.0.0.1:{port}")
    t = time.perf_counter()
    with pytest.raises(DatasetUnavailable, match=f"cannot reach 127.0.0.1:{port}") as ei:
        fetch_dataset("domainnet", tmp_path / "dn", download_dir=tmp_path / "dl", progress=False)
    assert time.perf_counter() - t < 5
    assert "clipart_train.txt" in str(ei.value) and "sketch.zip" in str(ei.value)
    # the probe itself, with an explicit address
    assert offline_reason(probe=("127.0.0.1", port), timeout=1.0).startswith("cannot reach")


def test_click_through_source_fails_at_once_even_online(tmp_path, online):
    dl = tmp_path / "dl"
    t = time.perf_counter()
    with pytest.raises(DatasetUnavailable) as ei:
        fetch_dataset("office_home", tmp_path / "oh", download_dir=dl, progress=False)
    assert time.perf_counter() - t < 1  # no network probe at all
    msg = str(ei.value)
    assert "click-through" in msg and "OfficeHomeDataset_10072016.zip" in msg
    assert str(dl.absolute() / "OfficeHomeDataset_10072016.zip") in msg
    assert "hemanthdv.org" in msg and str(tmp_path / "oh" / "Real_World") in msg


# -- a local HTTP server with Range support -------------------------------------------------------------
class _Files(BaseHTTPRequestHandler):
    files: dict[str, bytes] = {}
    ranges: list[str | None] = []
    honour_range = True
    cut_at: int | None = None  # stop sending there (the Content-Length still announces the whole file)

    def do_GET(self):  # noqa: N802 - http.server API
        data = self.files.get(self.path)
        if data is None:
            self.send_error(404)
            return
        rng = self.headers.get("Range")
        self.ranges.append(rng)
        start = int(rng.split("=")[1].split("-")[0]) if rng and self.honour_range else 0
        self.send_response(206 if start else 200)
        if start:
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        self.send_header("Content-Length", str(len(data) - start))
        self.end_headers()
        self.wfile.write(data[start:self.cut_at])

    def log_message(self, *args):
        pass


@pytest.fixture
def server():
    _Files.files, _Files.ranges, _Files.honour_range, _Files.cut_at = {}, [], True, None
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Files)
    th = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    th.start()
    yield _Files, f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def test_download_resumes_and_checks(tmp_path, server):
    files, base = server
    blob = bytes(range(256)) * 400
    files.files["/blob.bin"] = blob
    dest = tmp_path / "dl" / "blob.bin"
    dest.parent.mkdir()
    dest.with_name("blob.bin.part").write_bytes(blob[:1000])  # an interrupted earlier run
    sha = hashlib.sha256(blob).hexdigest()
    download(f"{base}/blob.bin", dest, size=len(blob), sha256=sha, progress=False)
    assert dest.read_bytes() == blob and files.ranges == ["bytes=1000-"]
    assert not dest.with_name("blob.bin.part").exists()

    files.honour_range = False  # a server that ignores Range: start again, no corruption
    dest2 = tmp_path / "dl" / "again.bin"
    dest2.with_name("again.bin.part").write_bytes(b"garbage")
    download(f"{base}/blob.bin", dest2, size=len(blob), progress=False)
    assert dest2.read_bytes() == blob

    with pytest.raises(ChecksumError, match="sha256"):
        download(f"{base}/blob.bin", tmp_path / "dl" / "bad.bin", sha256="0" * 64, progress=False)
    assert not (tmp_path / "dl" / "bad.bin").exists() and not (tmp_path / "dl" / "bad.bin.part").exists()
    with pytest.raises(DatasetUnavailable, match="HTTP 404"):
        download(f"{base}/nope.bin", tmp_path / "dl" / "nope.bin", progress=False)


def test_cut_short_download_never_passes_and_resumes(tmp_path, server):
    files, base = server
    blob = bytes(range(256)) * 400
    files.files["/blob.bin"] = blob
    files.cut_at = 5000  # the connection closes early; no size or sha256 known to check against
    dest = tmp_path / "blob.bin"
    with pytest.raises(DatasetUnavailable, match="stopped at 5000 of 102400 bytes"):
        download(f"{base}/blob.bin", dest, progress=False)
    assert not dest.exists() and dest.with_name("blob.bin.part").stat().st_size == 5000
    files.cut_at = None
    download(f"{base}/blob.bin", dest, progress=False)
    assert dest.read_bytes() == blob and files.ranges[-1] == "bytes=5000-"


def _visda_tar(split: str) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    lines = []
    with tarfile.open(fileobj=buf, mode="w") as tf:
        for label, cls in ((0, "aeroplane"), (11, "truck")):
            img = io.BytesIO()
            Image.new("RGB", (8, 8), (label * 20, 5 if split == "train" else 90, 3)).save(img, "PNG")
            data = img.getvalue()
            ti = tarfile.TarInfo(f"{split}/{cls}/{cls}_1.png")
            ti.size = len(data)
            tf.addfile(ti, io.BytesIO(data))
            lines.append(f"{cls}/{cls}_1.png {label}")
        listing = ("\n".join(lines) + "\n").encode()
        ti = tarfile.TarInfo(f"{split}/image_list.txt")
        ti.size = len(listing)
        tf.addfile(ti, io.BytesIO(listing))
    return buf.getvalue()


def test_fetch_downloads_extracts_and_indexes(tmp_path, server, online, monkeypatch):
    files, base = server
    tars = {s: _visda_tar(s) for s in ("train", "validation")}
    for s, data in tars.items():
        files.files[f"/{s}.tar"] = data
    spec = REGISTRY["visda2017"]
    res = tuple(Resource(f"{s}.tar", f"{base}/{s}.tar", size=len(tars[s]),
                         sha256=hashlib.sha256(tars[s]).hexdigest(), provides=(s,)) for s in tars)
    monkeypatch.setitem(REGISTRY, "visda2017", replace(spec, resources=res))
    root, dl = tmp_path / "data" / "visda2017", tmp_path / "dl"
    fetch_dataset("visda2017", root, download_dir=dl, progress=False, check_counts=False)
    assert (dl / "train.tar").is_file() and (root / "validation" / "image_list.txt").is_file()
    m = index_dataset("visda2017", root, progress=False, check_counts=False)
    assert m.n_ok == 4 and set(m.ok["class_idx"]) == {0, 11}
    n = len(files.ranges)
    fetch_dataset("visda2017", root, download_dir=dl, progress=False, check_counts=False)  # stamped: no download
    assert len(files.ranges) == n
