"""Remote media fetching refuses the server's own network (SSRF): loopback, private, link-local
and metadata addresses, after DNS and on every redirect; with size, time and redirect limits."""

from __future__ import annotations

import http.server
import ipaddress
import socket
import threading
import time

import pytest

from mmcore.multimodal import url_fetch
from mmcore.multimodal.url_fetch import checked_address, fetch_url

PAYLOAD = b"\x89PNG fake image bytes" * 10


@pytest.fixture(scope="module")
def local_host():
    """An HTTP server on 127.0.0.1: a file, redirects, a loop, a huge chunked body, a slow one."""

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self):  # noqa: N802 (http.server's name)
            port = self.server.server_address[1]
            if self.path == "/img":
                self._send(200, PAYLOAD)
            elif self.path.startswith("/to/"):
                target = self.path.removeprefix("/to/")
                self.send_response(302)
                self.send_header("Location", target.replace("PORT", str(port)))
                self.send_header("Content-Length", "0")
                self.end_headers()
            elif self.path == "/loop":
                self.send_response(302)
                self.send_header("Location", "/loop")
                self.send_header("Content-Length", "0")
                self.end_headers()
            elif self.path == "/chunked":
                self.send_response(200)
                self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()
                for _ in range(20):
                    self.wfile.write(b"400\r\n" + b"x" * 1024 + b"\r\n")
                self.wfile.write(b"0\r\n\r\n")
            elif self.path == "/slow":
                self.send_response(200)
                self.send_header("Content-Length", "100")
                self.end_headers()
                for _ in range(100):
                    self.wfile.write(b"x")
                    self.wfile.flush()
                    time.sleep(0.05)
            else:
                self._send(404, b"")

        def _send(self, status, body):
            self.send_response(status)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture
def first_hop_public(monkeypatch):
    """Treat 127.0.0.1 (only) as a public address, so the local server stands in for a public
    host whose redirects the policy must still check."""
    real = url_fetch._address_problem
    monkeypatch.setattr(
        url_fetch,
        "_address_problem",
        lambda ip: None if ip == ipaddress.ip_address("127.0.0.1") else real(ip),
    )


@pytest.mark.parametrize(
    "url, what",
    [
        ("http://127.0.0.1/x.png", "loopback"),
        ("http://localhost/x.png", "loopback"),
        ("http://[::1]/x.png", "loopback"),
        ("http://[::ffff:127.0.0.1]/x.png", "loopback"),
        ("http://10.1.2.3/x.png", "private"),
        ("http://192.168.0.10/x.png", "private"),
        ("http://172.16.5.4/x.png", "private"),
        ("http://[fd00::1]/x.png", "private"),
        ("http://169.254.169.254/latest/meta-data/", "link-local"),
        ("http://[fe80::1]/x.png", "link-local"),
        ("http://100.100.100.200/x.png", "non-public"),
        ("http://0.0.0.0/x.png", "unspecified"),
        ("http://224.0.0.1/x.png", "multicast"),
    ],
)
def test_non_public_addresses_are_refused_by_default(url, what):
    with pytest.raises(ValueError, match=f"is not allowed: it resolves to .*{what}"):
        fetch_url(url, timeout_s=1.0)


def test_the_check_runs_after_dns_resolution(monkeypatch):
    def fake_getaddrinfo(host, port, *args, **kwargs):
        address = {"internal.example": "10.9.8.7", "cdn.example": "93.184.216.34"}[host]
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (address, port))]

    monkeypatch.setattr(socket, "getaddrinfo", fake_getaddrinfo)
    with pytest.raises(ValueError, match="'internal.example' is not allowed: it resolves to 10.9"):
        checked_address("https://internal.example/a.png", ())
    assert checked_address("https://cdn.example/a.png", ()) == ("cdn.example", "93.184.216.34")
    # Listing a host narrows fetching to the list, and trusts that host's private address.
    assert checked_address("https://internal.example/a.png", ["internal.example"])[1] == "10.9.8.7"
    with pytest.raises(ValueError, match="host 'cdn.example' is not allowed.*allowed domains"):
        checked_address("https://cdn.example/a.png", ["internal.example"])


def test_a_listed_host_is_fetched(local_host):
    assert fetch_url(f"{local_host}/img", ["127.0.0.1"], timeout_s=5.0) == PAYLOAD
    redirected = fetch_url(f"{local_host}/to//img", ["127.0.0.1"], timeout_s=5.0)
    assert redirected == PAYLOAD


@pytest.mark.parametrize(
    "target, what",
    [
        ("http://127.0.0.2:PORT/img", "loopback"),
        ("http://[::1]:PORT/img", "loopback"),
        ("http://169.254.169.254/latest/meta-data/", "link-local"),
        ("http://10.0.0.1/img", "private"),
    ],
)
def test_every_redirect_is_checked(local_host, first_hop_public, target, what):
    assert fetch_url(f"{local_host}/img", timeout_s=5.0) == PAYLOAD  # the first hop is allowed
    with pytest.raises(ValueError, match=f"is not allowed: it resolves to .*{what}"):
        fetch_url(f"{local_host}/to/{target}", timeout_s=5.0)


def test_size_time_and_redirect_limits(local_host):
    trusted = ["127.0.0.1"]
    with pytest.raises(ValueError, match="declares 210 bytes, more than the limit of 100"):
        fetch_url(f"{local_host}/img", trusted, max_bytes=100)
    with pytest.raises(ValueError, match="returned more than the limit of 4096 bytes"):
        fetch_url(f"{local_host}/chunked", trusted, max_bytes=4096)
    with pytest.raises(ValueError, match="more than 3 redirects"):
        fetch_url(f"{local_host}/loop", trusted, max_redirects=3)
    start = time.monotonic()
    with pytest.raises(ValueError, match="time limit|timed out"):
        fetch_url(f"{local_host}/slow", trusted, timeout_s=0.5)
    assert time.monotonic() - start < 3.0
    with pytest.raises(ValueError, match="HTTP 404"):
        fetch_url(f"{local_host}/missing", trusted)
    with pytest.raises(ValueError, match="scheme 'ftp' is not allowed"):
        fetch_url("ftp://127.0.0.1/x", trusted)


@pytest.fixture(scope="module")
def png_host():
    """127.0.0.1 serving one PNG."""
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (40, 30), (200, 10, 10)).save(buf, format="PNG")
    png = buf.getvalue()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 (http.server's name)
            self.send_response(200)
            self.send_header("Content-Length", str(len(png)))
            self.end_headers()
            self.wfile.write(png)

        def log_message(self, *args):
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/x.png"
    httpd.shutdown()
    httpd.server_close()


def test_the_offline_engine_has_the_same_policy(tiny_llava_dir, png_host):
    from mmcore import Engine

    prompt = {"prompt": "USER: <image>\nWhat?\nASSISTANT:", "multi_modal_data": {"image": png_host}}
    with pytest.raises(ValueError, match="resolves to 127.0.0.1, a loopback address"):
        Engine(tiny_llava_dir).inputs.process(prompt)
    trusting = Engine(tiny_llava_dir, allowed_media_domains=["127.0.0.1"])
    assert len(trusting.inputs.process(prompt).items) == 1
    elsewhere = {**prompt, "multi_modal_data": {"image": "https://images.example/x.png"}}
    with pytest.raises(ValueError, match="host 'images.example' is not allowed"):
        trusting.inputs.process(elsewhere)
