"""identity/jwks.py: key sources (file, URL, OIDC discovery), refresh timing, rotation, staleness;
and identity/http.py's fetch_url, the default fetch.

HTTP sources are served by a local ThreadingHTTPServer on 127.0.0.1; scheduling decisions are
checked with an injected clock and ``poll()``, the step the background thread runs.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import pytest
from fakes import FakeClock, LocalHttpServer, wait_for

from ext_authz.errors import ConfigError, KeysUnavailableError
from ext_authz.identity import jwks
from ext_authz.identity.http import MAX_BODY_BYTES, fetch_url
from ext_authz.identity.jwks import KeyStore, load_jwks_file, parse_jwks
from ext_authz.settings import KeyRefreshSettings, ProviderSettings

T0 = 1_700_000_000.0
JWKS_PATH = "/jwks.json"
DISCOVERY_PATH = "/.well-known/openid-configuration"


# --- a local IdP ------------------------------------------------------------------------------


class Idp(LocalHttpServer):
    """Serves a mutable JWKS and discovery document; counts requests per path."""

    def __init__(self) -> None:
        self.jwks: dict[str, Any] = {"keys": []}
        self.headers: dict[str, str] = {}
        self.status = 200
        self.requests: Counter[str] = Counter()
        super().__init__(_handler(self))
        self.discovery: dict[str, Any] = {"issuer": self.url, "jwks_uri": self.url + JWKS_PATH}


def _handler(idp: Idp) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            idp.requests[self.path] += 1
            if self.path == "/redirect":
                self._send(302, b"", {"Location": JWKS_PATH})
            elif self.path == "/big":
                self._send(200, b" " * (MAX_BODY_BYTES + 1), {})
            elif self.path == "/big-unannounced":
                self._send(200, b" " * (MAX_BODY_BYTES + 1), {}, length=False)
            elif self.path == JWKS_PATH:
                self._send(idp.status, json.dumps(idp.jwks).encode(), idp.headers)
            elif self.path == DISCOVERY_PATH:
                self._send(200, json.dumps(idp.discovery).encode(), {})
            else:
                self._send(404, b"", {})

        def _send(
            self, status: int, body: bytes, headers: Mapping[str, str], length: bool = True
        ) -> None:
            self.send_response(status)
            for name, value in headers.items():
                self.send_header(name, value)
            if length:
                self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            with contextlib.suppress(OSError):  # the client gave up on an oversized body
                self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    return Handler


@pytest.fixture
def idp(rsa_keypair: Any) -> Iterator[Idp]:
    with Idp() as server:
        server.jwks = {"keys": [rsa_keypair.public_jwk]}
        yield server


def url_settings(url: str, **timing: Any) -> ProviderSettings:
    return ProviderSettings(
        name="idp",
        issuer="https://issuer.test",
        audiences=("api",),
        jwks_url=url,
        keys=KeyRefreshSettings(**timing),
    )


def discovery_settings(issuer: str, **timing: Any) -> ProviderSettings:
    return ProviderSettings(
        name="idp",
        issuer=issuer,
        audiences=("api",),
        discovery=True,
        keys=KeyRefreshSettings(**timing),
    )


def file_settings(path: Path) -> ProviderSettings:
    return ProviderSettings(
        name="files", issuer="https://issuer.test", audiences=("api",), jwks_file=path
    )


def static_fetch(
    document: Mapping[str, Any], headers: Mapping[str, str] | None = None
) -> Callable[[str, float], tuple[bytes, Mapping[str, str]]]:
    def fetch(url: str, timeout: float) -> tuple[bytes, Mapping[str, str]]:
        return json.dumps(document).encode(), dict(headers or {})

    return fetch


def kids(store: KeyStore) -> list[object]:
    return [key.get("kid") for key in store.current().keys]


def write_atomically(path: Path, document: object) -> None:
    temporary = path.with_suffix(".tmp")
    temporary.write_text(json.dumps(document), encoding="utf-8")
    os.replace(temporary, path)


# --- parse_jwks and load_jwks_file ------------------------------------------------------------


def test_parse_jwks_names_the_source_in_every_error() -> None:
    with pytest.raises(ConfigError, match="^https://idp.test/jwks: .*non-empty"):
        parse_jwks({"keys": []}, "https://idp.test/jwks")


def test_remote_jwks_skips_encryption_keys_but_a_file_refuses_them(rsa_keypair: Any) -> None:
    enc_key = {**rsa_keypair.public_jwk, "kid": "enc", "use": "enc"}
    document = {"keys": [enc_key, rsa_keypair.public_jwk]}

    assert parse_jwks(document, "u", remote=True) == (rsa_keypair.public_jwk,)
    with pytest.raises(ConfigError, match="use"):
        parse_jwks(document, "f")
    with pytest.raises(ConfigError, match="no signing keys"):
        parse_jwks({"keys": [enc_key]}, "u", remote=True)


@pytest.mark.parametrize(
    ("key", "match"),
    [
        ({"kty": "RSA", "n": "x", "e": "AQAB", "d": "secret"}, "private"),
        ({"kty": "EC", "crv": "P-256", "x": "x", "y": "y", "d": "secret"}, "private"),
        ({"kty": "RSA", "n": "x", "e": "AQAB", "kid": 7}, "kid"),
    ],
)
def test_jwks_with_private_material_or_a_bad_kid_is_refused(
    key: dict[str, Any], match: str
) -> None:
    with pytest.raises(ConfigError, match=match):
        parse_jwks({"keys": [key]}, "where")


def test_symmetric_keys_are_refused_from_a_url_but_allowed_in_a_file() -> None:
    document = {"keys": [{"kty": "oct", "k": "c2VjcmV0", "kid": "h"}]}

    assert parse_jwks(document, "file") == tuple(document["keys"])
    with pytest.raises(ConfigError, match="oct"):
        parse_jwks(document, "url", remote=True)


def test_load_jwks_file_returns_the_keys(jwks_file: Path, rsa_keypair: Any) -> None:
    assert load_jwks_file(jwks_file) == (rsa_keypair.public_jwk,)


# --- file source ------------------------------------------------------------------------------


def test_file_source_loads_at_construction(jwks_file: Path, rsa_keypair: Any) -> None:
    store = KeyStore(file_settings(jwks_file))

    assert store.wait_ready(0)
    assert kids(store) == [rsa_keypair.kid]
    assert store.current().version == 1


def test_bad_file_at_start_is_a_config_error_naming_the_file(tmp_path: Path) -> None:
    path = tmp_path / "jwks.json"
    path.write_text("{not json", encoding="utf-8")

    with pytest.raises(ConfigError, match="not valid JSON") as caught:
        KeyStore(file_settings(path))
    assert str(path) in str(caught.value)


def test_file_source_picks_up_a_rotated_file(
    tmp_path: Path, rsa_keypair: Any, second_rsa_keypair: Any
) -> None:
    path = tmp_path / "jwks.json"
    write_atomically(path, {"keys": [rsa_keypair.public_jwk]})
    store = KeyStore(file_settings(path))
    assert not store.poll()  # unchanged: nothing to do

    write_atomically(path, {"keys": [second_rsa_keypair.public_jwk]})

    assert store.poll()
    assert kids(store) == [second_rsa_keypair.kid]  # the old key is gone
    assert store.current().version == 2


def test_broken_file_rewrite_keeps_the_last_good_set(
    tmp_path: Path, rsa_keypair: Any, second_rsa_keypair: Any, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "jwks.json"
    write_atomically(path, {"keys": [rsa_keypair.public_jwk]})
    clock = FakeClock(T0)
    store = KeyStore(file_settings(path), clock=clock)

    path.write_text('{"keys": [', encoding="utf-8")
    clock.advance(10 * 86400)  # a file is configuration: it never goes stale

    assert not store.poll()
    assert kids(store) == [rsa_keypair.kid]
    assert store.current().version == 1
    assert str(path) in caplog.text and "keeping version 1" in caplog.text

    write_atomically(path, {"keys": [second_rsa_keypair.public_jwk]})
    assert store.poll()
    assert kids(store) == [second_rsa_keypair.kid]


def test_file_source_is_rewatched_by_the_background_thread(
    tmp_path: Path, rsa_keypair: Any, second_rsa_keypair: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(jwks, "FILE_POLL_INTERVAL", 0.02)
    path = tmp_path / "jwks.json"
    write_atomically(path, {"keys": [rsa_keypair.public_jwk]})
    store = KeyStore(file_settings(path))
    store.request_refresh()  # a no-op for a file source
    store.start()
    try:
        write_atomically(path, {"keys": [second_rsa_keypair.public_jwk]})
        assert wait_for(lambda: kids(store) == [second_rsa_keypair.kid])
    finally:
        store.stop()


# --- URL source -------------------------------------------------------------------------------


def test_url_store_loads_nothing_until_refreshed(idp: Idp, rsa_keypair: Any) -> None:
    store = KeyStore(url_settings(idp.url + JWKS_PATH))

    assert idp.requests[JWKS_PATH] == 0
    assert not store.wait_ready(0)
    with pytest.raises(KeysUnavailableError, match="not loaded"):
        store.current()

    assert store.refresh()
    assert store.wait_ready(0)
    assert kids(store) == [rsa_keypair.kid]


@pytest.mark.parametrize(
    ("cache_control", "delay"),
    [
        (None, 300),  # refresh_interval
        ("max-age=120", 120),
        ("public, max-age=600, must-revalidate", 600),
        ('max-age="900"', 900),
        ("max-age=5", 60),  # raised to min_refresh_interval
        ("max-age=0", 60),
        ("max-age=999999", 3600),  # lowered to max_refresh_interval
        ("no-store", 60),
        ("no-cache, max-age=600", 60),
        ("max-age=soon", 300),
    ],
)
def test_cache_control_max_age_sets_the_next_refresh_within_bounds(
    rsa_keypair: Any, cache_control: str | None, delay: float
) -> None:
    clock = FakeClock(T0)
    headers = {} if cache_control is None else {"cache-control": cache_control}
    fetch = static_fetch({"keys": [rsa_keypair.public_jwk]}, headers)
    store = KeyStore(url_settings("https://idp.test/jwks"), clock=clock, fetch=fetch)

    assert store.refresh()

    assert store.next_refresh_at() == T0 + delay


def test_refresh_is_never_scheduled_past_half_the_staleness_budget(rsa_keypair: Any) -> None:
    clock = FakeClock(T0)
    fetch = static_fetch({"keys": [rsa_keypair.public_jwk]}, {"cache-control": "max-age=3600"})
    settings = url_settings("https://idp.test/jwks", max_staleness=600)
    store = KeyStore(settings, clock=clock, fetch=fetch)

    assert store.refresh()

    assert store.next_refresh_at() == T0 + 300


def test_cache_control_from_a_real_response_is_honoured(idp: Idp) -> None:
    idp.headers = {"Cache-Control": "public, max-age=120"}
    clock = FakeClock(T0)
    store = KeyStore(url_settings(idp.url + JWKS_PATH), clock=clock)

    assert store.refresh()

    assert store.next_refresh_at() == T0 + 120


def test_poll_refetches_only_when_due(idp: Idp) -> None:
    clock = FakeClock(T0)
    store = KeyStore(url_settings(idp.url + JWKS_PATH), clock=clock)
    assert store.poll()  # never loaded: due at once
    assert idp.requests[JWKS_PATH] == 1

    clock.advance(299)
    assert not store.poll()
    assert idp.requests[JWKS_PATH] == 1

    clock.advance(1)
    assert store.poll()
    assert idp.requests[JWKS_PATH] == 2


def test_failed_fetches_back_off_exponentially_up_to_refresh_interval(rsa_keypair: Any) -> None:
    clock = FakeClock(T0)
    failing = True

    def fetch(url: str, timeout: float) -> tuple[bytes, Mapping[str, str]]:
        if failing:
            raise OSError("connection refused")
        return json.dumps({"keys": [rsa_keypair.public_jwk]}).encode(), {}

    store = KeyStore(url_settings("https://idp.test/jwks", refresh_interval=20), clock, fetch)
    delays = []
    for _ in range(6):
        assert not store.refresh()
        delays.append(store.next_refresh_at() - clock())

    assert delays == [2, 4, 8, 16, 20, 20]
    failing = False
    assert store.refresh()
    assert store.next_refresh_at() - clock() == 20  # back to the normal schedule


# --- discovery --------------------------------------------------------------------------------


def test_discovery_follows_jwks_uri(idp: Idp, rsa_keypair: Any) -> None:
    store = KeyStore(discovery_settings(idp.url))

    assert store.refresh()

    assert kids(store) == [rsa_keypair.kid]
    assert idp.requests == {DISCOVERY_PATH: 1, JWKS_PATH: 1}
    assert store.jwks_uri == idp.url + JWKS_PATH


def test_discovery_strips_a_trailing_slash_from_the_issuer(idp: Idp) -> None:
    idp.discovery["issuer"] = idp.url + "/"
    store = KeyStore(discovery_settings(idp.url + "/"))

    assert store.refresh()
    assert idp.requests[DISCOVERY_PATH] == 1


@pytest.mark.parametrize("advertised", ["{url}/", "https://evil.test", "{url}/other", None])
def test_discovery_refuses_an_issuer_mismatch(
    idp: Idp, advertised: str | None, caplog: pytest.LogCaptureFixture
) -> None:
    idp.discovery["issuer"] = None if advertised is None else advertised.format(url=idp.url)
    store = KeyStore(discovery_settings(idp.url))

    assert not store.refresh()

    assert idp.requests[JWKS_PATH] == 0
    assert "'issuer'" in caplog.text and "idp" in caplog.text


@pytest.mark.parametrize(
    "jwks_uri",
    [
        "http://idp.test/jwks.json",
        "http://10.0.0.1/jwks.json",
        "file:///etc/passwd",
        "ftp://idp.test/jwks.json",
        "https:///jwks.json",
        None,
        42,
    ],
)
def test_discovery_refuses_a_jwks_uri_that_is_not_https(idp: Idp, jwks_uri: object) -> None:
    fetched: list[str] = []

    def fetch(url: str, timeout: float) -> tuple[bytes, Mapping[str, str]]:
        fetched.append(url)
        return fetch_url(url, timeout)

    idp.discovery["jwks_uri"] = jwks_uri
    store = KeyStore(discovery_settings(idp.url), fetch=fetch)

    assert not store.refresh()
    assert fetched == [idp.url + DISCOVERY_PATH]


# --- unknown kid ------------------------------------------------------------------------------


def test_unknown_kid_flood_refetches_at_most_once_per_interval(idp: Idp) -> None:
    clock = FakeClock(T0)
    store = KeyStore(url_settings(idp.url + JWKS_PATH, unknown_kid_interval=30), clock=clock)
    assert store.refresh()

    for _ in range(100):
        store.request_refresh()
    assert store.poll()
    for _ in range(100):
        store.request_refresh()
    assert not store.poll()
    assert idp.requests[JWKS_PATH] == 2

    clock.advance(30)
    store.request_refresh()
    assert store.poll()
    assert idp.requests[JWKS_PATH] == 3


def test_unknown_kid_flood_from_many_threads_wakes_the_refresher_once(idp: Idp) -> None:
    store = KeyStore(url_settings(idp.url + JWKS_PATH, unknown_kid_interval=60))
    assert store.refresh()
    store.start()
    try:
        callers = [
            threading.Thread(target=lambda: [store.request_refresh() for _ in range(10)])
            for _ in range(10)
        ]
        for caller in callers:
            caller.start()
        for caller in callers:
            caller.join()
        assert wait_for(lambda: idp.requests[JWKS_PATH] == 2)
        time.sleep(0.1)
        assert idp.requests[JWKS_PATH] == 2
    finally:
        store.stop()


def test_await_refetch_returns_once_the_requested_refetch_has_loaded(
    idp: Idp, second_rsa_keypair: Any
) -> None:
    store = KeyStore(url_settings(idp.url + JWKS_PATH, unknown_kid_interval=60))
    assert store.refresh()
    store.start()
    try:
        idp.jwks = {"keys": [second_rsa_keypair.public_jwk, *idp.jwks["keys"]]}  # rotated in
        assert store.await_refetch(5.0)
        assert second_rsa_keypair.kid in [key.get("kid") for key in store.current().keys]
        # Rate limited, and the refetch already answered: nothing to wait for.
        started = time.monotonic()
        assert not store.await_refetch(5.0)
        assert time.monotonic() - started < 0.5
        assert idp.requests[JWKS_PATH] == 2
    finally:
        store.stop()


def test_await_refetch_gives_up_after_its_timeout_and_bounds_its_waiters(idp: Idp) -> None:
    # No refresher thread runs, so the requested refetch never happens.
    store = KeyStore(url_settings(idp.url + JWKS_PATH, unknown_kid_interval=60))
    assert store.refresh()
    started = time.monotonic()
    assert not store.await_refetch(0.2)
    assert 0.2 <= time.monotonic() - started < 2

    results: list[bool] = []
    waiters = [
        threading.Thread(target=lambda: results.append(store.await_refetch(1.0)))
        for _ in range(jwks.MAX_REFETCH_WAITERS + 3)
    ]
    started = time.monotonic()
    for waiter in waiters:
        waiter.start()
    # The ones beyond the bound are refused at once, before the others time out.
    assert wait_for(lambda: len(results) >= 3, timeout=0.8)
    for waiter in waiters:
        waiter.join()
    assert results == [False] * len(waiters)
    assert idp.requests[JWKS_PATH] == 1


def test_await_refetch_never_waits_for_a_jwks_file(tmp_path: Path, rsa_keypair: Any) -> None:
    path = tmp_path / "jwks.json"
    path.write_text(json.dumps({"keys": [rsa_keypair.public_jwk]}))
    store = KeyStore(
        ProviderSettings(name="f", issuer="https://f.test", audiences=("api",), jwks_file=path)
    )
    started = time.monotonic()
    assert not store.await_refetch(5.0)
    assert time.monotonic() - started < 0.5


# --- IdP down and staleness -------------------------------------------------------------------


@pytest.mark.parametrize("outage", ["stopped", "500"])
def test_idp_down_serves_last_good_keys_until_max_staleness(
    idp: Idp, rsa_keypair: Any, outage: str, caplog: pytest.LogCaptureFixture
) -> None:
    clock = FakeClock(T0)
    store = KeyStore(url_settings(idp.url + JWKS_PATH, max_staleness=3600), clock=clock)
    assert store.refresh()
    if outage == "stopped":
        idp.stop()
    else:
        idp.status = 500

    clock.advance(3600)
    assert not store.refresh()
    assert kids(store) == [rsa_keypair.kid]
    assert store.current().fetched_at == T0

    clock.advance(1)
    with pytest.raises(KeysUnavailableError, match="max_staleness"):
        store.current()
    assert "provider 'idp'" in caplog.text and idp.url + JWKS_PATH in caplog.text
    assert rsa_keypair.public_jwk["n"] not in caplog.text


def test_keys_recover_after_the_idp_returns(idp: Idp) -> None:
    clock = FakeClock(T0)
    store = KeyStore(url_settings(idp.url + JWKS_PATH, max_staleness=60), clock=clock)
    assert store.refresh()
    idp.status = 503
    clock.advance(61)
    assert not store.refresh()
    with pytest.raises(KeysUnavailableError):
        store.current()

    idp.status = 200
    assert store.refresh()
    assert store.current().fetched_at == clock()


def test_wait_ready_is_false_while_the_idp_is_down(idp: Idp) -> None:
    idp.status = 500
    store = KeyStore(url_settings(idp.url + JWKS_PATH))
    store.start()
    try:
        assert not store.wait_ready(0.2)
        assert idp.requests[JWKS_PATH] >= 1
    finally:
        store.stop()


def test_background_thread_loads_keys_at_start(idp: Idp, rsa_keypair: Any) -> None:
    store = KeyStore(url_settings(idp.url + JWKS_PATH))
    store.start()
    try:
        assert store.wait_ready(2)
        assert kids(store) == [rsa_keypair.kid]
    finally:
        store.stop()


# --- the default fetch ------------------------------------------------------------------------


def test_a_redirect_is_not_followed(idp: Idp) -> None:
    store = KeyStore(url_settings(idp.url + "/redirect"))

    assert not store.refresh()
    assert idp.requests == {"/redirect": 1}
    with pytest.raises(OSError, match="302"):
        fetch_url(idp.url + "/redirect", 1)


@pytest.mark.parametrize("path", ["/big", "/big-unannounced"])
def test_an_oversized_body_is_refused(idp: Idp, path: str) -> None:
    with pytest.raises(OSError, match="exceeds"):
        fetch_url(idp.url + path, 2)
    assert not KeyStore(url_settings(idp.url + path)).refresh()


@pytest.mark.parametrize("status", [204, 404, 500])
def test_only_status_200_is_accepted(idp: Idp, status: int) -> None:
    idp.status = status

    with pytest.raises(OSError, match=str(status)):
        fetch_url(idp.url + JWKS_PATH, 1)


@pytest.mark.parametrize(
    "url", ["http://idp.test/jwks.json", "file:///etc/passwd", "ftp://idp.test/x"]
)
def test_fetch_refuses_plain_http_off_loopback_and_other_schemes(url: str) -> None:
    with pytest.raises(OSError, match="https only"):
        fetch_url(url, 1)


def test_fetch_returns_lower_cased_headers(idp: Idp) -> None:
    idp.headers = {"Cache-Control": "max-age=7", "X-Thing": "a"}

    body, headers = fetch_url(idp.url + JWKS_PATH, 1)

    assert json.loads(body) == idp.jwks
    assert headers["cache-control"] == "max-age=7" and headers["x-thing"] == "a"


# --- rotation and versions --------------------------------------------------------------------


def test_keys_removed_upstream_disappear_after_refresh(
    idp: Idp, rsa_keypair: Any, second_rsa_keypair: Any
) -> None:
    idp.jwks = {"keys": [rsa_keypair.public_jwk, second_rsa_keypair.public_jwk]}
    store = KeyStore(url_settings(idp.url + JWKS_PATH))
    assert store.refresh()
    assert kids(store) == [rsa_keypair.kid, second_rsa_keypair.kid]

    idp.jwks = {"keys": [second_rsa_keypair.public_jwk]}
    assert store.refresh()

    assert kids(store) == [second_rsa_keypair.kid]


def test_version_increments_only_when_the_keys_change(
    idp: Idp, rsa_keypair: Any, second_rsa_keypair: Any
) -> None:
    clock = FakeClock(T0)
    store = KeyStore(url_settings(idp.url + JWKS_PATH), clock=clock)
    assert store.refresh()
    assert store.current().version == 1

    clock.advance(10)
    assert store.refresh()  # identical content
    assert store.current().version == 1
    assert store.current().fetched_at == T0 + 10

    idp.jwks = {"keys": [second_rsa_keypair.public_jwk]}
    assert store.refresh()
    assert store.current().version == 2


def test_a_bad_document_keeps_the_last_good_set(idp: Idp, rsa_keypair: Any) -> None:
    store = KeyStore(url_settings(idp.url + JWKS_PATH))
    assert store.refresh()

    idp.jwks = {"keys": "nope"}
    assert not store.refresh()

    assert kids(store) == [rsa_keypair.kid]
    assert store.current().version == 1


# --- stopping ---------------------------------------------------------------------------------


def test_stop_returns_quickly(idp: Idp, jwks_file: Path) -> None:
    stores = [KeyStore(url_settings(idp.url + JWKS_PATH)), KeyStore(file_settings(jwks_file))]
    for store in stores:
        store.start()
    assert stores[0].wait_ready(2)

    started = time.monotonic()
    for store in stores:
        store.stop()

    assert time.monotonic() - started < 0.5
    assert not any(t.name.startswith("keys:") for t in threading.enumerate())


def test_a_failing_custom_fetch_never_escapes_refresh(caplog: pytest.LogCaptureFixture) -> None:
    def fetch(url: str, timeout: float) -> tuple[bytes, Mapping[str, str]]:
        raise RuntimeError("secret-looking detail")

    store = KeyStore(url_settings("https://idp.test/jwks"), fetch=fetch)

    with caplog.at_level(logging.ERROR):
        assert not store.refresh()
    assert "unexpected RuntimeError" in caplog.text
    assert "secret-looking" not in caplog.text
