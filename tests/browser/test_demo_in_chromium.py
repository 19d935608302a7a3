"""The demo in a real browser: what Chromium stores, sends and is refused.

One story, as a user would live it: log in (the session ID is regenerated), look
at the cookie flags the browser stored, fill the cart, log in a second browser,
revoke its session from the first, log out, and replay the old cookie to find
no session. Every wait is bounded (:data:`~tests.browser.conftest.WAIT`).
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import pytest

from ..stores.registry import in_ci

if importlib.util.find_spec("selenium") is None:  # before the imports that need it
    reason = "selenium is not installed (pip install -e '.[test]')"
    if in_ci():
        pytest.fail(f"{reason} (CI=true: the browser test must run in CI)", pytrace=False)
    pytest.skip(reason, allow_module_level=True)

from selenium.common.exceptions import TimeoutException, WebDriverException
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from wsgi_kvsession.admin import SessionManager
from wsgi_kvsession.stores import store_from_url

from .conftest import WAIT

if TYPE_CHECKING:
    from selenium.webdriver.chrome.webdriver import WebDriver

USER = "alice"
PASSWORD = "demo"  # the demo's one password (wsgi_kvsession.demo.DEMO_PASSWORD)
LOGGED_OUT = "You are not logged in."


def body_text(driver: WebDriver) -> str:
    # One script in the page rather than find_element(body).text: two commands can
    # straddle a navigation, and the element of the first then belongs to no document.
    text = driver.execute_script("return document.body ? document.body.innerText : '';")
    return text if isinstance(text, str) else ""


def wait_for_text(driver: WebDriver, text: str) -> str:
    """Wait (bounded) until the page shows ``text``; the page's text.

    Polled while a form's submit navigates: whatever the driver reports about
    the page going away under the poll (a stale node, an unloaded document)
    only means "not yet". After :data:`WAIT` seconds, it fails.
    """

    def shown(d: WebDriver) -> str | None:
        page = body_text(d)
        return page if text in page else None

    wait = WebDriverWait(driver, WAIT, poll_frequency=0.1, ignored_exceptions=(WebDriverException,))
    try:
        page = wait.until(shown)
    except TimeoutException as exc:
        raise AssertionError(
            f"{text!r} not shown within {WAIT}s at {driver.current_url}:\n{driver.page_source}"
        ) from exc
    assert page is not None  # until() returns only a true value
    return page


def open_page(driver: WebDriver, url: str, expect: str) -> str:
    driver.get(url)
    return wait_for_text(driver, expect)


def session_cookie(driver: WebDriver) -> dict[str, Any]:
    cookie = driver.get_cookie("session")
    assert cookie is not None, driver.get_cookies()
    return cookie


def submit(driver: WebDriver, action: str, fields: dict[str, str], expect: str) -> str:
    """Fill and submit the form posting to ``action`` that has ``fields``; wait for ``expect``.

    The cart's "remove" buttons also post to /cart: the form is the one with the fields.
    """
    having = "".join(f'[.//input[@name="{name}"]]' for name in fields)
    form = driver.find_element(By.XPATH, f'//form[@action="{action}"]{having}')
    for name, value in fields.items():
        field = form.find_element(By.NAME, name)
        field.clear()
        field.send_keys(value)
    form.find_element(By.TAG_NAME, "button").click()
    return wait_for_text(driver, expect)


def log_in(driver: WebDriver, base: str) -> str:
    open_page(driver, base + "/", LOGGED_OUT)
    return submit(driver, "/login", {"user": USER, "password": PASSWORD}, f"Logged in as {USER}.")


@pytest.fixture
def manager(store_url: str) -> Iterator[SessionManager]:
    """The demo's store, seen from the test: what the server really holds."""
    store = store_from_url(store_url)
    yield SessionManager(store)
    store.close()


def test_demo_in_chromium(
    demo_url: str,
    manager: SessionManager,
    new_browser: Callable[[], WebDriver],
    screenshot: Callable[[WebDriver, str], None],
) -> None:
    first = new_browser()

    # -- anonymous: the first visit already has a session (the visit count, the CSRF token)
    text = open_page(first, demo_url + "/", LOGGED_OUT)
    assert "Visits in this session: 1." in text
    screenshot(first, "home-logged-out")
    anonymous_id = session_cookie(first)["value"]
    assert manager.get(anonymous_id) is not None

    # -- log in: the ID is regenerated, the anonymous one is gone from the store
    form = first.find_element(By.CSS_SELECTOR, 'form[action="/login"]')
    form.find_element(By.NAME, "user").send_keys(USER)
    form.find_element(By.NAME, "password").send_keys(PASSWORD)
    form.find_element(By.TAG_NAME, "button").click()
    text = wait_for_text(first, f"Logged in as {USER}.")
    assert "Your session ID was regenerated." in text
    screenshot(first, "login")
    cookie = session_cookie(first)
    first_id = cookie["value"]
    assert first_id != anonymous_id
    assert manager.get(anonymous_id) is None
    info = manager.get(first_id)
    assert info is not None
    assert info.user_id == USER

    # -- the flags the browser stored
    assert cookie["httpOnly"] is True  # no script can read the ID
    assert cookie["sameSite"] == "Lax"
    assert cookie["path"] == "/"
    assert cookie["domain"] == "127.0.0.1"  # host-only: no Domain attribute was sent
    assert "expiry" not in cookie  # a browser-session login: gone when the browser closes
    # Secure is off only because the demo speaks plain http on 127.0.0.1 (make_app sets
    # cookie_secure=False); the middleware's default, behind HTTPS, is Secure.
    assert cookie["secure"] is False
    assert first.execute_script("return document.cookie") == ""  # httpOnly, as the browser sees it

    # -- the cart: a nested mutation, kept across requests
    submit(first, "/cart", {"add": "apple"}, "Added apple.")
    submit(first, "/cart", {"add": "pear"}, "Added pear.")
    text = open_page(first, demo_url + "/", f"Logged in as {USER}.")
    cart = [li.text for li in first.find_elements(By.CSS_SELECTOR, "ul li")]
    assert [item.split()[0] for item in cart] == ["apple", "pear"], cart
    assert "Added" not in text  # flash messages are shown once
    screenshot(first, "cart")
    assert session_cookie(first)["value"] == first_id

    # -- a second browser (its own profile: its own cookie jar), the same user
    second = new_browser()
    log_in(second, demo_url)
    second_id = session_cookie(second)["value"]
    assert second_id != first_id
    assert len(manager.sessions_of(USER)) == 2

    # -- the first browser lists both sessions and revokes the second's
    text = open_page(first, demo_url + "/sessions", f"Active sessions of {USER}")
    first_hash, second_hash = manager.key_hash(first_id), manager.key_hash(second_id)
    rows = first.find_elements(By.CSS_SELECTOR, "table tr")[1:]  # the header row first
    assert len(rows) == 2, [row.text for row in rows]
    row_hashes = {row.find_element(By.NAME, "key_hash").get_attribute("value"): row for row in rows}
    assert set(row_hashes) == {first_hash, second_hash}
    assert "(this session)" in row_hashes[first_hash].text
    assert "(this session)" not in row_hashes[second_hash].text
    assert first_id not in first.page_source  # the page names sessions by key hash only
    assert second_id not in first.page_source
    screenshot(first, "sessions")
    row_hashes[second_hash].find_element(By.TAG_NAME, "button").click()
    text = wait_for_text(first, "Session revoked: that browser is logged out.")
    rows = first.find_elements(By.CSS_SELECTOR, "table tr")[1:]
    assert len(rows) == 1
    assert "(this session)" in rows[0].text
    assert manager.get(second_id) is None

    # -- the second browser, on its next page load, is logged out: it gets a new,
    # anonymous session, not the revoked ID brought back
    text = open_page(second, demo_url + "/", LOGGED_OUT)
    assert f"Logged in as {USER}" not in text
    assert session_cookie(second)["value"] != second_id
    assert manager.get(second_id) is None

    # -- the first browser is still logged in, then logs out
    open_page(first, demo_url + "/", f"Logged in as {USER}.")
    text = submit(first, "/logout", {}, "Logged out: the session was destroyed.")
    assert LOGGED_OUT in text
    assert manager.get(first_id) is None
    assert session_cookie(first)["value"] != first_id

    # -- replay the old cookie: the store has no session under it any more
    first.delete_cookie("session")
    first.add_cookie(
        {"name": "session", "value": first_id, "path": "/", "httpOnly": True, "sameSite": "Lax"}
    )
    assert session_cookie(first)["value"] == first_id  # the browser does send it
    text = open_page(first, demo_url + "/", LOGGED_OUT)
    assert f"Logged in as {USER}" not in text
    assert "Visits in this session: 1." in text  # a new, empty session
    assert "apple" not in text
    assert "pear" not in text
    assert session_cookie(first)["value"] != first_id  # the server issued a new ID
    assert manager.get(first_id) is None
    assert manager.sessions_of(USER) == []
