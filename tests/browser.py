"""Headless chromium driven through its DevTools protocol (aiohttp's websocket client), for pages behind
HTTP basic authentication: a browser asks its user to sign in when a server answers 401 with a
`WWW-Authenticate: Basic` challenge; here the test is that user, answering each challenge with an
account, or cancelling it. (Credentials in the address do not do: the MLflow UI's own requests then fail.)"""

import asyncio
import re
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from typing import Any

import aiohttp

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
POLL_S = 1.0


@dataclass(frozen=True)
class Visit:
    challenges: list[dict[str, Any]]  # the sign-in requests the browser got (scheme, realm, origin)
    html: str  # the page's DOM when it held `wanted`, or at the end of the time


async def _visit(url: str, account: tuple[str, str] | None, wanted: str, timeout: float) -> Visit:
    profile = tempfile.mkdtemp(prefix="chromium-profile-")
    browser = subprocess.Popen([str(CHROMIUM), "--headless=new", "--no-sandbox", "--disable-gpu",
                                "--window-size=1920,1080", f"--user-data-dir={profile}", "--remote-debugging-port=0",
                                "about:blank"], stderr=subprocess.PIPE, text=True)
    try:
        assert browser.stderr is not None
        listening = next(found for line in browser.stderr
                         if (found := re.search(r"DevTools listening on ws://[^:]+:(\d+)/", line)))
        async with aiohttp.ClientSession() as session:
            async with session.get(f"http://127.0.0.1:{listening[1]}/json/list") as response:
                [page] = [target for target in await response.json() if target["type"] == "page"]
            async with session.ws_connect(page["webSocketDebuggerUrl"], max_msg_size=0) as socket:
                return await _drive(socket, url, account, wanted, timeout)
    finally:
        browser.kill()
        browser.wait()
        shutil.rmtree(profile, ignore_errors=True)


async def _drive(socket: aiohttp.ClientWebSocketResponse, url: str, account: tuple[str, str] | None, wanted: str,
                 timeout: float) -> Visit:
    counter = iter(range(1, 1 << 30))
    reads: set[int] = set()

    async def send(method: str, **params: Any) -> int:
        number = next(counter)
        await socket.send_json({"id": number, "method": method, "params": params})
        return number

    answer = ({"response": "ProvideCredentials", "username": account[0], "password": account[1]} if account
              else {"response": "CancelAuth"})
    await send("Fetch.enable", handleAuthRequests=True, patterns=[{"urlPattern": "*"}])
    await send("Page.navigate", url=url)
    challenges, html, deadline = [], "", time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            message = await socket.receive_json(timeout=POLL_S)
        except TimeoutError:
            reads.add(await send("Runtime.evaluate", expression="document.documentElement.outerHTML"))
            continue
        method, params = message.get("method"), message.get("params", {})
        if method == "Fetch.requestPaused":
            await send("Fetch.continueRequest", requestId=params["requestId"])
        elif method == "Fetch.authRequired":
            challenges.append(params["authChallenge"])
            await send("Fetch.continueWithAuth", requestId=params["requestId"], authChallengeResponse=answer)
        elif message.get("id") in reads:
            html = message.get("result", {}).get("result", {}).get("value") or ""
            if wanted in html:
                break
    return Visit(challenges, re.sub(r">\s+<", "><", html))


def visit(url: str, account: tuple[str, str] | None, wanted: str, timeout: float = 60) -> Visit:
    """Open `url` in a fresh browser profile; sign in as `account` (name, password) when asked, or cancel;
    return once the DOM holds `wanted` (or after `timeout` seconds)."""
    return asyncio.run(_visit(url, account, wanted, timeout))
