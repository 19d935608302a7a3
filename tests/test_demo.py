"""The demo app of ``wsgi-kvsession demo`` under Werkzeug's test client."""

from __future__ import annotations

import re

import pytest
from werkzeug.test import Client, TestResponse

from wsgi_kvsession.admin import SessionManager
from wsgi_kvsession.demo import DEMO_PASSWORD, make_app
from wsgi_kvsession.stores import MemoryStore


@pytest.fixture
def store() -> MemoryStore:
    return MemoryStore()


@pytest.fixture
def manager(store: MemoryStore) -> SessionManager:
    return SessionManager(store)


def client_of(store: MemoryStore) -> Client:
    return Client(make_app(store))


def session_id(client: Client) -> str | None:
    cookie = client.get_cookie("session")
    return None if cookie is None else cookie.value


def csrf(client: Client, path: str = "/") -> str:
    page = client.get(path).get_data(as_text=True)
    match = re.search(r'name="csrf" value="([^"]+)"', page)
    assert match, page
    return match.group(1)


def post(client: Client, path: str, **form: str) -> TestResponse:
    form.setdefault("csrf", csrf(client))
    return client.post(path, data=form)


def login(client: Client, user: str = "alice") -> None:
    response = post(client, "/login", user=user, password=DEMO_PASSWORD)
    assert response.status_code == 303


def test_index_counts_visits_and_offers_login(store: MemoryStore) -> None:
    client = client_of(store)
    assert "<strong>1</strong>" in client.get("/").get_data(as_text=True)
    page = client.get("/").get_data(as_text=True)
    assert "<strong>2</strong>" in page
    assert f"<code>{DEMO_PASSWORD}</code>" in page
    assert "not logged in" in page


def test_login_regenerates_the_id_and_ties_the_user(
    store: MemoryStore, manager: SessionManager
) -> None:
    client = client_of(store)
    token = csrf(client)
    before = session_id(client)
    assert before is not None
    client.post("/login", data={"user": "alice", "password": DEMO_PASSWORD, "csrf": token})
    after = session_id(client)
    assert after is not None
    assert after != before
    assert manager.get(before) is None  # the old record is gone
    info = manager.get(after)
    assert info is not None
    assert info.user_id == "alice"
    assert "Logged in as <strong>alice</strong>" in client.get("/").get_data(as_text=True)


def test_wrong_password_does_not_log_in(store: MemoryStore) -> None:
    client = client_of(store)
    post(client, "/login", user="alice", password="nope")
    page = client.get("/").get_data(as_text=True)
    assert "Wrong user name or password." in page
    assert "not logged in" in page


def test_user_name_is_escaped(store: MemoryStore) -> None:
    client = client_of(store)
    login(client, "<script>x</script>")
    page = client.get("/").get_data(as_text=True)
    assert "<script>x</script>" not in page
    assert "&lt;script&gt;x&lt;/script&gt;" in page


def test_cart_persists_across_requests(store: MemoryStore, manager: SessionManager) -> None:
    client = client_of(store)
    post(client, "/cart", add="apple")
    post(client, "/cart", add="pear")
    sid = session_id(client)
    assert sid is not None
    info = manager.get(sid)
    assert info is not None
    assert info.data["cart"] == ["apple", "pear"]
    post(client, "/cart", remove="apple")
    info = manager.get(sid)
    assert info is not None
    assert info.data["cart"] == ["pear"]
    page = client.get("/").get_data(as_text=True)
    assert "pear" in page


def test_flash_is_shown_once(store: MemoryStore) -> None:
    client = client_of(store)
    post(client, "/cart", add="apple")
    assert "Added apple." in client.get("/").get_data(as_text=True)
    assert "Added apple." not in client.get("/").get_data(as_text=True)


def test_post_without_or_with_a_wrong_csrf_token_is_refused(
    store: MemoryStore, manager: SessionManager
) -> None:
    client = client_of(store)
    client.get("/")
    assert client.post("/cart", data={"add": "apple"}).status_code == 400
    assert client.post("/cart", data={"add": "apple", "csrf": "x" * 43}).status_code == 400
    login_response = client.post("/login", data={"user": "eve", "password": DEMO_PASSWORD})
    assert login_response.status_code == 400
    sid = session_id(client)
    assert sid is not None
    info = manager.get(sid)
    assert info is not None
    assert "cart" not in info.data
    assert info.user_id is None


def test_sessions_page_lists_both_clients_and_revoking_one_logs_it_out(
    store: MemoryStore, manager: SessionManager
) -> None:
    laptop, phone = client_of(store), client_of(store)
    login(laptop)
    login(phone)
    laptop_id, phone_id = session_id(laptop), session_id(phone)
    assert laptop_id
    assert phone_id
    page = laptop.get("/sessions").get_data(as_text=True)
    assert page.count('action="/sessions/revoke"') == 2
    assert page.count("(this session)") == 1
    current = manager.key_hash(laptop_id)
    assert f"{current[:12]}…</code> <strong>(this session)" in page

    post(laptop, "/sessions/revoke", key_hash=manager.key_hash(phone_id))
    assert manager.get(phone_id) is None
    assert manager.get(laptop_id) is not None
    assert "not logged in" in phone.get("/").get_data(as_text=True)
    assert "Logged in as" in laptop.get("/").get_data(as_text=True)


def test_revoking_another_users_session_is_ignored(
    store: MemoryStore, manager: SessionManager
) -> None:
    alice, bob = client_of(store), client_of(store)
    login(alice, "alice")
    login(bob, "bob")
    bob_id = session_id(bob)
    assert bob_id is not None
    post(alice, "/sessions/revoke", key_hash=manager.key_hash(bob_id))
    assert manager.get(bob_id) is not None


def test_log_out_everywhere(store: MemoryStore, manager: SessionManager) -> None:
    clients = [client_of(store) for _ in range(3)]
    for client in clients:
        login(client)
    other = client_of(store)
    login(other, "bob")
    post(clients[0], "/sessions/revoke-all")
    assert manager.sessions_of("alice") == []
    assert len(manager.sessions_of("bob")) == 1
    for client in clients:
        assert "not logged in" in client.get("/").get_data(as_text=True)


def test_sessions_page_needs_a_login(store: MemoryStore) -> None:
    client = client_of(store)
    response = client.get("/sessions")
    assert response.status_code == 303
    assert "Log in to see your sessions." in client.get("/").get_data(as_text=True)


def test_logout_destroys_the_session(store: MemoryStore, manager: SessionManager) -> None:
    client = client_of(store)
    login(client)
    sid = session_id(client)
    assert sid is not None
    response = post(client, "/logout")
    assert response.status_code == 303
    assert manager.get(sid) is None
    assert session_id(client) != sid
    page = client.get("/").get_data(as_text=True)
    assert "Logged out" in page
    assert "not logged in" in page
    # The old cookie replayed finds no session.
    replay = Client(make_app(store))
    replay.set_cookie("session", sid)
    assert "not logged in" in replay.get("/").get_data(as_text=True)
    assert session_id(replay) != sid


def test_logout_is_post_only(store: MemoryStore) -> None:
    client = client_of(store)
    login(client)
    assert client.get("/logout").status_code == 405


def test_unknown_path_is_404_without_a_cookie(store: MemoryStore) -> None:
    client = client_of(store)
    response = client.get("/nope")
    assert response.status_code == 404
    assert "Set-Cookie" not in response.headers


def test_the_demo_imports_no_framework_but_werkzeug() -> None:
    import subprocess
    import sys

    code = (
        "import sys, wsgi_kvsession.demo, wsgi_kvsession.cli\n"
        "bad = [m for m in ('flask', 'pyramid', 'django', 'bottle', 'webob') if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
