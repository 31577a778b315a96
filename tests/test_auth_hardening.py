"""Issue 13, cases 2 and 4: identity headers are believed only from our proxies and as the config allows, and password
checks can neither starve the server nor be looped, nor tell which users exist."""

from __future__ import annotations

import base64
import hashlib
import json
import threading
from collections.abc import Iterator
from pathlib import Path

import anyio
import anyio.to_thread
import httpx
import pytest
from starlette.requests import Request

from app import passwords
from app.auth import Authenticator, Unauthenticated
from app.passwords import PasswordChecker, TooManyAttempts, hash_password
from tests.utils.proxy import PATIENCE, Proxy, running_proxy

PASSWORD = {"alice": "alice-secret-pw", "bob": "bob-secret-pw"}


def write_config(path: Path, trusted_headers: str) -> Path:
    path.write_text(f"""
[users.alice]
password = "{hash_password(PASSWORD["alice"], iterations=1000)}"
groups = ["ml"]

[users.bob]
password = "{hash_password(PASSWORD["bob"], iterations=1000)}"

[trusted_headers]
user = "X-Forwarded-User"
groups = "X-Forwarded-Groups"
{trusted_headers}

[[rules]]
prefix = "1"
read = ["*"]
write = ["group:ml"]
delete = ["group:ml"]

[[rules]]
prefix = "2"
read = ["bob"]
""")
    return path


def basic(user: str, password: str | None = None) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password or PASSWORD[user]}".encode()).decode()


@pytest.fixture
def root(tmp_path: Path) -> Path:
    (tmp_path / "root" / "1").mkdir(parents=True)
    (tmp_path / "root" / "1" / "model.bin").write_bytes(b"model")
    (tmp_path / "root" / "2").mkdir()
    (tmp_path / "root" / "2" / "private.txt").write_bytes(b"bob's")
    return tmp_path / "root"


@pytest.fixture
def behind_ingress(tmp_path: Path, root: Path) -> Iterator[Proxy]:
    """The server as deployed behind an ingress on 127.0.0.1 that sets identity headers; the tests play both."""
    config = write_config(tmp_path / "auth.toml", "")
    env = {"ARTIFACT_PROXY_TRUSTED_PROXIES": "127.0.0.1/32"}
    with running_proxy(str(root), tmp_path / "p", env=env, extra_args=["--auth-config", str(config)]) as proxy:
        yield proxy


def test_identity_headers_from_a_peer_that_is_not_a_trusted_proxy_are_refused(tmp_path: Path, root: Path) -> None:
    config = write_config(tmp_path / "auth.toml", "")
    with running_proxy(str(root), tmp_path / "p", extra_args=["--auth-config", str(config)]) as proxy:
        response = httpx.get(proxy.artifact_url("2/private.txt"), headers={"X-Forwarded-User": "bob"})
        assert response.status_code == 401, response.text
        assert "ARTIFACT_PROXY_TRUSTED_PROXIES" in response.json()["message"]
        assert proxy.logged("ARTIFACT_PROXY_TRUSTED_PROXIES is empty")


def test_an_identity_header_never_beats_the_credentials_sent(behind_ingress: Proxy) -> None:
    headers = {"Authorization": basic("alice"), "X-Forwarded-User": "bob"}
    response = httpx.get(behind_ingress.artifact_url("2/private.txt"), headers=headers)
    assert response.status_code == 403, response.text  # alice, who may not read 2/
    assert "alice" in response.json()["message"]
    # and a wrong password is not rescued by the header
    headers = {"Authorization": basic("bob", "guess"), "X-Forwarded-User": "bob"}
    assert httpx.get(behind_ingress.artifact_url("2/private.txt"), headers=headers).status_code == 401


def test_exactly_one_identity_header(behind_ingress: Proxy) -> None:
    twice = [("X-Forwarded-User", "bob"), ("X-Forwarded-User", "alice")]
    response = httpx.get(behind_ingress.artifact_url("2/private.txt"), headers=twice)
    assert response.status_code == 401, response.text
    assert httpx.get(behind_ingress.artifact_url("2/private.txt"), headers={"X-Forwarded-User": "bob"}).content == (
        b"bob's"
    )


def test_unknown_users_and_unaccepted_groups_from_the_header_grant_nothing(behind_ingress: Proxy, root: Path) -> None:
    mallory = {"X-Forwarded-User": "mallory", "X-Forwarded-Groups": "ml"}
    assert httpx.delete(behind_ingress.artifact_url("1/model.bin"), headers=mallory).status_code == 401
    # bob is known, but the config accepts no groups from the header: "ml" (write and delete on 1/) is not his
    bob_in_ml = {"X-Forwarded-User": "bob", "X-Forwarded-Groups": "ml"}
    assert httpx.delete(behind_ingress.artifact_url("1/model.bin"), headers=bob_in_ml).status_code == 403
    assert (root / "1" / "model.bin").read_bytes() == b"model"


def test_groups_from_the_header_only_as_accepted(tmp_path: Path, root: Path) -> None:
    config = write_config(tmp_path / "auth.toml", 'any_user = true\naccept_groups = ["ml"]')
    env = {"ARTIFACT_PROXY_TRUSTED_PROXIES": "127.0.0.1"}
    with running_proxy(str(root), tmp_path / "p", env=env, extra_args=["--auth-config", str(config)]) as proxy:
        oidc = {"X-Forwarded-User": "carol", "X-Forwarded-Groups": "ml, admins"}
        assert httpx.put(proxy.artifact_url("1/carol.txt"), content=b"c", headers=oidc).status_code == 200
        two_group_headers = [("X-Forwarded-User", "carol"), ("X-Forwarded-Groups", "x"), ("X-Forwarded-Groups", "ml")]
        assert httpx.put(proxy.artifact_url("1/c2.txt"), content=b"c", headers=two_group_headers).status_code == 400


def test_forwarded_for_is_believed_only_from_a_trusted_proxy(tmp_path: Path, root: Path) -> None:
    config = write_config(tmp_path / "auth.toml", "")
    forged = {"Authorization": basic("alice"), "X-Forwarded-For": "203.0.113.9"}
    for trusted, expected in (("", "127.0.0.1"), ("127.0.0.1", "203.0.113.9")):
        audit = tmp_path / f"audit-{expected}.log"
        args = ["--auth-config", str(config), "--audit-log", str(audit)]
        env = {"ARTIFACT_PROXY_TRUSTED_PROXIES": trusted} if trusted else {}
        with running_proxy(str(root), tmp_path / f"p{expected}", env=env, extra_args=args) as proxy:
            assert httpx.get(proxy.artifact_url("1/model.bin"), headers=forged).status_code == 200
            assert proxy.logged("/artifacts/1/model.bin HTTP/1.1")
            line = json.loads(audit.read_text().splitlines()[-1])
            assert line["client"] == expected
            assert proxy.log().count(f"{expected}:") >= 1  # the access line names the same address


def test_repeated_wrong_passwords_make_the_client_wait(tmp_path: Path, root: Path) -> None:
    config = write_config(tmp_path / "auth.toml", "")
    env = {"ARTIFACT_PROXY_LOGIN_FAILURES": "2"}
    with running_proxy(str(root), tmp_path / "p", env=env, extra_args=["--auth-config", str(config)]) as proxy:
        url = proxy.artifact_url("1/model.bin")
        with httpx.Client(timeout=PATIENCE) as client:
            assert client.get(url, headers={"Authorization": basic("alice")}).status_code == 200
            # The wait doubles with every failure that gets through, so however slow this machine is, an attempt
            # soon lands inside one; 30 attempts is far more than that takes.
            statuses = []
            for _ in range(30):
                response = client.get(url, headers={"Authorization": basic("bob", "guess")})
                statuses.append(response.status_code)
                if response.status_code != 401:
                    break
            assert statuses[-1] == 429, statuses
            assert statuses[:2] == [401, 401]  # the free failures
            assert int(response.headers["retry-after"]) >= 1
            assert response.json()["error_code"] == "REQUEST_LIMIT_EXCEEDED"
            # The locked-out address gets no password checked, not even a right one...
            assert client.get(url, headers={"Authorization": basic("bob")}).status_code == 429
            # ...but credentials already verified keep working: an attacker cannot lock a signed-in user out.
            assert client.get(url, headers={"Authorization": basic("alice")}).status_code == 200


def request_from(client: str, authorization: str) -> Request:
    return Request(
        {
            "type": "http",
            "method": "GET",
            "path": "/",
            "headers": [(b"authorization", authorization.encode())],
            "client": (client, 1234),
            "query_string": b"",
        }
    )


def test_an_unknown_user_costs_a_password_check_like_a_known_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    authenticator = Authenticator(str(write_config(tmp_path / "auth.toml", "")))
    rounds: list[int] = []
    real = hashlib.pbkdf2_hmac

    def counting(name: str, password: bytes, salt: bytes, iterations: int) -> bytes:
        rounds.append(iterations)
        return real(name, password, salt, iterations)

    monkeypatch.setattr(passwords.hashlib, "pbkdf2_hmac", counting)

    async def attempt(user: str) -> None:
        with pytest.raises(Unauthenticated):
            await authenticator.principal(request_from("192.0.2.1", basic(user, "wrong")))

    anyio.run(attempt, "alice")
    anyio.run(attempt, "nobody")
    assert rounds == [1000, 1000]  # the same work, at the configured users' iteration count


def test_password_checks_never_hold_the_filesystem_threads(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """16 wrong-password clients at once: while their checks are stuck, the I/O threads are all still free."""
    release = threading.Event()

    def stuck_check(password: str, encoded: str) -> bool:
        release.wait(PATIENCE)
        return False

    monkeypatch.setattr(passwords, "verify_password", stuck_check)
    authenticator = Authenticator(str(write_config(tmp_path / "auth.toml", "")), passwords=PasswordChecker(1000))

    async def scenario() -> tuple[int, list[BaseException]]:
        io_threads = anyio.to_thread.current_default_thread_limiter()
        io_threads.total_tokens = 8  # what the app's lifespan sets by default
        outcomes: list[BaseException] = []

        async def attacker(number: int) -> None:
            try:
                await authenticator.principal(request_from(f"192.0.2.{number}", basic("alice", "wrong")))
            except (Unauthenticated, TooManyAttempts) as exc:
                outcomes.append(exc)

        async with anyio.create_task_group() as group:
            for number in range(16):
                group.start_soon(attacker, number)
            await anyio.wait_all_tasks_blocked()
            with anyio.fail_after(PATIENCE):
                await anyio.to_thread.run_sync(lambda: None)  # a filesystem call gets a thread at once
            borrowed = io_threads.borrowed_tokens
            release.set()
        return borrowed, outcomes

    borrowed, outcomes = anyio.run(scenario)
    assert borrowed == 0
    assert len(outcomes) == 16
    assert all(isinstance(exc, Unauthenticated) for exc in outcomes)  # 1 checking, 15 waiting: none refused


def test_the_wait_doubles_and_is_forgotten(monkeypatch: pytest.MonkeyPatch) -> None:
    now = [1000.0]
    failures = passwords.FailedLogins(free_failures=2, clock=lambda: now[0])
    waits = []
    for _ in range(6):
        failures.failed("192.0.2.7")
        waits.append(failures.wait_left("192.0.2.7"))
    assert waits == [0, 0, 1, 2, 4, 8]
    assert failures.wait_left("192.0.2.8") == 0  # per client address
    now[0] += passwords.FORGET_AFTER + 1
    assert failures.wait_left("192.0.2.7") == 0
    failures.failed("192.0.2.7")
    assert failures.wait_left("192.0.2.7") == 0  # starts afresh
