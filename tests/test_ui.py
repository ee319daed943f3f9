"""The browser UI, as a new operator uses it: headless Chromium against a real `run.py serve`.

The gateway runs as a child process with the fake WhatsApp (`WAGATE_DRIVER=fake`) and fast QR
timings; the simulated phone (`Phone`) scans, writes and reads. Every step leaves a screenshot
under `tests/artifacts/` (git-ignored) for a human to look at.
"""

from __future__ import annotations

import base64
import contextlib
import json
import re
import shutil
import signal
import struct
import time
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import playwright.sync_api as playwright_sync
import pytest
import requests

from sessions.fake_server import FakeWhatsApp, Phone, SimMessage, SimReceipt
from tests.procs import Server, free_port
from tests.webhook_receiver import Receiver, verify

expect = playwright_sync.expect

# The system Chromium when there is one (`make test` installs the distribution's package where
# it can); otherwise Playwright's own, if `playwright install chromium` could download it.
CHROMIUM = next(
    (Path(p) for p in (shutil.which("chromium"), "/usr/bin/chromium") if p and Path(p).exists()),
    None,
)
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
ARTIFACTS = Path(__file__).parent / "artifacts"
ADMIN_EMAIL = "admin@example.com"
ADMIN_PASSWORD = "admin-password-1"
CUSTOMER = "+5215511111111"
WAIT_MS = 15_000
expect.set_options(timeout=WAIT_MS)


# -- fixtures -----------------------------------------------------------------------------------


@contextlib.contextmanager
def serving(tmp_path: Path, db_url: str, **env: str) -> Iterator[Server]:
    server = Server(
        tmp_path / "var",
        free_port(),
        WAGATE_DATABASE_URL=db_url,
        WAGATE_DRIVER="fake",
        WAGATE_ADMIN_EMAIL=ADMIN_EMAIL,
        WAGATE_ADMIN_PASSWORD=ADMIN_PASSWORD,
        WAGATE_QR_FIRST_SECONDS="4",
        WAGATE_QR_NEXT_SECONDS="2",
        WAGATE_QR_CODES="3",
        WAGATE_RECONNECT_BASE_SECONDS="0.05",
        WAGATE_RECONNECT_MAX_SECONDS="0.5",
        WAGATE_SPOOL_SYNC="flush",
        WAGATE_LOGIN_RATE_LIMIT="100/minute",
        WAGATE_WEBHOOKS_ALLOW_PRIVATE="true",  # the test receiver is on 127.0.0.1
        **env,
    )
    server.start()
    try:
        yield server
    finally:
        if server.proc is not None and server.proc.poll() is None:
            try:
                server.signal(signal.SIGTERM, timeout=15)
            except AssertionError:
                server.kill()
        server.kill()


@pytest.fixture
def gateway(tmp_path: Path, db_url: str) -> Iterator[Server]:
    with serving(tmp_path, db_url) as server:
        yield server


@pytest.fixture
def browser() -> Iterator[Any]:
    with playwright_sync.sync_playwright() as pw:
        chromium = pw.chromium.launch(
            executable_path=str(CHROMIUM) if CHROMIUM else None,
            args=CHROMIUM_ARGS,
            headless=True,
        )
        try:
            yield chromium
        finally:
            chromium.close()


class Shots:
    """Numbered screenshots of one test under tests/artifacts/."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.n = 0
        ARTIFACTS.mkdir(exist_ok=True)
        for old in ARTIFACTS.glob(f"{name}-*.png"):
            old.unlink()

    def __call__(self, page: Any, step: str) -> Path:
        self.n += 1
        path = ARTIFACTS / f"{self.name}-{self.n:02d}-{step}.png"
        page.screenshot(path=str(path), full_page=False)
        return path


def new_page(browser: Any, **options: Any) -> tuple[Any, Any]:
    context = browser.new_context(locale="en-US", **options)
    page = context.new_page()
    page.set_default_timeout(WAIT_MS)
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.errors = errors
    return context, page


def login(page: Any, base: str, email: str = ADMIN_EMAIL, password: str = ADMIN_PASSWORD) -> None:
    page.goto(base + "/")
    page.get_by_label("E-mail").fill(email)
    page.get_by_label("Password").fill(password)
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("navigation", name="Main")).to_be_visible()


def token_for(base: str, email: str = ADMIN_EMAIL, password: str = ADMIN_PASSWORD) -> str:
    resp = requests.post(
        f"{base}/api/v1/auth/login", json={"email": email, "password": password}, timeout=10
    )
    assert resp.status_code == 200, resp.text
    return str(resp.json()["access_token"])


def api(base: str, token: str, method: str, path: str, **kwargs: Any) -> Any:
    resp = requests.request(
        method,
        f"{base}{path}",
        headers={"Authorization": f"Bearer {token}"},
        timeout=10,
        **kwargs,
    )
    assert resp.status_code < 300, f"{method} {path}: {resp.status_code} {resp.text}"
    return resp.json() if resp.content else None


def until(check: Callable[[], Any], what: str, timeout: float = 15.0) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what} (last: {last!r})")


def phone_of(server: Server, session_id: int) -> Phone:
    return Phone(FakeWhatsApp(server.data_dir / "fake-wa"), session_id)


def text(body: str, sender: str = CUSTOMER, name: str = "Ana Souza") -> SimMessage:
    return SimMessage.model_validate(
        {"type": "text", "from": sender, "push_name": name, "text": body}
    )


def linked_account(server: Server, token: str, name: str = "Support") -> tuple[int, Phone]:
    """An account added and scanned through the API (for the tests that are not about it)."""
    sid = int(api(server.base, token, "POST", "/api/v1/sessions", json={"name": name})["id"])
    phone = phone_of(server, sid)
    until(phone.current_qr, "a QR code to scan")
    phone.scan()
    until(
        lambda: api(server.base, token, "GET", f"/api/v1/sessions/{sid}")["state"] == "connected",
        "the account to connect",
    )
    return sid, phone


def png(width: int, height: int, rgb: tuple[int, int, int]) -> bytes:
    """A real (decodable) PNG of one colour with a darker diagonal, made without a library."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    dark = bytes(c // 2 for c in rgb)
    rows = b"".join(
        b"\x00" + b"".join(dark if abs(x - y) < 6 else bytes(rgb) for x in range(width))
        for y in range(height)
    )
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(rows))
        + chunk(b"IEND", b"")
    )


def sent_texts(phone: Phone) -> str:
    return "\n".join(json.dumps(item, ensure_ascii=False) for item in phone.sent())


def no_horizontal_scroll(page: Any) -> bool:
    return bool(page.evaluate("document.documentElement.scrollWidth <= window.innerWidth + 1"))


# -- the journey --------------------------------------------------------------------------------


@pytest.mark.timeout(300)
def test_a_new_operator_links_an_account_and_chats(gateway: Server, browser: Any) -> None:
    shot = Shots("journey")
    base = gateway.base
    context, page = new_page(browser, viewport={"width": 1280, "height": 800})
    other_context = None
    try:
        # Log in.
        page.goto(base + "/")
        expect(page.get_by_role("heading", name="wagate")).to_be_visible()
        shot(page, "login")
        login(page, base)
        expect(page.get_by_text("Pick a conversation.")).to_be_visible()
        shot(page, "inbox-empty")

        # Add an account: its QR code shows, large, and is replaced on rotation.
        page.get_by_role("link", name="Accounts").click()
        page.get_by_label("Account name").fill("Support")
        page.get_by_role("button", name="Add account").click()
        qr = page.locator("#qr-image")
        expect(qr).to_be_visible()
        expect(qr).to_have_attribute("src", re.compile(r"^data:image/png;base64,"))
        first_qr = qr.get_attribute("src")
        box = qr.bounding_box()
        assert box is not None
        assert box["width"] >= 250, "the QR code is shown large"
        expect(page.locator("#qr-countdown")).to_contain_text("Expires in")
        shot(page, "qr")
        expect(qr).not_to_have_attribute("src", first_qr or "")
        expect(qr).to_have_attribute("src", re.compile(r"^data:image/png;base64,"))
        shot(page, "qr-rotated")

        # The phone scans it: the badge turns connected.
        sid = int(page.locator("section.pairing").get_attribute("data-session-id") or 0)
        phone = phone_of(gateway, sid)
        phone.scan(phone="+5215599999999", push_name="Support phone")
        expect(page.get_by_text("“Support” is linked.")).to_be_visible()
        card = page.locator(f"li.account[data-session-id='{sid}']")
        expect(card.locator(".badge")).to_have_attribute("data-state", "connected")
        expect(card.locator(".badge")).to_have_text("Connected")
        expect(card.locator(".phone")).to_have_text("+5215599999999")
        shot(page, "connected")

        # An inbound message appears in the list, then in the open thread, without reload.
        page.get_by_role("link", name="Inbox").click()
        phone.send(text("Hola, necesito ayuda con mi pedido"))
        conv = page.locator("li.conv").filter(has_text="Ana Souza")
        expect(conv).to_contain_text("Hola, necesito ayuda con mi pedido")
        expect(conv.locator(".unread")).to_have_text("1")
        shot(page, "inbound-in-list")
        conv.get_by_role("button").click()
        thread = page.locator("#messages")
        expect(thread.locator(".msg.in")).to_contain_text("Hola, necesito ayuda con mi pedido")
        phone.send(text("Es el pedido 4711"))
        expect(thread.locator(".msg.in").last).to_contain_text("Es el pedido 4711")
        shot(page, "inbound-in-thread")

        # Reply from the composer: the phone receives it; the ticks advance to read.
        page.get_by_role("textbox", name="Message").fill("Claro, lo reviso ahora")
        page.get_by_role("button", name="Send").click()
        mine = thread.locator(".msg.out").filter(has_text="Claro, lo reviso ahora")
        expect(mine).to_be_visible()
        until(lambda: "Claro, lo reviso ahora" in sent_texts(phone), "the phone to receive it")
        expect(mine).to_have_attribute("data-status", "sent")
        wa_id = next(
            item["id"] for item in phone.sent() if "Claro, lo reviso ahora" in json.dumps(item)
        )
        phone.receipt(
            SimReceipt.model_validate({"ids": [wa_id], "status": "delivered", "from": CUSTOMER})
        )
        expect(mine).to_have_attribute("data-status", "delivered")
        phone.receipt(
            SimReceipt.model_validate({"ids": [wa_id], "status": "read", "from": CUSTOMER})
        )
        expect(mine).to_have_attribute("data-status", "read")
        expect(mine.locator(".ticks")).to_have_attribute("aria-label", "Read")
        shot(page, "reply-read")

        # Send an image: its preview shows (fetched with the token into a blob URL).
        page.locator("#composer-file").set_input_files(
            files=[
                {
                    "name": "photo.png",
                    "mimeType": "image/png",
                    "buffer": png(240, 160, (40, 150, 110)),
                }
            ]
        )
        expect(page.locator(".file-chip")).to_contain_text("photo.png")
        page.get_by_role("button", name="Send").click()
        image = thread.locator(".msg.out[data-type='image'] img")
        expect(image).to_have_attribute("src", re.compile(r"^blob:"))
        until(lambda: '"media": "image"' in sent_texts(phone), "the phone to receive the image")
        until(
            lambda: image.evaluate("img => img.complete && img.naturalWidth > 0"),
            "the preview to decode",
        )
        shot(page, "image-sent")

        expect(conv.locator(".conv-preview")).to_have_text("You: Photo")
        expect(conv.locator(".unread")).to_have_count(0)  # read while it was open
        # AI on for this chat: the marker shows in the list.
        page.get_by_role("switch", name="AI", exact=True).check()
        expect(conv.locator(".marker.ai")).to_be_visible()
        shot(page, "ai-on")

        # A second operator, logged in at the same time, sees none of it.
        api(
            base,
            token_for(base),
            "POST",
            "/api/v1/users",
            json={"email": "second@example.com", "password": "second-password-1"},
        )
        other_context, other = new_page(browser, viewport={"width": 1280, "height": 800})
        login(other, base, "second@example.com", "second-password-1")
        expect(other.get_by_text("No conversations.")).to_be_visible()
        phone.send(text("Sigo esperando"))
        expect(thread.locator(".msg.in").last).to_contain_text("Sigo esperando")
        other.wait_for_timeout(500)
        expect(other.locator("li.conv")).to_have_count(0)
        other.get_by_role("link", name="Accounts").click()
        expect(other.get_by_text("No accounts yet.")).to_be_visible()
        expect(other.locator("li.account")).to_have_count(0)
        shot(other, "second-operator")
        assert not page.errors, page.errors
        assert not other.errors, other.errors
    finally:
        if other_context is not None:
            other_context.close()
        context.close()


# -- the other paths ----------------------------------------------------------------------------


def test_a_wrong_password_is_shown_inline(gateway: Server, browser: Any) -> None:
    shot = Shots("login-error")
    context, page = new_page(browser)
    try:
        page.goto(gateway.base + "/")
        page.get_by_label("E-mail").fill(ADMIN_EMAIL)
        page.get_by_label("Password").fill("not-the-password")
        page.get_by_role("button", name="Sign in").click()
        expect(page.get_by_role("alert")).to_have_text("Wrong e-mail or password.")
        expect(page.get_by_role("navigation", name="Main")).to_have_count(0)
        assert page.evaluate("sessionStorage.getItem('wagate.token')") is None
        shot(page, "wrong-password")

        page.get_by_label("Password").fill(ADMIN_PASSWORD)
        page.get_by_role("button", name="Sign in").click()
        expect(page.get_by_role("navigation", name="Main")).to_be_visible()
        page.reload()  # the token survives a reload (sessionStorage)...
        expect(page.get_by_role("navigation", name="Main")).to_be_visible()
        page.get_by_role("button", name="Log out").click()  # ...and logging out forgets it
        expect(page.get_by_role("button", name="Sign in")).to_be_visible()
        assert page.evaluate("sessionStorage.getItem('wagate.token')") is None
    finally:
        context.close()


@pytest.mark.timeout(180)
def test_an_expired_qr_offers_to_try_again(gateway: Server, browser: Any) -> None:
    shot = Shots("qr-expiry")
    context, page = new_page(browser)
    try:
        login(page, gateway.base)
        page.get_by_role("link", name="Accounts").click()
        page.get_by_label("Account name").fill("Sales")
        page.get_by_role("button", name="Add account").click()
        expect(page.locator("#qr-image")).to_be_visible()
        # Nobody scans: 4 s + 2 x 2 s later the pairing window closes.
        retry = page.get_by_role("button", name="Try again")
        expect(retry).to_be_visible(timeout=30_000)
        expect(page.get_by_role("alert")).to_contain_text("expired")
        expect(page.locator("#qr-image")).to_be_hidden()
        expect(page.locator("li.account .badge")).to_have_attribute("data-state", "qr_expired")
        shot(page, "expired")
        retry.click()
        expect(page.locator("#qr-image")).to_be_visible()
        expect(page.locator("#qr-countdown")).to_contain_text("Expires in")
        shot(page, "retried")
        # Linking by phone number instead shows the 8-character code.
        page.get_by_role("button", name="Link with phone number instead").click()
        page.get_by_label("Phone number with country code").fill("+5215512345678")
        page.get_by_role("button", name="Get code").click()
        expect(page.locator("#pair-code")).to_have_text(re.compile(r"^[A-Z0-9]{4}-[A-Z0-9]{4}$"))
        shot(page, "pair-code")
    finally:
        context.close()


@pytest.mark.timeout(240)
def test_a_lost_connection_shows_a_banner_and_catches_up(gateway: Server, browser: Any) -> None:
    shot = Shots("reconnect")
    token = token_for(gateway.base)
    sid, phone = linked_account(gateway, token)
    phone.send(text("antes del corte"))
    context, page = new_page(browser, viewport={"width": 1280, "height": 800})
    try:
        login(page, gateway.base)
        conv = page.locator("li.conv").filter(has_text="Ana Souza")
        expect(conv).to_contain_text("antes del corte")
        conv.get_by_role("button").click()
        expect(page.locator("#messages .msg.in")).to_contain_text("antes del corte")
        banner = page.locator("#banner")
        expect(banner).to_be_hidden()

        code, _, _ = gateway.signal(signal.SIGTERM, timeout=20)
        assert code == 0
        expect(banner).to_be_visible()
        expect(banner).to_contain_text("Connection lost")
        shot(page, "banner")
        # While the gateway is down the phone keeps talking; it is all there after the restart.
        phone.send(text("escrito durante el corte"))
        gateway.stdout.clear()
        gateway.start()
        expect(banner).to_be_hidden(timeout=30_000)
        expect(page.locator("#messages .msg.in").last).to_contain_text(
            "escrito durante el corte", timeout=30_000
        )
        expect(conv).to_contain_text("escrito durante el corte")
        phone.send(text("y después"))
        expect(page.locator("#messages .msg.in").last).to_contain_text("y después")
        shot(page, "caught-up")
        assert sid
    finally:
        context.close()


def test_the_inbox_fits_a_390_px_phone(gateway: Server, browser: Any) -> None:
    shot = Shots("phone")
    token = token_for(gateway.base)
    _, phone = linked_account(gateway, token)
    phone.send(
        text("Buenos días, ¿tienen envío a Monterrey? " * 3),
        SimMessage.model_validate(
            {
                "type": "location",
                "from": CUSTOMER,
                "lat": 25.6866,
                "lng": -100.3161,
                "name": "Oficina",
            }
        ),
        SimMessage.model_validate(
            {
                "type": "image",
                "from": CUSTOMER,
                "caption": "así llegó",
                "data_b64": base64.b64encode(png(200, 140, (200, 120, 40))).decode(),
            }
        ),
    )
    context, page = new_page(
        browser, viewport={"width": 390, "height": 844}, is_mobile=True, has_touch=True
    )
    try:
        login(page, gateway.base)
        conv = page.locator("li.conv").first
        expect(conv).to_be_visible()
        assert no_horizontal_scroll(page)
        shot(page, "list")
        conv.get_by_role("button").click()
        expect(page.locator("li.conv")).to_be_hidden()  # one pane at a time
        thread = page.locator("#messages")
        expect(thread.locator(".msg[data-type='image'] img")).to_have_attribute(
            "src", re.compile(r"^blob:")
        )
        expect(thread.locator(".msg[data-type='location'] a")).to_have_text("Oficina")
        expect(page.get_by_role("textbox", name="Message")).to_be_visible()
        assert no_horizontal_scroll(page)
        shot(page, "thread")
        page.get_by_role("button", name="Back to conversations").click()
        expect(conv).to_be_visible()
        page.get_by_role("link", name="Accounts").click()
        expect(page.locator("li.account .badge")).to_have_text("Connected")
        assert no_horizontal_scroll(page)
        shot(page, "accounts")
        page.get_by_role("link", name="Settings").click()
        expect(page.get_by_role("heading", name="Jira", exact=True)).to_be_visible()
        expect(page.get_by_label("Jira site URL")).to_be_visible()
        assert no_horizontal_scroll(page)
        shot(page, "settings")
        assert not page.errors, page.errors
    finally:
        context.close()


def test_webhooks_screen_adds_one_and_shows_its_test_delivery(
    gateway: Server, browser: Any
) -> None:
    shot = Shots("webhooks")
    context, page = new_page(browser)
    with Receiver() as receiver:
        try:
            login(page, gateway.base)
            page.get_by_role("link", name="Settings").click()
            expect(page.get_by_role("heading", name="Webhooks")).to_be_visible()
            expect(page.get_by_text("No webhooks yet.")).to_be_visible()
            page.get_by_label("Endpoint URL").fill(receiver.url("/ui"))
            page.get_by_role("button", name="Add webhook").click()
            secret = page.locator(".secret-once .secret")
            expect(secret).to_have_text(re.compile(r"^whsec_"))
            hook = page.locator("li.webhook")
            expect(hook).to_have_count(1)
            expect(hook.locator(".webhook-url")).to_have_text(receiver.url("/ui"))
            expect(hook.locator(".badge")).to_have_text("Active")
            shot(page, "added")
            hook.get_by_role("button", name="Send test event").click()
            row = hook.locator("table.deliveries tr.delivery")
            expect(row).to_have_count(1)
            expect(row).to_contain_text("webhook-test")
            expect(row.locator(".status")).to_have_text("200")
            (got,) = receiver.acked("/ui")
            assert verify(
                secret.inner_text(),
                got.headers["X-Wagate-Timestamp"],
                got.body,
                got.headers["X-Wagate-Signature"],
            )
            shot(page, "delivered")
            page.once("dialog", lambda dialog: dialog.accept())
            hook.get_by_role("button", name="Remove").click()
            expect(page.locator("li.webhook")).to_have_count(0)
            assert not page.errors, page.errors
        finally:
            context.close()


def test_ai_screen_adds_an_article_the_ai_answers_and_the_inbox_shows_a_handoff(
    gateway: Server, browser: Any
) -> None:
    shot = Shots("ai")
    context, page = new_page(browser, viewport={"width": 1280, "height": 900})
    try:
        token = token_for(gateway.base)
        sid, phone = linked_account(gateway, token)
        api(gateway.base, token, "PATCH", f"/api/v1/sessions/{sid}/ai", json={"ai_default": True})
        login(page, gateway.base)
        page.get_by_role("link", name="Settings").click()
        expect(page.get_by_role("heading", name="AI provider and knowledge base")).to_be_visible()
        expect(page.get_by_text("No articles yet.")).to_be_visible()
        # The model's fields show only for a model provider.
        expect(page.get_by_label("Model base URL")).to_be_hidden()
        page.get_by_label("Answers come from", exact=True).select_option("openai")
        expect(page.get_by_label("Model base URL")).to_be_visible()
        page.get_by_label("Answers come from", exact=True).select_option("kb")
        form = page.locator("form.kb-article-form")
        form.get_by_label("Title").fill("Opening hours")
        form.get_by_label("Answer").fill("We are open Monday to Friday, 9 to 6.")
        form.get_by_label("Tags").fill("hours, schedule")
        form.get_by_role("button", name="Add article").click()
        expect(page.locator("li.kb-article .kb-title")).to_have_text("Opening hours")
        page.locator("form.ai-personality-form").get_by_label("Name").fill("Lucía")
        page.get_by_role("button", name="Add personality").click()
        expect(page.locator("li.personality")).to_contain_text("Lucía")
        shot(page, "settings")

        # A customer asks: the AI's answer shows in the thread.
        page.get_by_role("link", name="Inbox").click()
        phone.send(text("What are your opening hours?"))
        conv = page.locator("li.conv").filter(has_text="Ana Souza")
        conv.get_by_role("button").click()
        thread = page.locator("#messages")
        expect(thread.locator(".msg.out")).to_contain_text("We are open Monday to Friday, 9 to 6.")
        until(lambda: "Monday to Friday" in sent_texts(phone), "the phone to get the answer")
        # Asking for a person: the chat is highlighted, and can be given back to the AI.
        phone.send(text("I want to talk to a human"))
        expect(page.locator("li.conv.needs-human")).to_have_count(1)
        resume = page.get_by_role("button", name="Give back to the AI")
        expect(resume).to_be_visible()
        shot(page, "handoff")
        resume.click()
        expect(page.locator("li.conv.needs-human")).to_have_count(0)
        assert not page.errors, page.errors
    finally:
        context.close()


def test_ai_screen_edits_searches_and_pages_and_the_inbox_picks_per_chat(
    gateway: Server, browser: Any
) -> None:
    """The rest of the AI screen: many articles in pages, a search, editing an article and a
    personality, the model's timeout and history, the handoff message, each account's
    defaults, what a question would get; and in a chat, its personality and "never AI"."""
    shot = Shots("ai-edit")
    context, page = new_page(browser, viewport={"width": 1280, "height": 900})
    try:
        token = token_for(gateway.base)
        sid, phone = linked_account(gateway, token)
        phone.send(text("Hello there"))
        for i in range(57):
            api(
                gateway.base,
                token,
                "POST",
                "/api/v1/kb/articles",
                json={"title": f"Article {i:02d}", "body": f"Filler answer number {i}."},
            )
        api(
            gateway.base,
            token,
            "POST",
            "/api/v1/kb/articles",
            json={"title": "Refunds", "body": "Refunds take five days.", "tags": ["money"]},
        )
        login(page, gateway.base)
        page.get_by_role("link", name="Settings").click()
        articles = page.locator("li.kb-article")
        expect(articles).to_have_count(50)
        page.get_by_role("button", name="More articles").click()
        expect(articles).to_have_count(58)
        expect(page.get_by_role("button", name="More articles")).to_be_hidden()

        # Search, then edit what was found.
        page.get_by_role("searchbox", name="Search articles").fill("refunds")
        page.locator("form.kb-filter").get_by_role("button", name="Search").click()
        expect(articles).to_have_count(1)
        articles.get_by_role("button", name="Edit").click()
        form = page.locator("form.kb-article-form")
        expect(form.get_by_label("Title")).to_have_value("Refunds")
        form.get_by_label("Answer").fill("Refunds reach your card within five working days.")
        form.get_by_role("button", name="Save article").click()
        expect(articles.locator(".kb-body")).to_have_text(
            "Refunds reach your card within five working days."
        )
        expect(form.get_by_role("button", name="Add article")).to_be_visible()
        found = api(gateway.base, token, "GET", "/api/v1/kb/articles", params={"q": "refunds"})
        assert [a["body"] for a in found["items"]] == [
            "Refunds reach your card within five working days."
        ]
        page.get_by_role("searchbox", name="Search articles").fill("nothing-like-this")
        page.locator("form.kb-filter").get_by_role("button", name="Search").click()
        expect(page.get_by_text("No article matches.")).to_be_visible()

        # What a question would get.
        question = page.get_by_role("searchbox", name="Try a customer's question")
        question.fill("When do refunds reach my card?")
        page.get_by_role("button", name="Try", exact=True).click()
        expect(page.locator(".kb-try-answer")).to_have_text("The AI would answer with “Refunds”.")
        question.fill("Do you sell bicycles?")
        page.get_by_role("button", name="Try", exact=True).click()
        expect(page.locator(".kb-try-handoff")).to_be_visible()

        # A personality with a reply cap, then renamed.
        personas = page.locator("form.ai-personality-form")
        personas.get_by_label("Name").fill("Lucía")
        personas.get_by_label("Longest reply (characters)").fill("300")
        personas.get_by_role("button", name="Add personality").click()
        expect(page.locator("li.personality")).to_contain_text("up to 300 characters")
        page.locator("li.personality").get_by_role("button", name="Edit").click()
        expect(personas.get_by_label("Name")).to_have_value("Lucía")
        personas.get_by_label("Name").fill("Lucía (ventas)")
        personas.get_by_role("button", name="Save personality").click()
        expect(page.locator("li.personality strong")).to_have_text("Lucía (ventas)")
        (persona,) = api(gateway.base, token, "GET", "/api/v1/personalities")["items"]
        assert persona["name"] == "Lucía (ventas)"
        assert persona["max_reply_chars"] == 300

        # The model's timeout and history, and the handoff message.
        page.get_by_label("Answers come from", exact=True).select_option("openai")
        page.get_by_label("Model base URL").fill("https://llm.example.com/v1")
        page.get_by_label("Model", exact=True).fill("llama3")
        page.get_by_label("Seconds to wait for the model").fill("7")
        page.get_by_label("Earlier messages of the chat given to the model").fill("4")
        page.get_by_label("Message when a person takes over").fill("Un momento, le atiende Ana.")
        page.get_by_role("button", name="Save AI settings").click()
        expect(page.locator(".ai-provider [role=status]")).to_have_text("Saved.")
        settings = api(gateway.base, token, "GET", "/api/v1/ai/settings")
        assert settings["provider"] == "openai"
        assert settings["timeout_seconds"] == 7
        assert settings["history_messages"] == 4
        assert settings["handoff_message"] == "Un momento, le atiende Ana."
        expect(page.get_by_label("Message when a person takes over")).to_have_value(
            "Un momento, le atiende Ana."
        )

        # Each account's defaults.
        account = page.locator(f"li.ai-account[data-session-id='{sid}']")
        account.get_by_role("switch", name="AI answers new chats").check()
        account.get_by_label("Personality of Support").select_option(label="Lucía (ventas)")
        until(
            lambda: (
                api(gateway.base, token, "GET", f"/api/v1/sessions/{sid}/ai")
                == {"session_id": sid, "ai_default": True, "personality_id": persona["id"]}
            ),
            "the account's AI defaults",
        )
        shot(page, "settings")

        # In a chat: its own personality, and "never AI" that locks the AI switch off.
        page.get_by_role("link", name="Inbox").click()
        page.locator("li.conv").filter(has_text="Ana Souza").get_by_role("button").click()
        picker = page.get_by_label("Personality", exact=True)
        expect(picker).to_have_value("")
        picker.select_option(label="Lucía (ventas)")
        (conv,) = api(gateway.base, token, "GET", "/api/v1/conversations")["items"]
        until(
            lambda: (
                api(gateway.base, token, "GET", f"/api/v1/conversations/{conv['id']}")[
                    "personality_id"
                ]
                == persona["id"]
            ),
            "the chat's personality",
        )
        page.get_by_role("switch", name="Never AI").check()
        expect(page.get_by_role("switch", name="AI", exact=True)).to_be_disabled()
        until(
            lambda: api(gateway.base, token, "GET", f"/api/v1/conversations/{conv['id']}")[
                "no_ac_ai"
            ],
            "never AI stored",
        )
        shot(page, "chat")
        assert not page.errors, page.errors
    finally:
        context.close()


class InThread:
    """A fake server (Jira, Graph) on its own event loop in a thread (the tests here are
    synchronous)."""

    def __init__(self, fake: Any) -> None:
        import asyncio
        import threading

        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.fake = fake
        self.url = asyncio.run_coroutine_threadsafe(self.fake.start(), self.loop).result(10)

    def close(self) -> None:
        import asyncio

        asyncio.run_coroutine_threadsafe(self.fake.stop(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


@pytest.mark.timeout(180)
def test_jira_screen_connects_tests_and_the_inbox_shows_the_ticket_key(
    gateway: Server, browser: Any
) -> None:
    from tests.fakes import jira as fj

    shot = Shots("jira")
    from tests.fakes.jira import FakeJira

    jira = InThread(FakeJira())
    context, page = new_page(browser, viewport={"width": 1280, "height": 1000})
    try:
        token = token_for(gateway.base)
        sid, phone = linked_account(gateway, token)
        login(page, gateway.base)
        page.get_by_role("link", name="Settings").click()
        section = page.locator("section[aria-labelledby='settings-jira']")
        expect(section.locator("#jira-state")).to_have_text("Not connected")
        form = section.locator("form.jira-form")
        form.get_by_label("Jira site URL").fill(jira.url)
        expect(form.get_by_label("E-mail of the integration account")).to_be_visible()
        # Server / Data Center needs no e-mail: the field goes away, the token's label changes.
        form.get_by_label("Authentication").select_option("pat")
        expect(form.get_by_label("E-mail of the integration account")).to_be_hidden()
        expect(form.get_by_label("Personal access token")).to_be_visible()
        form.get_by_label("Authentication").select_option("cloud")
        form.get_by_label("E-mail of the integration account").fill(fj.EMAIL)
        form.get_by_label("API token").fill("a-wrong-token")
        form.get_by_label("Project key").fill("SUP")
        form.get_by_label("Webhook secret").fill("ui-webhook-secret")
        form.get_by_label(re.compile("^Notice text")).fill("Ticket {key}: {status}")
        form.get_by_label("Bridge every new 1:1 chat of “Support”").check()
        form.get_by_role("button", name="Save Jira connection").click()
        expect(section.locator("#jira-saved")).to_have_text("Saved.")
        hook_url = section.get_by_label("Webhook URL")
        expect(hook_url).to_have_value(re.compile(r"^http://.+/api/v1/jira/webhook/[\w-]{20,}$"))

        # A wrong token: the test says so and the bridge shows "credentials rejected".
        section.get_by_role("button", name="Test connection").click()
        expect(section.locator("#jira-test-result")).to_contain_text("Credentials rejected")
        expect(section.locator("#jira-state")).to_have_text("Credentials rejected")
        expect(section.locator("#jira-rejected")).to_be_visible()
        status = api(gateway.base, token, "GET", "/api/v1/jira/status")
        assert status["state"] == "rejected", status
        shot(page, "rejected")

        # The right token: saved (the secret is never shown back), tested OK.
        form = section.locator("form.jira-form")
        expect(form.get_by_label("API token")).to_have_attribute(
            "placeholder", re.compile("leave empty")
        )
        expect(form.get_by_label("API token")).to_have_value("")
        form.get_by_label("API token").fill(fj.API_TOKEN)
        form.get_by_role("button", name="Save Jira connection").click()
        expect(section.locator("#jira-saved")).to_have_text("Saved.")
        section.get_by_role("button", name="Test connection").click()
        result = section.locator("#jira-test-result")
        expect(result).to_contain_text("OK: Fake Jira")
        expect(result).to_have_attribute("data-ok", "true")
        expect(section.locator("#jira-state")).to_have_text("Active")
        expect(form.get_by_label("Bridge every new 1:1 chat of “Support”")).to_be_checked()
        shot(page, "connected")
        saved = api(gateway.base, token, "GET", "/api/v1/jira/connection")
        assert saved["auto_bridge_session_ids"] == [sid]
        # Saving again keeps the operator's own notice text (the form sends it back).
        assert saved["status_notice_text"] == "Ticket {key}: {status}"
        expect(form.get_by_label(re.compile("^Notice text"))).to_have_value(
            "Ticket {key}: {status}"
        )
        assert hook_url.input_value().endswith(saved["webhook_url"])

        # A new chat is bridged by the rule: the inbox shows its ticket key.
        page.get_by_role("link", name="Inbox").click()
        phone.send(text("Hello, my invoice is wrong"))
        until(lambda: jira.fake.issue_keys(), "the fake Jira to get an issue")
        key = jira.fake.issue_keys()[0]
        conv = page.locator("li.conv").filter(has_text="Ana Souza")
        expect(conv.locator(".marker.jira")).to_have_text(key)
        conv.get_by_role("button").click()
        expect(page.get_by_role("switch", name="Jira")).to_be_checked()
        expect(page.locator(".switches .marker.jira")).to_have_text(key)
        items = api(gateway.base, token, "GET", "/api/v1/conversations")["items"]
        assert [i["ticket_key"] for i in items] == [key]
        shot(page, "inbox-ticket")
        assert not page.errors, page.errors
    finally:
        context.close()
        jira.close()


@pytest.mark.timeout(180)
def test_cloud_numbers_screen_adds_checks_replaces_an_expired_token_and_lists_templates(
    tmp_path: Path, db_url: str, browser: Any
) -> None:
    from tests.fakes import graph as fake_graph

    graph = InThread(fake_graph.FakeGraph())
    graph.fake.templates.append(
        {
            "id": "771",
            "name": "order_shipped",
            "language": "es",
            "category": "UTILITY",
            "status": "APPROVED",
            "components": [{"type": "BODY", "text": "Tu pedido {{1}} va en camino."}],
        }
    )
    shot = Shots("cloud")
    try:
        with serving(
            tmp_path,
            db_url,
            WAGATE_CLOUD_GRAPH_URL=graph.url,
            WAGATE_CLOUD_API_VERSION=fake_graph.VERSION,
        ) as server:
            context, page = new_page(browser, viewport={"width": 1280, "height": 1000})
            try:
                login(page, server.base)
                page.get_by_role("link", name="Settings").click()
                section = page.locator("section[aria-labelledby=settings-cloud]")
                expect(section.get_by_text("No Cloud API numbers yet.")).to_be_visible()
                expect(section.locator(".cloud-webhook-url")).to_have_text(
                    server.base + "/api/whatsapp/webhook"
                )
                form = section.locator("form.cloud-add-form")
                form.get_by_label("Name").fill("Ventas Cloud")
                form.get_by_label("Phone number ID").fill(fake_graph.PHONE_NUMBER_ID)
                form.get_by_label("WhatsApp Business Account ID").fill(fake_graph.WABA_ID)
                form.get_by_label("Access token").fill(fake_graph.TOKEN)
                form.get_by_label("App secret").fill(fake_graph.APP_SECRET)
                form.get_by_label("Webhook verify token").fill(fake_graph.VERIFY_TOKEN)
                form.get_by_role("button", name="Add a Cloud API number").click()
                number = section.locator("li.cloud-number").filter(has_text="Ventas Cloud")
                expect(number).to_contain_text(fake_graph.PHONE_NUMBER_ID)
                # Meta answers the verification with the verify token typed here.
                challenge = requests.get(
                    server.base + "/api/whatsapp/webhook",
                    params={
                        "hub.mode": "subscribe",
                        "hub.verify_token": fake_graph.VERIFY_TOKEN,
                        "hub.challenge": "1158201444",
                    },
                    timeout=10,
                )
                assert (challenge.status_code, challenge.text) == (200, "1158201444")

                number.get_by_role("button", name="Check token").click()
                expect(number.locator(".cloud-check")).to_have_text(
                    "Token accepted: the access token works"
                )
                expect(number.locator(".badge")).to_have_text("Connected")

                # The token expires at Meta: the check says so, the state turns red.
                graph.fake.tokens = {"EAAG-the-new-token"}
                number.get_by_role("button", name="Check token").click()
                expect(number.locator(".cloud-check")).to_contain_text("Token refused")
                page.get_by_role("link", name="Inbox").click()
                page.get_by_role("link", name="Settings").click()
                expect(number.locator(".badge")).to_have_text("Token rejected by Meta")
                shot(page, "expired")

                # A wrong new token: Meta refuses it and the operator is told; the right one works.
                number.get_by_role("button", name="Replace token").click()
                number.get_by_label("New access token").fill("EAAG-a-wrong-token")
                number.get_by_role("button", name="Save token").click()
                expect(number.locator(".cloud-check")).to_contain_text("Saved, but Meta refused it")
                expect(number.locator(".badge")).to_have_text("Token rejected by Meta")
                number.get_by_label("New access token").fill("EAAG-the-new-token")
                number.get_by_role("button", name="Save token").click()
                expect(number.locator(".cloud-check")).to_have_text("New token saved and accepted.")
                expect(number.locator(".badge")).to_have_text("Connected")

                number.get_by_role("button", name="Templates").click()
                row = number.locator("tr[data-template=order_shipped]")
                expect(row).to_contain_text("es")
                expect(row).to_contain_text("APPROVED")
                shot(page, "templates")
                assert not page.errors, page.errors
            finally:
                context.close()
    finally:
        graph.close()
