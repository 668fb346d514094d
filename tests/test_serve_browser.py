"""`/docs` and the try-it page `/` in a real browser (headless Chromium) with the network unreachable.

Chromium is driven over the DevTools protocol on a pipe (``--remote-debugging-pipe``: JSON messages ending in NUL
on fds 3/4), so no driver or Python package is needed. Its proxy points at a closed port and its resolver fails
every name but 127.0.0.1: any fetch from a CDN fails, and the test checks that none was even tried. Skipped where
no Chromium is installed (CI installs Debian's ``chromium``: see ``.ci/run``).
"""

from __future__ import annotations

import base64
import json
import os
import select
import shutil
import socket
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from tests import test_serve
from tests.test_serve import Server, edgecv

assets = test_serve.assets  # the fixture: a small bundle and images

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
BROWSER = next((b for b in map(shutil.which, BROWSERS) if b), None)
OFFLINE = ["--proxy-server=http://127.0.0.1:9", "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1"]


class Chromium:
    """Headless Chromium with one page, driven over the DevTools protocol on a pipe; every wait is bounded."""

    def __init__(self, profile: Path, *flags: str):
        to_chrome, self._w = os.pipe()
        self._r, from_chrome = os.pipe()

        def fds():  # the child reads commands on fd 3 and writes answers and events on fd 4
            os.dup2(to_chrome, 3)
            os.dup2(from_chrome, 4)

        self.proc = subprocess.Popen(
            [BROWSER, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
             "--remote-debugging-pipe", f"--user-data-dir={profile}", "--window-size=1200,900", *flags,
             "about:blank"], pass_fds=(3, 4), preexec_fn=fds, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        os.close(to_chrome)
        os.close(from_chrome)
        self._buf, self._id, self.events = b"", 0, []
        target = self.call("Target.createTarget", url="about:blank")["targetId"]
        self.session = self.call("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
        for domain in ("Page", "Runtime", "Network"):
            self.call(f"{domain}.enable", session=True)

    def call(self, method: str, session: bool = False, timeout: float = 30.0, **params) -> dict:
        self._id += 1
        msg = {"id": self._id, "method": method, "params": params}
        if session:
            msg["sessionId"] = self.session
        os.write(self._w, json.dumps(msg).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while True:
            while b"\0" in self._buf:
                raw, self._buf = self._buf.split(b"\0", 1)
                m = json.loads(raw)
                if m.get("id") == self._id:
                    if "error" in m:
                        raise AssertionError(f"{method}: {m['error']}")
                    return m["result"]
                self.events.append(m)
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self._r], [], [], left)[0]:
                raise AssertionError(f"{method}: no answer from Chromium in {timeout} s")
            chunk = os.read(self._r, 1 << 20)
            if not chunk:
                raise AssertionError(f"{method}: Chromium exited ({self.proc.poll()})")
            self._buf += chunk

    def goto(self, url: str) -> dict:
        return self.call("Page.navigate", session=True, url=url)

    def js(self, expr: str):
        r = self.call("Runtime.evaluate", session=True, expression=expr, returnByValue=True)
        if "exceptionDetails" in r:
            raise AssertionError(f"{expr}: {r['exceptionDetails']}")
        return r["result"].get("value")

    def wait_for(self, expr: str, timeout: float = 30.0):
        """The value of ``expr`` once truthy (polled: the page may still be loading, or the previous one);
        fails after ``timeout`` seconds."""
        deadline, last = time.monotonic() + timeout, None
        while time.monotonic() < deadline:
            try:
                value = self.js(expr)
            except AssertionError as e:  # evaluated in a document that is not (yet) the one expected
                value, last = None, e
            if value:
                return value
            time.sleep(0.1)
        raise AssertionError(f"still falsy after {timeout} s: {expr} ({last or 'no error'})")

    def upload(self, selector: str, path: Path) -> None:
        root = self.call("DOM.getDocument", session=True)["root"]["nodeId"]
        node = self.call("DOM.querySelector", session=True, nodeId=root, selector=selector)["nodeId"]
        self.call("DOM.setFileInputFiles", session=True, nodeId=node, files=[str(path)])

    def screenshot(self, path: Path) -> None:
        path.write_bytes(base64.b64decode(self.call("Page.captureScreenshot", session=True, format="png")["data"]))

    def requested(self) -> list[str]:
        return [e["params"]["request"]["url"] for e in self.events if e.get("method") == "Network.requestWillBeSent"]

    def close(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
        os.close(self._w)
        os.close(self._r)


@pytest.fixture(scope="module")
def served(assets):
    s = Server(assets["bundle"])
    yield s
    assert s.stop() == 0


@pytest.fixture
def browser(tmp_path):
    if BROWSER is None:
        pytest.skip(f"no Chromium on PATH ({', '.join(BROWSERS)}): install Debian's chromium to run the browser "
                    "tests (.ci/run does)")
    b = Chromium(tmp_path / "profile", *OFFLINE)
    yield b
    b.close()


def _shots(tmp_path: Path) -> Path:
    """Where screenshots go: $EDGECV_SCREENSHOTS to look at them, else the test's tmp folder."""
    d = Path(os.environ.get("EDGECV_SCREENSHOTS", tmp_path))
    d.mkdir(parents=True, exist_ok=True)
    return d


def _assert_nothing_external(b: Chromium, base: str) -> None:
    external = [u for u in b.requested() if not u.startswith((base, "data:", "blob:", "about:"))]
    assert not external, f"the page fetched from outside the server: {external}"


def test_pages_need_no_api_key_and_what_they_call_does(assets):
    s = Server(assets["bundle"], "--api-key-env", "EDGECV_TEST_KEY", env={"EDGECV_TEST_KEY": "s3cret"})
    try:
        for path in ("/", "/docs", "/docs/assets/swagger-ui-bundle.js", "/docs/assets/swagger-ui.css", "/openapi.json"):
            assert httpx.get(s.url + path, timeout=10).status_code == 200, path
        for path in ("/info", "/v2/models/edgecv/config"):
            assert httpx.get(s.url + path, timeout=10).status_code == 401, path
        with socket.create_connection(("127.0.0.1", s.port), timeout=10) as sock:  # no way around the key
            sock.sendall(b"GET /docs/assets/../../info HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            status = sock.recv(65536).split(b"\r\n", 1)[0]
        assert status.split()[1] == b"404", status
        assert httpx.get(s.url + "/info", headers={"X-API-Key": "s3cret"}, timeout=10).status_code == 200
    finally:
        assert s.stop() == 0


@pytest.mark.slow
def test_network_is_unreachable_for_the_browser(browser):
    # the premise of the two tests below: a CDN asset (FastAPI's default /docs loads this one) cannot be fetched
    r = browser.goto("https://cdn.jsdelivr.net/npm/swagger-ui-dist@5/swagger-ui-bundle.js")
    assert r.get("errorText", "").startswith("net::ERR_"), r


@pytest.mark.slow
def test_docs_render_offline_and_count_as_docs_in_metrics(browser, served, tmp_path):
    browser.goto(served.url + "/docs")
    title = browser.wait_for("document.querySelector('.swagger-ui .info .title')?.textContent")
    assert title.startswith("edgecv serve")
    assert browser.wait_for("document.querySelectorAll('.swagger-ui .opblock').length") >= 8  # the operations
    browser.screenshot(_shots(tmp_path) / "docs.png")
    browser.goto(served.url + "/redoc")
    assert browser.wait_for("document.querySelector('.redoc-wrap h1')?.textContent").startswith("edgecv serve")
    _assert_nothing_external(browser, served.url)
    metrics = httpx.get(served.url + "/metrics", timeout=10).text
    for label in ("/docs", "/docs/assets", "/openapi.json", "/redoc"):
        assert f'edgecv_requests_total{{endpoint="{label}",status="200"}}' in metrics, label
    assert 'endpoint="unmatched"' not in metrics


@pytest.mark.slow
def test_try_it_page_uploads_an_image_and_shows_the_cli_label(browser, served, assets, tmp_path):
    info = httpx.get(served.url + "/info", timeout=10).json()
    img = assets["imgs"][0]
    cli = json.loads(edgecv("predict", str(assets["bundle"]), str(img), "--json").stdout)["predictions"][0]
    browser.goto(served.url + "/")
    assert browser.wait_for("document.querySelector('#model')?.textContent.includes('onnx-fp32')")
    browser.upload("#file", img)
    label = browser.wait_for("!document.querySelector('#result').hidden && document.querySelector('#top1').textContent")
    assert label == cli["label"]
    rows = browser.js("[...document.querySelectorAll('#topk tr')].map(r => r.cells[0].textContent)")
    assert rows == [t["label"] for t in cli["topk"]][:5]
    assert browser.js("document.querySelector('#artifact').textContent") == info["artifact"]
    assert browser.js("document.querySelector('#sha256').textContent") == info["sha256"]
    assert browser.js("document.querySelector('#latency').textContent").endswith(" ms")
    browser.screenshot(_shots(tmp_path) / "try-it.png")
    _assert_nothing_external(browser, served.url)
