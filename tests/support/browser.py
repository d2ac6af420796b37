"""
A real browser for tests: Debian's chromium driven by Playwright for Python, with no browser
download (C{executable_path}), and the chat page served by a plain static web server on an
origin of its own.

Playwright's sync API is used on one thread of its own (its objects belong to the thread that
made them), so trial's reactor goes on running the cluster while the browser waits: every
browser step is a plain function handed to L{Browser.run}, which fires a Deferred with its
result.
"""

from __future__ import annotations

import os
import queue
import shutil
import threading
import time

from twisted.internet import defer
from twisted.python.failure import Failure
from twisted.trial.unittest import SkipTest
from twisted.web import server, static

from tests.support.process import theReactor

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
STATIC = os.path.join(REPO, "hpchat", "web", "static")
CHROMIUM = os.environ.get("HPCHAT_CHROMIUM", "/usr/bin/chromium")
INSTALL_HINT = ("run tools/install-test-deps.sh (it installs Debian's chromium with apt-get) and "
                "pip install -e '.[test]' (it brings Playwright); never `playwright install`")


def requireBrowser() -> None:
    """
    @raise SkipTest: Playwright or chromium is missing, naming the install step.
    """
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        raise SkipTest(f"Playwright for Python is not installed: {INSTALL_HINT}") from None
    if not (os.path.isfile(CHROMIUM) and os.access(CHROMIUM, os.X_OK)):
        raise SkipTest(f"no chromium at {CHROMIUM} (or set HPCHAT_CHROMIUM): {INSTALL_HINT}")


class _Silent(server.Site):
    def log(self, request):
        pass


def serveStatic(testcase, directory: str = STATIC) -> str:
    """
    Serve the chat page as a node does, C{/} and C{/static/...}, from a plain web server on a
    free 127.0.0.1 port until the test ends; return its origin.
    """
    root = static.File(directory)
    root.putChild(b"static", static.File(directory))
    port = theReactor().listenTCP(0, _Silent(root), interface="127.0.0.1")
    testcase.addCleanup(port.stopListening)
    return f"http://127.0.0.1:{port.getHost().port}"


class Browser:
    """
    One headless chromium, driven from a dedicated thread.

    @ivar errors: uncaught JavaScript errors of every page opened with L{newPage}.
    """

    def __init__(self, testcase, screenshots: str):
        self.testcase = testcase
        self.screenshots = screenshots
        self.errors: list[str] = []
        self.log: list[str] = []
        self.shots: list[str] = []
        self._jobs: queue.Queue = queue.Queue()
        self._thread = threading.Thread(target=self._work, name="playwright", daemon=True)
        self._playwright = None
        self._browser = None
        self._started = time.monotonic()

    # -- the thread

    def _work(self) -> None:
        reactor = theReactor()
        while True:
            job = self._jobs.get()
            if job is None:
                return
            f, d = job
            try:
                result = f()
            except BaseException:
                reactor.callFromThread(d.errback, Failure())
            else:
                reactor.callFromThread(d.callback, result)

    def run(self, f) -> defer.Deferred:
        """
        Call C{f()} on the browser thread; fire with its result (or failure).
        """
        d: defer.Deferred = defer.Deferred()
        self._jobs.put((f, d))
        return d

    # -- life

    async def start(self) -> "Browser":
        requireBrowser()
        os.makedirs(self.screenshots, exist_ok=True)
        self._thread.start()
        self.testcase.addCleanup(lambda: defer.ensureDeferred(self.close()))

        def launch():
            from playwright.sync_api import sync_playwright

            self._playwright = sync_playwright().start()
            self._browser = self._playwright.chromium.launch(
                executable_path=CHROMIUM, headless=True,
                # CI runs as root, where chromium's sandbox cannot start.
                args=["--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"])

        await self.run(launch)
        return self

    async def close(self) -> None:
        if not self._thread.is_alive():
            return

        def stop():
            if self._browser is not None:
                self._browser.close()
            if self._playwright is not None:
                self._playwright.stop()

        try:
            await self.run(stop)
        finally:
            self._jobs.put(None)
            with open(os.path.join(self.screenshots, "browser.log"), "w") as f:
                f.write("\n".join(self.log) + "\n")

    # -- pages (call these on the browser thread, from inside a function given to run)

    def newPage(self, name: str, **contextOptions):
        """
        A page in a fresh context (its own storage: one signed-in user each).
        """
        context = self._browser.new_context(**contextOptions)
        context.set_default_timeout(15000)
        page = context.new_page()
        page.on("pageerror", lambda error: self.errors.append(f"{name}: {error}"))
        # What the pages did, for a failing test: written to browser.log with the screenshots.
        page.on("console", lambda m: self._note(f"{name} console.{m.type}: {m.text}"))
        page.on("requestfailed", lambda r: self._note(
            f"{name} failed: {r.method} {r.url.split('?')[0]} {r.failure}"))
        page.on("response", lambda r: self._note(
            f"{name} {r.status} {r.request.method} {r.url.split('?')[0]}"))
        return page

    def _note(self, line: str) -> None:
        self.log.append(f"{time.monotonic() - self._started:8.3f} {line}")

    def shot(self, page, name: str) -> str:
        path = os.path.join(self.screenshots, name + ".png")
        page.screenshot(path=path, animations="disabled")
        self.shots.append(path)
        return path

    def publish(self, directory: str | None = None) -> list[str]:
        """
        Copy the screenshots taken so far into C{directory}, or the folder named by
        C{$HPCHAT_SCREENSHOTS} (e.g. docs/screenshots, replacing those of an earlier run);
        without either, they stay next to the test's output only, so that a test run never
        changes files of the work tree.
        """
        directory = directory or os.environ.get("HPCHAT_SCREENSHOTS")
        if not directory:
            return []
        os.makedirs(directory, exist_ok=True)
        for name in os.listdir(directory):
            if name.endswith(".png"):
                os.remove(os.path.join(directory, name))
        copied = []
        for path in self.shots:
            target = os.path.join(directory, os.path.basename(path))
            shutil.copyfile(path, target)
            copied.append(target)
        return copied
