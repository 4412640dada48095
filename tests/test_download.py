"""mrtdetr_lib.download against a local HTTP server (127.0.0.1) and file:// URLs; no internet."""

import hashlib
import http.server
import threading
from pathlib import Path

import pytest

from mrtdetr_lib.download import download

PAYLOAD = bytes(range(256)) * 4000  # ~1 MB


class _Handler(http.server.BaseHTTPRequestHandler):
    """Serves PAYLOAD at /data.bin with Range support; /drop.bin cuts the first response short,
    /norange.bin ignores Range, anything else is 404."""

    drops = 0

    def log_message(self, *args):
        pass

    def do_GET(self):
        if self.path not in ("/data.bin", "/drop.bin", "/norange.bin"):
            self.send_error(404, "Not Found")
            return
        start = 0
        header = self.headers.get("Range")
        if header and self.path != "/norange.bin":
            start = int(header.split("=")[1].split("-")[0])
        body = PAYLOAD[start:]
        self.send_response(206 if start else 200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.path == "/drop.bin" and _Handler.drops == 0:
            _Handler.drops += 1
            self.wfile.write(body[:300_000])  # then the connection closes early
            self.wfile.flush()
            self.close_connection = True
            return
        self.wfile.write(body)


@pytest.fixture(scope="module")
def server():
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


def test_download_and_verify(server, tmp_path):
    md5 = hashlib.md5(PAYLOAD).hexdigest()
    path = download(f"{server}/data.bin", tmp_path / "a.bin", md5=md5, size=len(PAYLOAD),
                    progress=False)
    assert path.read_bytes() == PAYLOAD and not (tmp_path / "a.bin.part").exists()
    assert download(f"{server}/missing", path, progress=False) == path  # cached: no request


def test_interrupted_download_resumes(server, tmp_path):
    dest = tmp_path / "b.bin"
    with pytest.raises(IOError, match="run again to resume"):
        download(f"{server}/drop.bin", dest, progress=False)
    part = tmp_path / "b.bin.part"
    assert not dest.exists() and 0 < part.stat().st_size < len(PAYLOAD)
    sha = hashlib.sha256(PAYLOAD).hexdigest()
    assert download(f"{server}/drop.bin", dest, sha256=sha, progress=False).read_bytes() == PAYLOAD


def test_server_without_range_starts_over(server, tmp_path):
    (tmp_path / "c.bin.part").write_bytes(b"junk" * 10)
    assert download(f"{server}/norange.bin", tmp_path / "c.bin",
                    progress=False).read_bytes() == PAYLOAD


def test_checksum_mismatch_removes_the_file(server, tmp_path):
    with pytest.raises(IOError, match="md5 mismatch.*expected 0000"):
        download(f"{server}/data.bin", tmp_path / "d.bin", md5="0000", progress=False)
    assert not (tmp_path / "d.bin").exists() and not (tmp_path / "d.bin.part").exists()


def test_errors_name_the_url(server, tmp_path):
    with pytest.raises(IOError, match="missing.bin: HTTP 404"):
        download(f"{server}/missing.bin", tmp_path / "e.bin", progress=False)
    with pytest.raises(IOError, match="cannot download http://127.0.0.1:9/x"):
        download("http://127.0.0.1:9/x", tmp_path / "f.bin", progress=False)
    with pytest.raises(IOError, match="no such file"):
        download((tmp_path / "nope").as_uri(), tmp_path / "g.bin", progress=False)


def test_file_url(tmp_path):
    source = tmp_path / "src.bin"
    source.write_bytes(PAYLOAD)
    assert download(source.as_uri(), Path(tmp_path / "h.bin")).read_bytes() == PAYLOAD
