"""Layer 3 fixtures: one real ComfyUI server for the session, with this pack loaded, driven over HTTP.

`comfy_server` starts `main.py --cpu` from the ComfyUI checkout (COMFYUI_PATH or ~/ComfyUI) on a free
port with `--base-directory` a temporary folder (its own models/, custom_nodes/, input/, output/, temp/
and user/) and an in-memory database, so the checkout is only read, and only this pack is loaded: the
checkout's own custom_nodes/ folder is not (were the pack installed there too, it would load twice).
custom_nodes/ holds `planx -> <repo root>`. `PLANX_FRONTEND_ROOT` serves another frontend build (the
`static/` folder of a comfyui-frontend-package) through `--front-end-root`; the pinned one otherwise.
Without a checkout every test using it is SKIPPED with the suite's loud message.

Websocket events come through aiohttp, which ComfyUI itself requires, so nothing extra is installed.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
TERMINAL = {"execution_success", "execution_error", "execution_interrupted"}
STARTUP_TIMEOUT_S = 180


def pytest_plugin_registered(plugin, manager):
    """Keep `import conftest` meaning tests/conftest.py. pytest imports each conftest.py of a folder
    without __init__.py as the module `conftest`, replacing the one before; the suite's test modules
    (here and in tests/) do `from conftest import randomize`. Once this file is registered, the
    suite's conftest module goes back into sys.modules."""
    if plugin is sys.modules.get("conftest") and getattr(plugin, "__file__", None) == __file__:
        wanted = REPO / "tests" / "conftest.py"
        suite = next(
            (p for p in manager.get_plugins() if getattr(p, "__file__", None) and Path(p.__file__).resolve() == wanted),
            None,
        )
        if suite is not None:
            sys.modules["conftest"] = suite


class PromptRejected(Exception):
    """POST /prompt answered 400 (validation): `.body` is the server's JSON."""

    def __init__(self, body: dict):
        super().__init__(json.dumps(body)[:2000])
        self.body = body


@dataclass
class ComfyServer:
    base_url: str
    dirs: dict[str, Path]
    process: subprocess.Popen
    log_path: Path
    object_info: dict = field(default_factory=dict, repr=False)

    # -- HTTP --------------------------------------------------------------------------
    def get(self, path: str):
        with urllib.request.urlopen(self.base_url + path, timeout=30) as resp:
            return json.loads(resp.read())

    def post(self, path: str, body: dict | None = None):
        request = urllib.request.Request(
            self.base_url + path,
            data=json.dumps({} if body is None else body).encode(),
            headers={"Content-Type": "application/json"},
            method="POST",
        )
        with urllib.request.urlopen(request, timeout=30) as resp:
            data = resp.read()
            return json.loads(data) if data else None

    def interrupt(self) -> None:
        self.post("/interrupt")

    def history(self, prompt_id: str, timeout: float = 10) -> dict:
        """/history of a finished prompt (the server files it just after sending execution_success)."""
        deadline = time.monotonic() + timeout
        while True:
            entry = self.get(f"/history/{prompt_id}").get(prompt_id)
            if entry is not None or time.monotonic() > deadline:
                if entry is None:
                    raise KeyError(f"prompt {prompt_id} is not in /history after {timeout} s")
                return entry
            time.sleep(0.05)

    def log(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def log_tail(self, lines: int = 80) -> str:
        return "\n".join(self.log().splitlines()[-lines:])

    # -- prompts -----------------------------------------------------------------------
    def run(self, prompt: dict, timeout: float = 120, on_event=None) -> list[dict]:
        """Queue an API prompt and return its websocket events ({type, data}), up to and including the
        first execution_success / execution_error / execution_interrupted. `on_event(event)` sees each
        event as it arrives (e.g. to POST /interrupt). Raises PromptRejected on a validation error, and
        TimeoutError (after interrupting the server) when the prompt does not finish in time."""
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return asyncio.run(self._run(prompt, timeout, on_event))
        # called from inside a running loop (Playwright's sync API keeps one in the test's thread): its own thread
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            return pool.submit(lambda: asyncio.run(self._run(prompt, timeout, on_event))).result()

    async def _run(self, prompt: dict, timeout: float, on_event) -> list[dict]:
        import aiohttp

        client_id = uuid.uuid4().hex
        ws_url = self.base_url.replace("http://", "ws://") + f"/ws?clientId={client_id}"
        events: list[dict] = []
        async with aiohttp.ClientSession() as session, session.ws_connect(ws_url, max_msg_size=0) as ws:
            async with session.post(f"{self.base_url}/prompt", json={"prompt": prompt, "client_id": client_id}) as resp:
                body = await resp.json()
            if resp.status != 200:
                raise PromptRejected(body)
            prompt_id = body["prompt_id"]
            deadline = time.monotonic() + timeout
            while True:
                try:
                    msg = await asyncio.wait_for(ws.receive(), max(0.1, deadline - time.monotonic()))
                except asyncio.TimeoutError:
                    self.interrupt()
                    seen = [e["type"] for e in events]
                    raise TimeoutError(f"prompt {prompt_id} did not finish in {timeout} s; events: {seen}") from None
                if msg.type == aiohttp.WSMsgType.BINARY:  # latent previews
                    continue
                if msg.type != aiohttp.WSMsgType.TEXT:
                    raise ConnectionError(f"websocket ended ({msg.type}) before prompt {prompt_id} finished")
                event = json.loads(msg.data)
                data = event.get("data") or {}
                if data.get("prompt_id", prompt_id) != prompt_id:
                    continue
                events.append(event)
                if on_event is not None:
                    on_event(event)
                if event["type"] in TERMINAL:
                    return events


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _start(comfy: Path, root: Path, frontend: str | None = None) -> ComfyServer:
    dirs = {name: root / name for name in ("input", "output", "temp", "user", "custom_nodes", "models")}
    for folder in dirs.values():
        folder.mkdir(parents=True)
    (dirs["custom_nodes"] / "planx").symlink_to(REPO, target_is_directory=True)
    settings = dirs["user"] / "default" / "comfy.settings.json"
    settings.parent.mkdir(parents=True)
    settings.write_text(json.dumps({"Comfy.TutorialCompleted": True}), encoding="utf-8")
    port = _free_port()
    log_path = root / "server.log"
    command = [
        sys.executable,
        str(comfy / "main.py"),
        "--cpu",
        "--listen",
        "127.0.0.1",
        "--port",
        str(port),
        "--base-directory",
        str(root),
        "--input-directory",
        str(dirs["input"]),
        "--output-directory",
        str(dirs["output"]),
        "--temp-directory",
        str(dirs["temp"]),
        "--user-directory",
        str(dirs["user"]),
        "--database-url",
        "sqlite:///:memory:",
        "--disable-auto-launch",
        *(["--front-end-root", frontend] if frontend else []),
    ]
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            command, cwd=comfy, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"}
        )
    server = ComfyServer(f"http://127.0.0.1:{port}", dirs, process, log_path)
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"ComfyUI exited with code {process.returncode} while starting:\n{server.log_tail()}")
        try:
            server.object_info = server.get("/object_info")
            return server
        except (urllib.error.URLError, ConnectionError, OSError):
            time.sleep(0.5)
    _stop(process)
    pytest.fail(f"ComfyUI did not answer /object_info within {STARTUP_TIMEOUT_S} s:\n{server.log_tail()}")


def _stop(process: subprocess.Popen) -> None:
    process.terminate()
    try:
        process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


_SERVERS: list[ComfyServer] = []


@pytest.fixture(scope="session")
def comfy_server(tmp_path_factory):
    """A running ComfyUI with the pack (see the module docstring); stopped at the end of the session."""
    from conftest import (  # tests/conftest.py (see pytest_plugin_registered)
        _COMFY_SKIP,
        comfyui_path,
    )

    comfy = comfyui_path()
    if comfy is None:
        pytest.skip(_COMFY_SKIP)
    server = _start(comfy, tmp_path_factory.mktemp("comfyui"), os.environ.get("PLANX_FRONTEND_ROOT") or None)
    _SERVERS.append(server)
    try:
        yield server
    finally:
        _stop(server.process)
        _SERVERS.remove(server)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """A failing test that used the server gets the server log's tail in its report."""
    outcome = yield
    report = outcome.get_result()
    if report.failed and _SERVERS and "comfy_server" in getattr(item, "fixturenames", ()):
        report.sections.append(("ComfyUI server log (tail)", _SERVERS[-1].log_tail()))


# -- the browser (layer 3 browser tests) ------------------------------------------------------
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture(scope="module")
def browser():
    if CHROMIUM is None:
        pytest.skip("SKIPPED: browser test: no Debian chromium on PATH (apt-get install chromium)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="SKIPPED: browser test: pip install playwright")
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
        yield browser
        browser.close()
