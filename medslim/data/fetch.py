"""Download a public dataset into the cache, checked and laid out for the readers.

A download can fail half-way, a mirror can serve the wrong file, and an
archive can be corrupt or hostile. So everything happens in one hidden work
folder inside the cache: the file is streamed there, its checksum verified,
the archive extracted there (refusing members that escape the folder), the
layout normalised to the one in ``shared/data/<name>`` and checked, and only
then moved to ``cache/<name>`` with ``os.replace``. On any failure the work
folder is removed and an existing ``cache/<name>`` is left as it was.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import shutil
import sys
import tarfile
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
import zipfile
import zlib
from pathlib import Path, PurePosixPath
from typing import IO

from medslim._io import replace_dir
from medslim.data.locate import DatasetInfo, cache_dir, dataset_info, has_markers
from medslim.errors import ConfigError, DownloadError

CHUNK = 1 << 20
TIMEOUT_S = 60
NPZ_MEMBERS = {f"{split}_{part}.npy" for split in ("train", "val", "test") for part in ("images", "labels")}
_ARCHIVE_ERRORS = (zipfile.BadZipFile, tarfile.TarError, zlib.error, EOFError, OSError, ValueError)


def fetch(
    name: str,
    cache: str | os.PathLike | None = None,
    url: str | None = None,
    checksum: str | None = None,
    force: bool = False,
    progress: bool = True,
) -> Path:
    """Download dataset ``name`` into ``cache/<name>`` (default :func:`cache_dir`) and return that folder.

    ``url`` and ``checksum`` (``"md5:..."``, ``"sha256:..."`` or ``"none"``)
    replace the registry's, for mirrors; a malformed one raises
    :class:`ConfigError`. A dataset already in the cache is returned without a
    download unless ``force``. Any failure raises :class:`DownloadError` naming
    the URL and leaves no partial files.
    """
    info = dataset_info(name)
    # options are checked even when the cache makes them unused: a typo should not pass silently
    source = _check_url(url) if url is not None else info.url
    algorithm, expected = parse_checksum(checksum if checksum is not None else info.checksum)
    root = Path(cache).expanduser() if cache is not None else cache_dir()
    dest = root / name
    if not force and dest.is_dir() and has_markers(dest, info):
        return dest
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise DownloadError(f"cannot create the cache folder {root} for {source}: {err}") from None
    with tempfile.TemporaryDirectory(
        prefix=f".{name}.", suffix=".partial", dir=root, ignore_cleanup_errors=True
    ) as work:
        work_dir = Path(work)
        archive = work_dir / "download"
        actual = _download(source, archive, algorithm, progress, name)
        if expected is not None and actual != expected:
            raise DownloadError(
                f"checksum mismatch for {source}: expected {algorithm}:{expected}, got {algorithm}:{actual}"
            )
        staged = _unpack(info, archive, work_dir, source)
        _check_layout(info, staged, source, official=url is None)
        replace_dir(staged, dest)
    return dest


def parse_checksum(text: str | None) -> tuple[str, str | None]:
    """Split ``"md5:HEX"``/``"sha256:HEX"`` (or bare hex, by length); ``"none"`` means do not verify."""
    if text is None or text.strip().lower() == "none":
        return "sha256", None
    algorithm, sep, digest = text.strip().lower().partition(":")
    if not sep:
        algorithm, digest = {32: "md5", 64: "sha256"}.get(len(text.strip()), "?"), text.strip().lower()
    lengths = {"md5": 32, "sha256": 64}
    is_hex = all(c in "0123456789abcdef" for c in digest)
    if algorithm not in lengths or len(digest) != lengths[algorithm] or not is_hex:
        raise ConfigError(f"--checksum {text!r}: expected 'md5:<32 hex digits>', 'sha256:<64 hex digits>' or 'none'")
    return algorithm, digest


def _check_url(url: str) -> str:
    """Refuse a URL that urlopen cannot fetch, before the cache folder is created.

    urlopen raises a bare ValueError ("unknown url type") for these, which
    would reach the user as a traceback.
    """
    try:
        parts = urllib.parse.urlsplit(url)
    except ValueError as err:  # e.g. an unclosed "[" in an IPv6 host
        raise ConfigError(f"--url {url!r} is not a valid URL: {err}") from None
    remote = parts.scheme in ("http", "https", "ftp") and parts.netloc
    local = parts.scheme == "file" and parts.path
    if not (remote or local):
        raise ConfigError(f"--url {url!r} is not a valid URL: expected http://, https://, ftp:// "
                          f"or file:// followed by a host or a path")
    return url


# --- download ---------------------------------------------------------------


def _download(url: str, target: Path, algorithm: str, progress: bool, label: str) -> str:
    """Stream ``url`` to ``target`` and return its hex digest; a short or broken transfer is an error."""
    digest = hashlib.new(algorithm)
    done = 0
    total: int | None = None
    bar: _Progress | None = None
    try:
        with urllib.request.urlopen(url, timeout=TIMEOUT_S) as response, open(target, "wb") as out:
            length = response.headers.get("Content-Length")
            total = int(length) if length and length.isdigit() else None
            bar = _Progress(label, url, total, progress)
            for chunk in iter(lambda: response.read(CHUNK), b""):
                out.write(chunk)
                digest.update(chunk)
                done += len(chunk)
                bar.update(done)
    except urllib.error.HTTPError as err:
        raise DownloadError(f"download of {url} failed: HTTP {err.code} {err.reason}") from None
    except urllib.error.URLError as err:
        raise DownloadError(f"download of {url} failed: {err.reason}") from None
    except (http.client.HTTPException, OSError, ValueError) as err:  # ValueError: a URL _check_url let by
        raise DownloadError(f"download of {url} failed: {type(err).__name__}: {err}") from None
    finally:
        if bar is not None:
            bar.close(done)
    if total is not None and done != total:
        raise DownloadError(f"download of {url} was cut short: got {done} of {total} bytes")
    return digest.hexdigest()


class _Progress:
    """Download progress on stderr: a self-overwriting line on a terminal, start and end lines in a log."""

    def __init__(self, label: str, url: str, total: int | None, enabled: bool) -> None:
        self.label, self.total, self.enabled = label, total, enabled
        self.live = enabled and sys.stderr.isatty()
        self.shown = 0.0
        if enabled and not self.live:
            self._write(f"downloading {label} from {url}\n")

    def _text(self, done: int) -> str:
        if self.total:
            return f"{done / 1e6:.1f}/{self.total / 1e6:.1f} MB ({100 * done // self.total}%)"
        return f"{done / 1e6:.1f} MB"

    def _write(self, text: str) -> None:
        sys.stderr.write(text)
        sys.stderr.flush()

    def update(self, done: int) -> None:
        now = time.monotonic()
        if self.live and now - self.shown >= 0.25:  # a few updates a second are enough
            self.shown = now
            self._write(f"\rdownloading {self.label}: {self._text(done)}")

    def close(self, done: int) -> None:
        if self.enabled:
            prefix = "\r" if self.live else ""
            verb = "downloaded" if self.total in (None, done) else "download stopped for"
            self._write(f"{prefix}{verb} {self.label}: {self._text(done)}\n")


# --- extraction ---------------------------------------------------------------


def _unpack(info: DatasetInfo, archive: Path, work: Path, url: str) -> Path:
    """Extract ``archive`` and return the folder, inside ``work``, laid out as ``shared/data/<name>``."""
    staged = work / info.name
    if info.kind == "file":
        _check_npz(archive, url)
        staged.mkdir()
        os.replace(archive, staged / info.markers[0])
        return staged
    extracted = work / "extracted"
    extracted.mkdir()
    try:
        if info.kind == "zip":
            _extract_zip(archive, extracted, url)
        else:
            _extract_tar(archive, extracted, url)
    except DownloadError:
        raise
    except _ARCHIVE_ERRORS as err:
        reason = (str(err).splitlines() or [type(err).__name__])[0].rstrip(":")
        raise DownloadError(f"archive from {url} is corrupt (not a readable {info.kind} archive): {reason}") from None
    archive.unlink()
    os.replace(_dataset_root(info, extracted, url), staged)
    return staged


def _skipped(parts: tuple[str, ...]) -> bool:
    """macOS resource forks (``._*``) and ``__MACOSX`` folders, common in MSD and zip archives."""
    return any(part.startswith("._") or part == "__MACOSX" for part in parts)


def _safe_member(name: str, url: str) -> tuple[str, ...]:
    """The member's path parts; absolute paths or ``..`` would write outside the folder."""
    path = PurePosixPath(name.replace("\\", "/"))
    if path.is_absolute() or ".." in path.parts or (path.parts and ":" in path.parts[0]):
        raise DownloadError(f"archive from {url} has an unsafe member path {name!r}; refusing to extract")
    return tuple(part for part in path.parts if part not in ("", "."))


def _write_member(source: IO[bytes], target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target, "wb") as out:
        shutil.copyfileobj(source, out, CHUNK)


def _extract_zip(archive: Path, dest: Path, url: str) -> None:
    with zipfile.ZipFile(archive) as zf:
        members = [(info, _safe_member(info.filename, url)) for info in zf.infolist()]
        for info, parts in members:
            if not parts or _skipped(parts):
                continue
            if info.is_dir():
                dest.joinpath(*parts).mkdir(parents=True, exist_ok=True)
                continue
            with zf.open(info) as source:
                _write_member(source, dest.joinpath(*parts))


def _extract_tar(archive: Path, dest: Path, url: str) -> None:
    with tarfile.open(archive, "r:*") as tf:
        members = [(member, _safe_member(member.name, url)) for member in tf.getmembers()]
        for member, parts in members:
            if not parts or _skipped(parts):
                continue
            if member.isdir():
                dest.joinpath(*parts).mkdir(parents=True, exist_ok=True)
            elif member.isfile():
                source = tf.extractfile(member)
                assert source is not None  # regular files always have data
                with source:
                    _write_member(source, dest.joinpath(*parts))
            else:  # links and devices could point outside the folder
                raise DownloadError(f"archive from {url} has a link or special member {member.name!r}; refusing")


def _dataset_root(info: DatasetInfo, extracted: Path, url: str) -> Path:
    """The folder holding the markers: the archive root or its top folder (e.g. ``Kvasir-SEG/``)."""
    candidates = [extracted] + sorted(p for p in extracted.iterdir() if p.is_dir() and not p.name.startswith("."))
    for candidate in candidates:
        if has_markers(candidate, info):
            return candidate
    raise DownloadError(
        f"archive from {url} does not contain the {info.name} dataset: "
        f"no folder with {' and '.join(info.markers)} at its top"
    )


# --- layout checks -------------------------------------------------------------


def _check_npz(path: Path, url: str) -> None:
    """A MedMNIST file is a zip of ``.npy`` arrays; checking the names needs no numpy."""
    try:
        with zipfile.ZipFile(path) as zf:
            names = set(zf.namelist())
            bad = zf.testzip()
    except _ARCHIVE_ERRORS as err:
        raise DownloadError(f"file from {url} is not a valid .npz: {err}") from None
    if bad is not None:
        raise DownloadError(f"file from {url} is corrupt: member {bad} fails its CRC check")
    if not NPZ_MEMBERS <= names:
        raise DownloadError(f"file from {url} is not a MedMNIST .npz: it lacks {sorted(NPZ_MEMBERS - names)}")


def _check_layout(info: DatasetInfo, folder: Path, url: str, official: bool) -> None:
    """Check the samples the readers will look for; counts only for the official archive."""
    if info.name == "kvasir-seg":
        count = _check_pairs(folder, url)
    elif info.name == "hippocampus":
        count = _check_decathlon(folder, url)
    else:
        return
    if official and info.expected_count is not None and count != info.expected_count:
        raise DownloadError(f"archive from {url} holds {count} {info.name} samples, expected {info.expected_count}")


def _check_pairs(folder: Path, url: str) -> int:
    """Every image needs the mask of the same name and the other way round."""
    images = {p.name for p in (folder / "images").iterdir() if p.is_file() and not p.name.startswith(".")}
    masks = {p.name for p in (folder / "masks").iterdir() if p.is_file() and not p.name.startswith(".")}
    if not images or images != masks:
        unpaired = sorted(images ^ masks)[:5]
        raise DownloadError(f"archive from {url} has no image/mask pairs or unpaired files: {unpaired}")
    return len(images)


def _check_decathlon(folder: Path, url: str) -> int:
    """``dataset.json`` must parse and every training image and label it lists must exist."""
    try:
        training = json.loads((folder / "dataset.json").read_text())["training"]
        files = [folder / entry[key] for entry in training for key in ("image", "label")]
    except (ValueError, KeyError, TypeError) as err:
        raise DownloadError(f"archive from {url} has an unreadable dataset.json: {err}") from None
    missing = [str(p.relative_to(folder)) for p in files if not p.is_file()]
    if not training or missing:
        raise DownloadError(f"archive from {url}: dataset.json lists missing files {missing[:5]} or no cases")
    return len(training)
