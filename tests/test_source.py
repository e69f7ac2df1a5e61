"""Where COCO128 comes from: local zip or folder, or a URL downloaded once into the cache."""

import http.server
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import free_port, make_source, person_labels
from yolo_mlops.core.errors import PipelineError
from yolo_mlops.data.source import resolve_source


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.delenv("DVC_ROOT", raising=False)
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture
def zip_server(tmp_path: Path) -> Iterator[tuple[str, list[str]]]:
    """A loopback HTTP server for a synthetic coco128.zip; yields (url, requested paths)."""
    (tmp_path / "served").mkdir()
    make_source(tmp_path / "served", person_labels(4))
    requests: list[str] = []

    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args, **kwargs) -> None:
            super().__init__(*args, directory=str(tmp_path / "served"), **kwargs)

        def do_GET(self) -> None:
            requests.append(self.path)
            super().do_GET()

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/coco128.zip", requests
    server.shutdown()


def test_relative_paths_resolve_against_the_project_root_even_inside_dvc_copies(
        project: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    (project / "inputs").mkdir()
    zipped = make_source(project / "inputs", person_labels(3))
    assert resolve_source("inputs/coco128.zip") == zipped
    elsewhere = tmp_path / "dvc-temp-copy"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    monkeypatch.setenv("DVC_ROOT", str(project))
    assert resolve_source("inputs/coco128.zip") == zipped


def test_missing_path_and_unreadable_zips_are_refused(project: Path) -> None:
    with pytest.raises(PipelineError, match="prepare.source: .*missing.zip does not exist"):
        resolve_source("missing.zip")
    (project / "not-a-zip.zip").write_text("hello")
    with pytest.raises(PipelineError, match="not-a-zip.zip is not a readable zip"):
        resolve_source("not-a-zip.zip")
    zipped = make_source(project, person_labels(3))
    (project / "truncated.zip").write_bytes(zipped.read_bytes()[: zipped.stat().st_size // 2])
    with pytest.raises(PipelineError, match="truncated.zip is (not a readable zip|truncated or corrupt)"):
        resolve_source("truncated.zip")


def test_unreachable_url_fails_with_an_offline_hint(project: Path) -> None:
    with pytest.raises(PipelineError, match="cannot download .*Point prepare.source at a local copy"):
        resolve_source(f"http://127.0.0.1:{free_port()}/coco128.zip")
    assert not list((project / "data" / "cache").glob("*"))  # nothing half-downloaded left


def test_download_is_cached_verified_and_not_repeated(project: Path, zip_server: tuple[str, list[str]]) -> None:
    url, requests = zip_server
    first = resolve_source(url)
    assert first == project / "data" / "cache" / "coco128.zip"
    assert resolve_source(url) == first
    assert len(requests) == 1  # the intact cached copy is reused
    first.write_bytes(first.read_bytes()[:100])  # damaged: fetched again
    assert resolve_source(url) == first and len(requests) == 2
    assert (project / "data" / "cache" / "coco128.zip.sha256").is_file()
