"""The operator console in a real browser: Debian's Chromium, driven by Playwright, against a live
broker with real a2a-sdk agents delegating to each other.

The test clicks through every page as an operator would, suspends and resumes an agent, kills a
delegation tree, sees a forged form refused, and logs out. The screenshots it takes are the ones
docs/console.md shows (docs/images/console-*.png).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest
from playwright.async_api import Browser, Page, async_playwright, expect

from testkit.config import budget

from .mesh import Mesh, new_marker, plan, start_mesh
from .sdk import client_for, send_request

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--disable-sync",
    # Even so it looks up Google's autofill, update and account hosts; the pages under test are
    # on 127.0.0.1, so no other name need resolve, and no DNS query leaves the machine.
    "--disable-features=AutofillServerCommunication",
    "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1, EXCLUDE localhost",
]
# Screenshots are always taken (a page that cannot render fails the test); they replace the
# docs' images only when asked: A2A_CONSOLE_SCREENSHOTS=docs/images (docs/console.md).
IMAGES = Path(
    os.environ.get("A2A_CONSOLE_SCREENSHOTS") or Path(tempfile.gettempdir()) / "a2a-console-shots"
)
AGENTS = ["planner", "researcher", "writer"]
POLICY = "\n".join(
    [
        "g, alice, role:user",
        *(f"g, {name}, role:agent" for name in AGENTS),
        *(f"g2, {name}, group:team" for name in AGENTS),
        "p, role:user, *, originate, allow",
        "p, role:user, group:team, SendMessage:*, allow",
        "p, role:agent, group:team, SendMessage:*, allow",
        "",
    ]
)
BUDGETS = {
    "budgets": {"trees": [budget("calls", "lifetime", 20)]},
    "budgets.agents": {
        "alice": [budget("calls", "day", 10)],
        "planner": [budget("calls", "hour", 4)],
    },
}

# A developer without Chromium skips these; CI (which installs it in .ci/run) never does.
pytestmark = pytest.mark.skipif(
    shutil.which(CHROMIUM) is None and not os.environ.get("CI"),
    reason="Debian's chromium is not installed (apt-get install chromium; .ci/run does)",
)


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory, redis_url: str) -> Iterator[Mesh]:
    folder = tmp_path_factory.mktemp("console")
    with start_mesh(
        folder, redis_url, agents=AGENTS, callers=["alice"], policy=POLICY, tables=BUDGETS
    ) as started:
        yield started


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    async with async_playwright() as playwright:
        launched = await playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield launched
        finally:
            await launched.close()


async def _delegate(mesh: Mesh) -> None:
    """alice asks the planner, which asks the researcher, which asks the writer (a2a-sdk)."""
    async with httpx.AsyncClient(headers=mesh.bearer("alice"), timeout=20) as http:
        client = await client_for(http, f"{mesh.brokers[0]}/agents/planner", "JSONRPC")
        text = plan(new_marker("console"), "researcher", "writer")
        events = [event async for event in client.send_message(send_request(text))]
        assert events, "the planner answered nothing"


async def _shot(page: Page, name: str) -> None:
    await asyncio.to_thread(IMAGES.mkdir, parents=True, exist_ok=True)
    await page.screenshot(path=str(IMAGES / f"console-{name}.png"), full_page=True)


def _admin_token(mesh: Mesh) -> str:
    return mesh.admin_headers["Authorization"].removeprefix("Bearer ")


async def _log_in(page: Page, mesh: Mesh, token: str) -> None:
    await page.goto(f"{mesh.brokers[0]}/console/traffic")
    await expect(page).to_have_url(f"{mesh.brokers[0]}/console/login")  # no session yet
    await page.fill("#token", token)
    await page.click("#login")


async def test_an_operator_clicks_through_the_console(mesh: Mesh, browser: Browser) -> None:
    await _delegate(mesh)
    page = await browser.new_page(viewport={"width": 1280, "height": 800})
    page.set_default_timeout(10_000)
    await _log_in(page, mesh, "not-the-admin-token")
    await expect(page.locator("#refusal")).to_contain_text("not the broker's")
    await expect(page.locator("body")).to_contain_text("CONSOLE_UNAUTHENTICATED")
    await _log_in(page, mesh, _admin_token(mesh))
    await _live_traffic(page, mesh)
    await _suspend_and_resume(page)
    await _kill_a_tree(page)
    await _budgets(page)
    await _audit(page)
    base = f"{mesh.brokers[0]}/console"
    await _alerts(page, mesh)
    await _forged_form(page, base)
    await page.click("#logout")
    await expect(page).to_have_url(f"{base}/login")
    await _shot(page, "login")
    await page.goto(f"{base}/agents")
    await expect(page).to_have_url(f"{base}/login")


async def _alerts(page: Page, mesh: Mesh) -> None:
    """The delegation above used three edges for the first time: three alerts, shared through
    Redis, so the other replica lists them too (and its live traffic, the requests the first
    replica mediated); one is acknowledged from the page."""
    base = f"{mesh.brokers[1]}/console"
    await _log_in_at(page, base, _admin_token(mesh))
    # Every request went through the first replica; this one's live traffic shows them too.
    await expect(page.locator("#traffic-rows")).to_contain_text("researcher")
    await page.goto(f"{base}/alerts")
    table = page.locator("table.alerts")
    for edge in ("alice>planner", "planner>researcher", "researcher>writer"):
        await expect(table).to_contain_text(edge)
    row = page.locator("tr.open", has_text="planner>researcher")
    await expect(row.locator(".rule")).to_have_text("new_edge")
    await row.locator("button.ack").click()
    await expect(page).to_have_url(f"{base}/alerts")
    acked = page.locator("tr.acked", has_text="planner>researcher")
    await expect(acked.locator(".status")).to_contain_text("acknowledged by admin")
    await _shot(page, "alerts")
    # Back to the first replica, where the rest of the walk happens.
    await page.goto(f"{mesh.brokers[0]}/console/alerts")
    await expect(page.locator("tr.acked", has_text="planner>researcher")).to_have_count(1)


async def _log_in_at(page: Page, base: str, token: str) -> None:
    await page.goto(f"{base}/login")
    await page.fill("#token", token)
    await page.click("#login")
    await expect(page).to_have_url(f"{base}/traffic")


async def _live_traffic(page: Page, mesh: Mesh) -> None:
    await expect(page).to_have_url(f"{mesh.brokers[0]}/console/traffic")
    rows = page.locator("#traffic-rows")
    await expect(rows).to_contain_text("planner")
    await expect(rows).to_contain_text("SendMessage")
    await _shot(page, "traffic")
    # Live: new requests appear without reloading the page.
    before = await rows.locator("tr").count()
    await _delegate(mesh)
    await expect(rows.locator("tr")).not_to_have_count(before, timeout=10_000)


async def _suspend_and_resume(page: Page) -> None:
    await page.click("text=Agents")
    researcher = page.locator("#agent-researcher")
    await expect(researcher.locator(".status")).to_have_text("active")
    await researcher.locator("button.suspend").click()
    await expect(researcher.locator(".status")).to_have_text("suspended")
    await _shot(page, "agents")
    await researcher.locator("button.resume").click()
    await expect(researcher.locator(".status")).to_have_text("active")


async def _kill_a_tree(page: Page) -> None:
    await page.click("text=Delegation trees")
    await page.locator("ul.recent-trees a").first.click()
    root = page.locator("ul.tree.root > li.hop").first
    await expect(root.locator("> .agent")).to_have_text("alice")
    chain = root.locator("li.hop li.hop li.hop").first  # alice > planner > researcher > writer
    await expect(chain.locator("> .agent")).to_have_text("writer")
    await expect(chain.locator("> .badge")).to_have_text("ok")
    await _shot(page, "tree")
    tree_url = page.url
    await page.click("#kill-tree")
    await expect(page.locator("h1")).to_contain_text("killed")
    await page.goto(tree_url)
    await expect(page.locator("#tree-state")).to_contain_text("killed")


async def _budgets(page: Page) -> None:
    await page.click("text=Budgets")
    budgets = page.locator("table.budgets")
    await expect(budgets).to_contain_text("agent:alice")
    await expect(budgets).to_contain_text("agent:planner")
    await _shot(page, "budgets")


async def _audit(page: Page) -> None:
    await page.click("text=Audit")
    await page.fill("input[name=agent]", "writer")
    await page.click("#verify")
    await expect(page.locator("table.records")).to_contain_text("writer")
    statuses = page.locator("td.verify-status")
    await expect(statuses.first).to_have_text("verified")
    assert set(await statuses.all_inner_texts()) == {"verified"}
    await _shot(page, "audit")


async def _forged_form(page: Page, base: str) -> None:
    """A form whose CSRF token is not the session's is refused, and changes nothing."""
    await page.goto(f"{base}/agents")
    writer = page.locator("#agent-writer")
    await writer.locator("input[name=csrf_token]").first.evaluate("e => e.value = 'forged'")
    await writer.locator("button.suspend").click()
    await expect(page.locator("body")).to_contain_text("CONSOLE_CSRF_REJECTED")
    await page.goto(f"{base}/agents")
    await expect(writer.locator(".status")).to_have_text("active")


async def test_no_secret_is_ever_rendered(mesh: Mesh, browser: Browser) -> None:
    """The admin token never appears on a page; a rotated credential appears once, on the
    answer to the rotation, and on no later page."""
    page = await browser.new_page()
    await _log_in(page, mesh, _admin_token(mesh))
    await page.goto(f"{mesh.brokers[0]}/console/agents")
    await page.locator("#agent-writer button.rotate").click()
    credential = (await page.locator("#credential").inner_text()).strip()
    assert len(credential) >= 20
    for path in ("traffic", "agents", "budgets", "audit", "trees"):
        await page.goto(f"{mesh.brokers[0]}/console/{path}")
        html = await page.content()
        assert credential not in html
        assert _admin_token(mesh) not in html
    cookies = {c["name"]: c for c in await page.context.cookies()}
    assert cookies["a2a_console"]["httpOnly"] is True
    assert cookies["a2a_console"]["sameSite"] == "Strict"


async def test_names_a_caller_chose_are_shown_as_text(mesh: Mesh, browser: Browser) -> None:
    """A target name in a request path is the caller's to choose; the audit page shows it as
    text, never as markup."""
    hostile = "<img src=x onerror=document.title='pwned'>"
    async with httpx.AsyncClient(headers=mesh.bearer("alice"), timeout=10) as http:
        refused = await http.post(f"{mesh.brokers[0]}/agents/{hostile}/jsonrpc", json={})
        assert "error" in refused.json()  # no such agent
    page = await browser.new_page()
    await _log_in(page, mesh, _admin_token(mesh))
    await page.goto(f"{mesh.brokers[0]}/console/audit?agent=alice")
    await expect(page.locator("table.records")).to_contain_text(hostile)
    assert await page.locator("table.records img").count() == 0
    assert await page.title() != "pwned"
