"""A small W3C WebDriver client over the standard library, for Debian's
chromium-driver. Cockpit's own testlib expects /usr/bin/chromium-browser and
SSH into a test VM; this tier only needs to load a page, run a script in it,
read the console log and take screenshots.

The console: chromedriver keeps the browser log when the session asks for
goog:loggingPrefs {"browser": "ALL"} and hands it out at
POST /session/{id}/se/log (chromedriver's legacy log endpoint, still in
chromium 1xx's driver).
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

CHROMEDRIVER = "/usr/bin/chromedriver"
CHROMIUM = "/usr/bin/chromium"


def missing() -> str | None:
    for path, package in ((CHROMIUM, "chromium"), (CHROMEDRIVER, "chromium-driver")):
        if not os.path.exists(path):
            return f"{path} missing (Debian package {package})"
    return None


class WebDriverError(RuntimeError):
    pass


class Browser:
    """One headless chromium session behind its own chromedriver on loopback."""

    def __init__(self, work: Path, width: int = 1100, height: int = 1000):
        self.work = Path(work)
        self.work.mkdir(parents=True, exist_ok=True)
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.log = open(self.work / "chromedriver.log", "wb")
        self.driver = subprocess.Popen([CHROMEDRIVER, f"--port={self.port}", "--allowed-ips=127.0.0.1"],
                                       stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)
        end = time.monotonic() + 15
        while True:
            try:
                self._call("GET", "/status")
                break
            except (OSError, WebDriverError):
                if time.monotonic() > end or self.driver.poll() is not None:
                    self.quit()
                    raise WebDriverError("chromedriver did not start") from None
                time.sleep(0.1)
        profile = self.work / "profile"
        shutil.rmtree(profile, ignore_errors=True)
        caps = {"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:loggingPrefs": {"browser": "ALL"},
            "goog:chromeOptions": {"binary": CHROMIUM, "args": [
                "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                f"--window-size={width},{height}", f"--user-data-dir={profile}",
                "--no-first-run", "--disable-background-networking", "--disable-extensions",
                "--disable-component-update", "--disable-sync"]},
        }}}
        try:
            self.session = self._call("POST", "/session", caps)["sessionId"]
        except Exception:
            self.quit()
            raise

    def _call(self, method: str, path: str, body: dict | None = None, timeout: float = 60):
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(f"http://127.0.0.1:{self.port}{path}", data=data, method=method,
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                answer = json.loads(resp.read() or b"{}")
        except urllib.error.HTTPError as exc:
            detail = json.loads(exc.read() or b"{}").get("value", {})
            raise WebDriverError(f"{method} {path}: {detail.get('error')}: {detail.get('message', '')[:500]}") from None
        return answer.get("value", answer)

    def _s(self, path: str) -> str:
        return f"/session/{self.session}{path}"

    def go(self, url: str) -> None:
        self._call("POST", self._s("/url"), {"url": url})

    def js(self, script: str, *args):
        """Run `script` (a function body; `arguments` are args) in the page."""
        return self._call("POST", self._s("/execute/sync"), {"script": script, "args": list(args)})

    def wait(self, script: str, *args, timeout: float = 30.0, what: str = "condition"):
        end = time.monotonic() + timeout
        while True:
            value = self.js(script, *args)
            if value:
                return value
            if time.monotonic() > end:
                raise WebDriverError(f"timed out after {timeout:g} s waiting for {what}")
            time.sleep(0.1)

    def console(self) -> list[dict]:
        """The browser's console entries since the last call."""
        return self._call("POST", self._s("/se/log"), {"type": "browser"})

    def screenshot(self, path: Path) -> Path:
        """The page down to the end of its content: the window is made as
        tall as the document for the shot (a viewport shot of a short page
        is mostly empty, of a long one cut off), then restored."""
        rect = self._call("GET", self._s("/window/rect"))
        inner = self.js("return window.innerHeight")
        # the body's own height: documentElement.scrollHeight is never less than the viewport
        wanted = self.js("return Math.ceil(document.body.getBoundingClientRect().bottom) + 16") + (rect["height"] - inner)
        self._call("POST", self._s("/window/rect"), {"width": rect["width"], "height": min(wanted, 4000)})
        try:
            path.write_bytes(base64.b64decode(self._call("GET", self._s("/screenshot"))))
        finally:
            self._call("POST", self._s("/window/rect"), {"width": rect["width"], "height": rect["height"]})
        return path

    def quit(self) -> None:
        try:
            if getattr(self, "session", None):
                self._call("DELETE", self._s(""), timeout=10)
        except (OSError, WebDriverError):
            pass
        if self.driver.poll() is None:
            os.killpg(self.driver.pid, 15)
            try:
                self.driver.wait(5)
            except subprocess.TimeoutExpired:
                os.killpg(self.driver.pid, 9)
        self.log.close()

    def __enter__(self) -> Browser:
        return self

    def __exit__(self, *exc) -> None:
        self.quit()
