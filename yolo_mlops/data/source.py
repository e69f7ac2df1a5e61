"""Locate the detection source: a URL downloaded once into the project cache, a local zip, a folder or a data.yaml."""

import hashlib
import logging
import urllib.error
import urllib.request
import zipfile
from pathlib import Path
from urllib.parse import urlparse

from yolo_mlops.core.atomic import atomic_file
from yolo_mlops.core.errors import PipelineError
from yolo_mlops.core.paths import DOWNLOAD_CACHE_DIR, project_root, shared
from yolo_mlops.data.layout import YAML_SUFFIXES

log = logging.getLogger(__name__)
DOWNLOAD_TIMEOUT_S = 15
OFFLINE_HINT = (
    "Offline? Point prepare.source at a local copy (a zip, an extracted folder or a data.yaml): "
    "`make run COCO128=/path/to/coco128.zip` or `dvc exp run -S prepare.source=/path/to/coco128.zip`."
)


def is_url(source: str) -> bool:
    return urlparse(source).scheme in ("http", "https")


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def check_zip(path: Path, label: str) -> None:
    """Refuse a zip that cannot be opened or has a corrupt member, naming `label`."""
    try:
        with zipfile.ZipFile(path) as archive:
            broken = archive.testzip()
    except (zipfile.BadZipFile, OSError, EOFError) as error:
        raise PipelineError(f"prepare.source: {label} is not a readable zip file ({error})") from None
    if broken is not None:
        raise PipelineError(f"prepare.source: {label} is truncated or corrupt (bad member {broken})")


def _cached_copy_is_intact(archive: Path, checksum: Path) -> bool:
    return archive.is_file() and checksum.is_file() and checksum.read_text().strip() == sha256_of(archive)


def _download(url: str, target: Path) -> None:
    log.info("Downloading %s ...", url)
    try:
        with urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT_S) as response, atomic_file(target) as staging:
            total = int(response.headers.get("Content-Length") or 0)
            done, reported = 0, -1
            with open(staging, "wb") as stream:
                for block in iter(lambda: response.read(1 << 20), b""):
                    stream.write(block)
                    done += len(block)
                    percent = 100 * done // total if total else -1
                    if total and percent // 10 > reported:
                        reported = percent // 10
                        log.info("  %.1f / %.1f MB (%d%%)", done / 1e6, total / 1e6, percent)
            if total and done != total:
                raise PipelineError(f"prepare.source: {url} stopped at {done}/{total} bytes. {OFFLINE_HINT}")
            check_zip(staging, f"the download of {url}")
    except (urllib.error.URLError, TimeoutError, OSError) as error:
        reason = getattr(error, "reason", error)
        raise PipelineError(f"prepare.source: cannot download {url} ({reason}). {OFFLINE_HINT}") from None


def resolve_source(source: str) -> Path:
    """Return the local zip, folder or data.yaml of `prepare.source`.

    URLs are fetched once into `data/cache/` with a sha256 sidecar; the cached copy is
    reused, never fetched again, while it still matches its checksum. Relative paths are
    resolved against the project root (not DVC's temporary experiment copy)."""
    if is_url(source):
        name = Path(urlparse(source).path).name or "source.zip"
        archive, checksum = shared(DOWNLOAD_CACHE_DIR) / name, shared(DOWNLOAD_CACHE_DIR) / f"{name}.sha256"
        if not _cached_copy_is_intact(archive, checksum):
            _download(source, archive)
            with atomic_file(checksum) as staging:
                staging.write_text(sha256_of(archive) + "\n")
        return archive
    path = Path(source).expanduser()
    if not path.is_absolute():
        path = project_root() / path
    if not path.exists():
        raise PipelineError(f"prepare.source: {path} does not exist. Give a dataset zip, folder, data.yaml or a URL.")
    if path.is_file() and path.suffix.lower() not in YAML_SUFFIXES:
        check_zip(path, str(path))
    return path
