"""identity/denylist.py: revoked token ids and subjects, checked on every request and cache hit."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from types import MappingProxyType
from typing import Any

import pytest
import yaml
from fakes import StaticKeys

from ext_authz.credentials import CredentialExtractor, CredentialKind
from ext_authz.errors import ConfigError, RevokedTokenError
from ext_authz.identity.cache import TokenCache
from ext_authz.identity.denylist import Denylist, load_denylist
from ext_authz.identity.jwt import JwtVerifier
from ext_authz.models import AuthRequest, Identity, Outcome, PolicyResult
from ext_authz.pipeline import AuthPipeline
from ext_authz.response import to_check_response
from ext_authz.settings import CredentialSettings, HeaderSettings, ProviderSettings
from ext_authz.watch import WatchedFile

NOW = 1_700_000_000


def identity(subject: str = "alice", **claims: Any) -> Identity:
    return Identity(subject, claims=MappingProxyType({"sub": subject, **claims}))


def write(path: Path, text: str) -> Path:
    """Replace the file atomically (a new inode), as an operator's tooling would."""
    temp = path.with_name(path.name + ".tmp")
    temp.write_text(text, encoding="utf-8")
    os.replace(temp, path)
    return path


def write_denylist(path: Path, jti: Sequence[str] = (), subjects: Sequence[str] = ()) -> Path:
    return write(path, yaml.safe_dump({"jti": list(jti), "subjects": list(subjects)}))


# --- loading ----------------------------------------------------------------------------------


def test_denylist_file_is_loaded(tmp_path: Path) -> None:
    path = write_denylist(tmp_path / "denylist.yaml", ["t-1", "t-2"], ["mallory"])
    assert load_denylist(path) == Denylist(frozenset({"t-1", "t-2"}), frozenset({"mallory"}))


@pytest.mark.parametrize("text", ["jti: [t-1]\n", "subjects: [mallory]\n", "jti:\nsubjects:\n"])
def test_either_list_may_be_left_out(tmp_path: Path, text: str) -> None:
    load_denylist(write(tmp_path / "denylist.yaml", text))


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("jti: [t-1\n", "not valid YAML"),
        ("jti: [t-1]\n\tsubjects: []\n", "not valid YAML"),
        ("jtis: [t-1]\n", "jtis: unknown key"),
        ("jti: []\nsubject: [mallory]\n", "subject: unknown key"),
        ("jti: t-1\n", "jti: expected a list"),
        ("subjects: mallory\n", "subjects: expected a list"),
        ("jti: [1, 2]\n", "jti: expected a list of non-empty strings"),
        ("subjects: ['']\n", "subjects: expected a list of non-empty strings"),
        ("subjects: [[mallory]]\n", "subjects: expected a list"),
        ("- t-1\n- t-2\n", "expected a mapping"),
        ("just a string\n", "expected a mapping"),
        ("[]\n", "expected a mapping"),
        ("0\n", "expected a mapping"),
        ("jti: [2024-13-01]\n", "not valid YAML"),  # an impossible date
    ],
)
def test_bad_denylist_file_is_a_config_error_naming_the_file(
    tmp_path: Path, text: str, match: str
) -> None:
    path = write(tmp_path / "denylist.yaml", text)
    with pytest.raises(ConfigError, match=match) as caught:
        load_denylist(path)
    assert str(path) in str(caught.value)


def test_missing_denylist_file_is_a_config_error_naming_the_file(tmp_path: Path) -> None:
    path = tmp_path / "absent.yaml"
    with pytest.raises(ConfigError, match="cannot read denylist") as caught:
        load_denylist(path)
    assert str(path) in str(caught.value)


def test_non_utf8_denylist_file_is_a_config_error_naming_the_file(tmp_path: Path) -> None:
    path = tmp_path / "denylist.yaml"
    path.write_bytes(b"jti: [\xff\xfe]\n")
    with pytest.raises(ConfigError) as caught:
        load_denylist(path)
    assert str(path) in str(caught.value)


@pytest.mark.parametrize("value", ["''", "0", "false", "{}"])
def test_falsy_non_list_value_is_a_config_error(tmp_path: Path, value: str) -> None:
    path = write(tmp_path / "denylist.yaml", f"jti: {value}\n")
    with pytest.raises(ConfigError, match="expected a list"):
        load_denylist(path)


@pytest.mark.parametrize("text", ["", "\n", "# revoked tokens\n", "~\n"])
def test_empty_denylist_file_is_refused_with_the_way_to_revoke_nothing(
    tmp_path: Path, text: str
) -> None:
    """A truncated or half-written file must not read as "nothing revoked"."""
    path = write(tmp_path / "denylist.yaml", text)
    with pytest.raises(ConfigError, match=r"empty; to revoke nothing, write 'jti: \[\]'") as caught:
        load_denylist(path)
    assert str(path) in str(caught.value)


# --- checking ---------------------------------------------------------------------------------


def test_revoked_jti_is_refused() -> None:
    denylist = Denylist(jtis=frozenset({"t-1"}))
    with pytest.raises(RevokedTokenError, match="revoked") as caught:
        denylist.check(identity(jti="t-1"))
    assert caught.value.code == "revoked_token"


def test_revoked_subject_is_refused_whatever_its_token() -> None:
    denylist = Denylist(subjects=frozenset({"mallory"}))
    with pytest.raises(RevokedTokenError):
        denylist.check(identity("mallory", jti="fresh-token"))
    with pytest.raises(RevokedTokenError):
        denylist.check(Identity("mallory", method="api_key"))  # any credential kind


def test_identity_not_on_the_denylist_passes() -> None:
    denylist = Denylist(jtis=frozenset({"t-1"}), subjects=frozenset({"mallory"}))
    denylist.check(identity("alice", jti="t-2"))
    denylist.check(identity("alice"))  # no jti at all
    denylist.check(identity("Mallory"))  # subjects compare exactly


# --- hot reload -------------------------------------------------------------------------------


def test_rewritten_denylist_applies_after_check(tmp_path: Path) -> None:
    path = write_denylist(tmp_path / "denylist.yaml", ["t-1"])
    watched = WatchedFile(path, load_denylist)
    watched.current().check(identity(jti="t-2"))
    write_denylist(path, ["t-1", "t-2"], ["mallory"])
    assert watched.check() is True
    with pytest.raises(RevokedTokenError):
        watched.current().check(identity(jti="t-2"))
    with pytest.raises(RevokedTokenError):
        watched.current().check(identity("mallory"))


def test_bad_rewrite_keeps_the_last_good_denylist(tmp_path: Path) -> None:
    path = write_denylist(tmp_path / "denylist.yaml", ["t-1"])
    watched = WatchedFile(path, load_denylist)
    write(path, "jti: t-1\n")
    assert watched.check() is False
    with pytest.raises(RevokedTokenError):
        watched.current().check(identity(jti="t-1"))


def test_non_utf8_rewrite_keeps_the_last_good_denylist(tmp_path: Path) -> None:
    path = write_denylist(tmp_path / "denylist.yaml", ["t-1"])
    watched = WatchedFile(path, load_denylist)
    path.write_bytes(b"jti: [\xff]\n")
    assert watched.check() is False
    assert watched.current().jtis == frozenset({"t-1"})


@pytest.mark.parametrize("text", ["", "jti: {}\n", "jti: false\n", "[]\n"])
def test_empty_or_wrongly_typed_rewrite_keeps_the_last_good_denylist(
    tmp_path: Path, text: str
) -> None:
    path = write_denylist(tmp_path / "denylist.yaml", ["t-1"])
    watched = WatchedFile(path, load_denylist)
    write(path, text)
    assert watched.check() is False
    assert watched.failures == 1
    with pytest.raises(RevokedTokenError):
        watched.current().check(identity(jti="t-1"))


# --- through the pipeline, with a real verifier and its cache ---------------------------------


class AllowAll:
    def decide(self, identity: Identity, request: AuthRequest) -> PolicyResult:
        return PolicyResult(allowed=True, matched_rule="test")


@pytest.fixture
def make_pipeline(
    provider_settings: ProviderSettings, rsa_keypair: Any
) -> Callable[[Callable[[], Denylist]], AuthPipeline]:
    def make(denylist: Callable[[], Denylist]) -> AuthPipeline:
        verifier = JwtVerifier(
            [(provider_settings, StaticKeys([rsa_keypair.public_jwk]))],
            TokenCache(100),
            lambda: NOW,
        )
        return AuthPipeline(
            CredentialExtractor(CredentialSettings(), None),
            {CredentialKind.BEARER: verifier},
            AllowAll(),
            denylist,
        )

    return make


def bearer_request(token: str) -> AuthRequest:
    return AuthRequest(
        "GET", "/api/books", headers=MappingProxyType({"authorization": f"Bearer {token}"})
    )


@pytest.mark.parametrize(
    ("claims", "revoked"),
    [
        ({"jti": "t-1"}, Denylist(jtis=frozenset({"t-1"}))),
        ({"sub": "mallory"}, Denylist(subjects=frozenset({"mallory"}))),
    ],
    ids=["jti", "subject"],
)
def test_revoked_token_is_refused_even_on_a_cache_hit(
    make_pipeline, make_token, verify_calls, claims: dict[str, str], revoked: Denylist
) -> None:
    current = [Denylist()]
    pipeline = make_pipeline(lambda: current[0])
    req = bearer_request(make_token(now=NOW, **claims))
    assert pipeline.evaluate(req).outcome is Outcome.ALLOW

    current[0] = revoked
    decision = pipeline.evaluate(req)

    assert len(verify_calls) == 1  # the second evaluation was a cache hit
    assert (decision.outcome, decision.reason_code) == (Outcome.UNAUTHENTICATED, "revoked_token")
    response = to_check_response(decision, req, HeaderSettings())
    assert response.denied_response.status.code == 401


def test_hot_reloaded_denylist_revokes_a_cached_token(
    make_pipeline, make_token, tmp_path: Path, verify_calls
) -> None:
    path = write_denylist(tmp_path / "denylist.yaml", ["other"])
    watched = WatchedFile(path, load_denylist)
    pipeline = make_pipeline(watched.current)
    req = bearer_request(make_token(now=NOW, jti="t-1"))
    assert pipeline.evaluate(req).outcome is Outcome.ALLOW
    write_denylist(path, ["other", "t-1"])
    assert watched.check() is True
    assert pipeline.evaluate(req).reason_code == "revoked_token"
    assert len(verify_calls) == 1


def test_revoked_token_challenge_says_invalid_token(make_pipeline, make_token) -> None:
    """RFC 6750 3.1: invalid_token covers revoked tokens; "revoked_token" is in the body."""
    pipeline = make_pipeline(lambda: Denylist(jtis=frozenset({"t-1"})))
    req = bearer_request(make_token(now=NOW, jti="t-1"))
    denied = to_check_response(pipeline.evaluate(req), req, HeaderSettings()).denied_response
    headers = {h.header.key: h.header.value for h in denied.headers}
    assert 'error="invalid_token"' in headers["www-authenticate"]
    assert json.loads(denied.body)["reason"] == "revoked_token"
