"""Tests for medslim.data.fetch against a local HTTP server (127.0.0.1 only).

Archives are built from a few real samples of ``../shared/data`` so the
fetched layout is checked against what the readers see; tests that need
those samples skip when the folder is absent.
"""

from __future__ import annotations

import dataclasses
import hashlib
import http.server
import io
import json
import os
import re
import tarfile
import threading
import zipfile
from pathlib import Path
from typing import Iterator

import pytest

from medslim.data.fetch import fetch, parse_checksum
from medslim.data.locate import DATASETS
from medslim.errors import ConfigError, DownloadError


def shared_data() -> Path | None:
    """The shared data folder: ``$MEDSLIM_DATA`` or ``../shared/data`` from the repository root."""
    env = os.environ.get("MEDSLIM_DATA")
    candidates = [Path(env)] if env else []
    candidates.append(Path(__file__).resolve().parents[1].parent / "shared" / "data")
    return next((p for p in candidates if (p / "kvasir-seg").is_dir()), None)


SHARED = shared_data()
needs_shared = pytest.mark.skipif(
    SHARED is None, reason="shared data folder (../shared/data or $MEDSLIM_DATA) is absent"
)


# --- a tiny HTTP server ----------------------------------------------------------


class Server:
    """Serves ``files`` (path -> bytes) and counts requests; special paths misbehave on purpose."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.hits: list[str] = []
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.02,), daemon=True)

    def _handler(self) -> type[http.server.BaseHTTPRequestHandler]:
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                server.hits.append(self.path)
                body = server.files.get(self.path.split("?")[0])
                if body is None:
                    self.send_error(404, "Not Found")
                    return
                claimed = len(body) + 4096 if self.path.startswith("/short/") else len(body)
                self.send_response(200)
                self.send_header("Content-Length", str(claimed))
                self.end_headers()
                self.wfile.write(body)  # then the connection closes, short of `claimed`

            def log_message(self, *args: object) -> None:
                pass

        return Handler

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}{path}"

    def add(self, path: str, body: bytes) -> str:
        self.files[path] = body
        return self.url(path)


@pytest.fixture
def server() -> Iterator[Server]:
    srv = Server()
    srv.thread.start()
    try:
        yield srv
    finally:
        srv.httpd.shutdown()
        srv.httpd.server_close()


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def md5(data: bytes) -> str:
    return "md5:" + hashlib.md5(data).hexdigest()


# --- archives from a few real samples ------------------------------------------------


def kvasir_zip(n: int = 5, extra: dict[str, bytes] | None = None) -> bytes:
    """A Kvasir-SEG style zip: ``Kvasir-SEG/{images,masks}/*.jpg`` plus any ``extra`` members."""
    assert SHARED is not None
    names = sorted(p.name for p in (SHARED / "kvasir-seg" / "images").iterdir())[:n]
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name in names:
            for sub in ("images", "masks"):
                zf.write(SHARED / "kvasir-seg" / sub / name, f"Kvasir-SEG/{sub}/{name}")
        zf.writestr("__MACOSX/Kvasir-SEG/._images", b"resource fork")
        for member, body in (extra or {}).items():
            zf.writestr(member, body)
    return buf.getvalue()


def add_tar_member(tf: tarfile.TarFile, name: str, body: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(body)
    tf.addfile(info, io.BytesIO(body))


def hippocampus_tar(cases: int = 3) -> tuple[bytes, list[str]]:
    """A Task04_Hippocampus style tar with ``cases`` cases, a test image and macOS ``._*`` files."""
    assert SHARED is not None
    root = SHARED / "hippocampus"
    meta = json.loads((root / "dataset.json").read_text())
    training = meta["training"][:cases]
    meta.update(training=training, numTraining=cases, numTest=1, test=["./imagesTs/hippocampus_002.nii.gz"])
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:") as tf:
        add_tar_member(tf, "Task04_Hippocampus/dataset.json", json.dumps(meta).encode())
        add_tar_member(tf, "Task04_Hippocampus/._dataset.json", b"\x00\x05\x16\x07 resource fork")
        for entry in training:
            for key in ("image", "label"):
                rel = entry[key].removeprefix("./")
                tf.add(root / rel, f"Task04_Hippocampus/{rel}")
                add_tar_member(tf, f"Task04_Hippocampus/{Path(rel).parent}/._{Path(rel).name}", b"fork")
        tf.add(root / training[0]["image"], "Task04_Hippocampus/imagesTs/hippocampus_002.nii.gz")
    return buf.getvalue(), [Path(e["image"]).name for e in training]


def assert_empty(folder: Path) -> None:
    """Nothing left behind: no temp download, no half-extracted folder."""
    assert not folder.exists() or list(folder.iterdir()) == []


# --- successful fetches ----------------------------------------------------------------


@needs_shared
def test_fetch_kvasir_layout_and_cache_reuse(server: Server, tmp_path: Path) -> None:
    body = kvasir_zip()
    url = server.add("/kvasir-seg.zip", body)
    cache = tmp_path / "cache"
    out = fetch("kvasir-seg", cache=cache, url=url, checksum=sha256(body), progress=False)
    assert out == cache / "kvasir-seg"
    images = sorted(p.name for p in (out / "images").iterdir())
    assert len(images) == 5 and images == sorted(p.name for p in (out / "masks").iterdir())
    assert (out / "images" / images[0]).read_bytes() == (SHARED / "kvasir-seg" / "images" / images[0]).read_bytes()
    assert sorted(p.name for p in cache.iterdir()) == ["kvasir-seg"]  # no temp files, no __MACOSX
    assert len(server.hits) == 1
    again = fetch("kvasir-seg", cache=cache, url=url, checksum=sha256(body), progress=False)
    assert again == out and len(server.hits) == 1  # served from the cache


@needs_shared
def test_fetch_hippocampus_skips_resource_forks(server: Server, tmp_path: Path) -> None:
    body, images = hippocampus_tar()
    url = server.add("/Task04_Hippocampus.tar", body)
    out = fetch("hippocampus", cache=tmp_path, url=url, checksum=md5(body), progress=False)
    assert sorted(p.name for p in out.iterdir()) == ["dataset.json", "imagesTr", "imagesTs", "labelsTr"]
    assert sorted(p.name for p in (out / "imagesTr").iterdir()) == sorted(images)
    assert sorted(p.name for p in (out / "labelsTr").iterdir()) == sorted(images)
    assert len(json.loads((out / "dataset.json").read_text())["training"]) == 3


@needs_shared
def test_fetch_pneumoniamnist_npz(server: Server, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert SHARED is not None
    body = (SHARED / "pneumoniamnist" / "pneumoniamnist.npz").read_bytes()
    url = server.add("/pneumoniamnist.npz", body)
    out = fetch("pneumoniamnist", cache=tmp_path, url=url + "?download=1", checksum=md5(body), progress=True)
    assert sorted(p.name for p in out.iterdir()) == ["pneumoniamnist.npz"]
    assert (out / "pneumoniamnist.npz").read_bytes() == body
    assert "pneumoniamnist" in capsys.readouterr().err  # a progress line went to stderr


# --- failures leave nothing behind ---------------------------------------------------------


@needs_shared
def test_checksum_mismatch_names_url_and_both_checksums(server: Server, tmp_path: Path) -> None:
    body = kvasir_zip()
    url = server.add("/kvasir-seg.zip", body)
    wrong = "sha256:" + "0" * 64
    with pytest.raises(DownloadError) as err:
        fetch("kvasir-seg", cache=tmp_path, url=url, checksum=wrong, progress=False)
    message = str(err.value)
    assert url in message and wrong in message and sha256(body) in message
    assert_empty(tmp_path)


def test_connection_dropped_short_of_content_length(server: Server, tmp_path: Path) -> None:
    body = b"x" * 10_000
    url = server.add("/short/data.npz", body)
    with pytest.raises(DownloadError, match="cut short") as err:
        fetch("pneumoniamnist", cache=tmp_path, url=url, checksum=md5(body), progress=False)
    assert url in str(err.value)
    assert_empty(tmp_path)


def test_http_404(server: Server, tmp_path: Path) -> None:
    url = server.url("/nothing-here.zip")
    with pytest.raises(DownloadError, match="404") as err:
        fetch("kvasir-seg", cache=tmp_path, url=url, checksum="none", progress=False)
    assert url in str(err.value)
    assert_empty(tmp_path)


def test_connection_refused(tmp_path: Path) -> None:
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), http.server.BaseHTTPRequestHandler)
    port = srv.server_address[1]
    srv.server_close()  # nothing listens on this port any more
    with pytest.raises(DownloadError, match=f"127.0.0.1:{port}"):
        fetch("kvasir-seg", cache=tmp_path, url=f"http://127.0.0.1:{port}/k.zip", checksum="none", progress=False)
    assert_empty(tmp_path)


@pytest.mark.parametrize("name", ["kvasir-seg", "hippocampus", "pneumoniamnist"])
def test_corrupt_archive_with_matching_checksum(server: Server, tmp_path: Path, name: str) -> None:
    garbage = b"PK\x03\x04 this is not really an archive" * 50
    url = server.add(f"/{name}.bin", garbage)
    with pytest.raises(DownloadError) as err:
        fetch(name, cache=tmp_path, url=url, checksum=sha256(garbage), progress=False)
    assert url in str(err.value)
    assert_empty(tmp_path)


def test_wrong_contents(server: Server, tmp_path: Path) -> None:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("Something/else.txt", b"not a dataset")
    url = server.add("/other.zip", buf.getvalue())
    with pytest.raises(DownloadError, match="does not contain the kvasir-seg dataset"):
        fetch("kvasir-seg", cache=tmp_path, url=url, checksum=sha256(buf.getvalue()), progress=False)
    assert_empty(tmp_path)


@needs_shared
def test_unpaired_mask_rejected(server: Server, tmp_path: Path) -> None:
    body = kvasir_zip(extra={"Kvasir-SEG/masks/orphan.jpg": b"\xff\xd8"})
    url = server.add("/kvasir-seg.zip", body)
    with pytest.raises(DownloadError, match="orphan.jpg"):
        fetch("kvasir-seg", cache=tmp_path, url=url, checksum=sha256(body), progress=False)
    assert_empty(tmp_path)


@needs_shared
def test_failed_force_fetch_keeps_good_cache(server: Server, tmp_path: Path) -> None:
    body = kvasir_zip(n=2)
    good = fetch("kvasir-seg", cache=tmp_path, url=server.add("/k.zip", body), checksum=sha256(body), progress=False)
    before = sorted(p.name for p in (good / "images").iterdir())
    with pytest.raises(DownloadError):
        bad = server.add("/bad.zip", b"junk")
        fetch("kvasir-seg", cache=tmp_path, url=bad, checksum="none", force=True, progress=False)
    assert sorted(p.name for p in (good / "images").iterdir()) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["kvasir-seg"]
    # and a successful force=True fetch does replace it
    bigger = kvasir_zip(n=3)
    url = server.add("/k3.zip", bigger)
    fetch("kvasir-seg", cache=tmp_path, url=url, checksum=sha256(bigger), force=True, progress=False)
    assert len(list((good / "images").iterdir())) == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["kvasir-seg"]


@needs_shared
def test_registry_source_checks_checksum_and_official_count(
    server: Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without url/checksum the registry's are used, and the official sample count is enforced."""
    body = kvasir_zip()
    info = dataclasses.replace(DATASETS["kvasir-seg"], url=server.add("/official.zip", body), checksum=sha256(body))
    monkeypatch.setitem(DATASETS, "kvasir-seg", info)
    monkeypatch.setenv("MEDSLIM_CACHE", str(tmp_path))
    with pytest.raises(DownloadError, match="holds 5 kvasir-seg samples, expected 1000"):
        fetch("kvasir-seg", progress=False)
    assert_empty(tmp_path)
    monkeypatch.setitem(DATASETS, "kvasir-seg", dataclasses.replace(info, expected_count=5))
    assert fetch("kvasir-seg", progress=False) == tmp_path / "kvasir-seg"


# --- hostile archives ----------------------------------------------------------------------


@needs_shared
@pytest.mark.parametrize("member", ["../evil.txt", "Kvasir-SEG/../../evil.txt", "/tmp/medslim-evil.txt"])
def test_zip_path_traversal_rejected(server: Server, tmp_path: Path, member: str) -> None:
    body = kvasir_zip(n=1, extra={member: b"owned"})
    cache = tmp_path / "cache"
    with pytest.raises(DownloadError, match="unsafe member"):
        fetch("kvasir-seg", cache=cache, url=server.add("/k.zip", body), checksum=sha256(body), progress=False)
    assert not (tmp_path / "evil.txt").exists() and not (cache / "evil.txt").exists()
    assert_empty(cache)


@pytest.mark.parametrize("kind", ["absolute", "dotdot", "symlink"])
def test_tar_hostile_members_rejected(server: Server, tmp_path: Path, kind: str) -> None:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        add_tar_member(tf, "Task04_Hippocampus/dataset.json", b'{"training": []}')
        if kind == "symlink":
            link = tarfile.TarInfo("Task04_Hippocampus/imagesTr")
            link.type, link.linkname = tarfile.SYMTYPE, "/etc"
            tf.addfile(link)
        else:
            add_tar_member(tf, "/tmp/medslim-evil" if kind == "absolute" else "../../evil", b"owned")
    body = buf.getvalue()
    cache = tmp_path / "cache"
    with pytest.raises(DownloadError, match="refusing"):
        fetch("hippocampus", cache=cache, url=server.add("/t.tar", body), checksum=md5(body), progress=False)
    assert not (tmp_path / "evil").exists()
    assert_empty(cache)


# --- options ----------------------------------------------------------------------------


def test_parse_checksum() -> None:
    assert parse_checksum("MD5:" + "A" * 32) == ("md5", "a" * 32)
    assert parse_checksum("b" * 64) == ("sha256", "b" * 64)
    assert parse_checksum("none")[1] is None
    for bad in ("md5:123", "sha1:" + "a" * 40, "sha256:" + "z" * 64):
        with pytest.raises(ConfigError, match="--checksum"):
            parse_checksum(bad)


def test_unknown_dataset(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="unknown dataset 'mnist'; choose one of: .*kvasir-seg"):
        fetch("mnist", cache=tmp_path, progress=False)
    assert_empty(tmp_path)


@pytest.mark.parametrize("url", ["notaurl", "http://", "ftp:/x.zip", "http://[::1/k.zip", ""])
def test_invalid_url_is_a_config_error(tmp_path: Path, url: str) -> None:
    """urlopen's bare ValueError ("unknown url type") must not reach the user; nothing is created."""
    cache = tmp_path / "cache"
    with pytest.raises(ConfigError, match=f"--url {re.escape(repr(url))} is not a valid URL"):
        fetch("kvasir-seg", cache=cache, url=url, checksum="none", progress=False)
    assert not cache.exists()


def test_invalid_url_is_refused_even_when_cached(tmp_path: Path) -> None:
    cached = tmp_path / "kvasir-seg"
    for sub in ("images", "masks"):
        (cached / sub).mkdir(parents=True)
    with pytest.raises(ConfigError, match="--url 'notaurl'"):
        fetch("kvasir-seg", cache=tmp_path, url="notaurl", checksum="none", progress=False)
