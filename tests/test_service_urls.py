"""What a client of the service can make it do with image URLs, and what its errors tell it.

Only public addresses are fetched (every address a name resolves to, after every redirect, the
connection pinned to the address that was checked), within one deadline, and every failure is the
same message; client errors carry no server paths. No Paddle, no service process: the fetcher
itself, against a loopback server that plays the public web."""
import http.server
import threading

import pytest

from engine.serving import images
from engine.serving.envelope import ServiceError, ServiceLimits

GENERIC = "could not fetch an image from that URL"


@pytest.mark.parametrize("host", ["127.0.0.1", "10.1.2.3", "192.168.0.7", "169.254.169.254", "::1", "fe80::1",
                                  "224.0.0.1", "0.0.0.0", "100.64.0.1", "::ffff:127.0.0.1"])
def test_non_public_addresses_are_refused(host):
    with pytest.raises(images._Refused, match="not a public address"):
        images._checked_address(host, 80, allow_private=False)


def test_public_addresses_pass_and_private_ones_only_when_allowed():
    assert images._checked_address("8.8.8.8", 80, allow_private=False) == "8.8.8.8"
    assert images._checked_address("127.0.0.1", 80, allow_private=True) == "127.0.0.1"
    with pytest.raises(images._Refused):
        images._checked_address("224.0.0.1", 80, allow_private=True)  # multicast never


class _Web(http.server.BaseHTTPRequestHandler):
    """/img: bytes; /to-metadata: a redirect into the cloud metadata address; /loop: redirects forever."""

    def do_GET(self):
        if self.path == "/img":
            self.send_response(200)
            self.send_header("Content-Length", "4")
            self.end_headers()
            self.wfile.write(b"\xff\xd8\xff\xd9")
            return
        target = {"/to-metadata": "http://169.254.169.254/latest/meta-data/", "/hop": "/img"}.get(self.path, "/loop")
        self.send_response(302)
        self.send_header("Location", target)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.fixture
def web(monkeypatch):
    """A loopback server treated as a public host: every other address keeps the real check."""
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Web)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    real = images._checked_address
    monkeypatch.setattr(images, "_checked_address",
                        lambda host, port, allow: "127.0.0.1" if host == "public.test" else real(host, port, allow))
    yield f"http://public.test:{httpd.server_address[1]}"
    httpd.shutdown()


def test_redirects_are_followed_and_checked_at_every_hop(web):
    limits = ServiceLimits()
    assert images.fetch_url(web + "/hop", "image", limits) == b"\xff\xd8\xff\xd9"
    for path in ("/to-metadata", "/loop"):
        with pytest.raises(ServiceError) as e:
            images.fetch_url(web + path, "image", limits)
        assert e.value.status == 422 and GENERIC in e.value.message and "169.254" not in e.value.message


def test_client_errors_carry_no_server_paths_or_command_lines():
    from engine.serving.envelope import client_text

    text = client_text("gallery index folder '/srv/facefeat/ix' does not exist: build it with -o Global.mode=build_index "
                       "-o index=/srv/facefeat/ix; cannot decode image: /srv/data/a b.jpg")
    assert "/srv" not in text and "-o " not in text and "<server path>" in text
    kept = "request body of 0.3 MB is above the limit of 0.2 MB (Serve.max_request_mb): send http://x/y/z.jpg"
    assert client_text(kept) == kept
