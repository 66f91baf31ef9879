"""fetch(): mirrors, resuming, checksums, offline errors, against a local server."""

import hashlib
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from tprop_exp import UserError
from tprop_exp.data.download import fetch, verify

PAYLOAD = bytes(range(256)) * 400  # 102,400 bytes
MD5 = hashlib.md5(PAYLOAD).hexdigest()
SHA256 = hashlib.sha256(PAYLOAD).hexdigest()


class Handler(BaseHTTPRequestHandler):
    """Serves PAYLOAD at /file (honouring `Range: bytes=N-`), and /norange
    (which ignores Range).  Every request's headers are logged on the server."""

    def do_GET(self):
        self.server.seen.append((self.path, dict(self.headers)))
        if self.path == "/slow":
            time.sleep(0.3)
        if self.path not in ("/file", "/norange", "/slow"):
            self.send_error(404)
            return
        body, status = PAYLOAD, 200
        rng = self.headers.get("Range")
        if rng and self.path == "/file":
            start = int(rng.removeprefix("bytes=").rstrip("-"))
            if start >= len(PAYLOAD):
                self.send_error(416)
                return
            body, status = PAYLOAD[start:], 206
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def server():
    srv = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    srv.seen = []
    thread = threading.Thread(target=srv.serve_forever, args=(0.02,), daemon=True)
    thread.start()
    yield srv, f"http://127.0.0.1:{srv.server_address[1]}"
    srv.shutdown()
    srv.server_close()


def dead_url():
    """A loopback port with nothing listening: connection refused."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/file"


def test_first_mirror_dead_second_used(server, tmp_path):
    srv, base = server
    dest = tmp_path / "sub" / "data.zip"
    out = fetch([dead_url(), base + "/missing", base + "/file"], dest, md5=MD5, size=len(PAYLOAD))
    assert out == dest and dest.read_bytes() == PAYLOAD
    assert not dest.with_suffix(".zip.part").exists()
    assert [p for p, _ in srv.seen] == ["/missing", "/file"]
    assert not srv.seen[-1][1]["User-Agent"].startswith("Python-urllib")


def test_partial_file_is_resumed(server, tmp_path):
    srv, base = server
    dest = tmp_path / "data.zip"
    dest.with_suffix(".zip.part").write_bytes(PAYLOAD[:30_000])
    fetch([base + "/file"], dest, sha256=SHA256)
    assert dest.read_bytes() == PAYLOAD
    assert srv.seen[0][1]["Range"] == "bytes=30000-"


def test_server_ignoring_range_restarts_cleanly(server, tmp_path):
    srv, base = server
    dest = tmp_path / "data.zip"
    dest.with_suffix(".zip.part").write_bytes(PAYLOAD[:30_000])
    fetch([base + "/norange"], dest, md5=MD5)
    assert dest.read_bytes() == PAYLOAD


def test_complete_part_file_is_checked_not_downloaded(server, tmp_path):
    srv, base = server
    dest = tmp_path / "data.zip"
    dest.with_suffix(".zip.part").write_bytes(PAYLOAD)
    fetch([base + "/file"], dest, md5=MD5, size=len(PAYLOAD))
    assert dest.read_bytes() == PAYLOAD and srv.seen == []


def test_checksum_mismatch_deletes_partial(server, tmp_path):
    _, base = server
    dest = tmp_path / "data.zip"
    with pytest.raises(UserError, match="md5") as err:
        fetch([base + "/file"], dest, md5="0" * 32)
    assert "deleted" in str(err.value)
    assert not dest.exists() and not dest.with_suffix(".zip.part").exists()


def test_all_mirrors_down_names_destination(tmp_path):
    dest = tmp_path / "raw" / "wikitext-103-v1.zip"
    urls = [dead_url(), dead_url()]
    with pytest.raises(UserError) as err:
        fetch(urls, dest, md5=MD5)
    msg = str(err.value)
    assert str(dest) in msg and urls[0] in msg and "\n" not in msg
    assert not dest.exists()


def test_existing_file_is_verified(server, tmp_path):
    srv, base = server
    dest = tmp_path / "data.zip"
    dest.write_bytes(PAYLOAD)
    assert fetch([base + "/file"], dest, md5=MD5) == dest and srv.seen == []
    assert verify(dest, md5=MD5, sha256=SHA256, size=len(PAYLOAD))
    assert not verify(dest, sha256="1" * 64)
    assert not verify(dest, size=5)
    assert not verify(tmp_path / "absent", md5=MD5)
    dest.write_bytes(PAYLOAD[:-1])
    with pytest.raises(UserError, match="delete it"):
        fetch([base + "/file"], dest, md5=MD5)


def test_parallel_fetches_download_once(server, tmp_path):
    # Runs of a sweep start together: one downloads, the others wait for it.
    srv, base = server
    dest = tmp_path / "data.zip"
    results = []
    threads = [threading.Thread(target=lambda: results.append(
        fetch([base + "/slow"], dest, md5=MD5))) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [dest] * 3 and dest.read_bytes() == PAYLOAD
    assert len(srv.seen) == 1


def test_no_mirror_configured(tmp_path):
    with pytest.raises(UserError, match="put it at"):
        fetch([], tmp_path / "x.zip")


def test_no_lock_possible_goes_on_unlocked(server, tmp_path):
    # A folder where no lock file can be made (here: a directory in its place,
    # as a read-only folder would refuse it) must not stop or stall the download.
    _, base = server
    dest = tmp_path / "data.zip"
    dest.with_suffix(".zip.lock").mkdir()
    assert fetch([base + "/file"], dest, md5=MD5) == dest and dest.read_bytes() == PAYLOAD


def test_lock_is_exclusive_across_processes(tmp_path):
    # The lock must hold against another process (a parallel run of a sweep), not only threads.
    import subprocess
    import sys
    from tprop_exp.data.download import file_lock
    path = tmp_path / "x.lock"
    probe = ("import sys, filelock; l = filelock.FileLock(sys.argv[1]);\n"
             "try:\n l.acquire(timeout=0.2); print('free')\n"
             "except filelock.Timeout:\n print('held')")
    with file_lock(path):
        held = subprocess.run([sys.executable, "-c", probe, str(path)], capture_output=True, text=True)
    free = subprocess.run([sys.executable, "-c", probe, str(path)], capture_output=True, text=True)
    assert (held.stdout.strip(), free.stdout.strip()) == ("held", "free"), held.stderr + free.stderr
