"""settings.py: load_settings is strict, and its errors name the file and the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from ext_authz.errors import ConfigError
from ext_authz.settings import HeaderSettings, load_settings

PROVIDER = """
providers:
  - name: test
    issuer: https://issuer.test
    audiences: [api]
    jwks_file: keys/jwks.json
"""
POLICY = """
policy:
  model: policies/model.conf
  policy: policies/policy.csv
"""


def write(tmp_path: Path, text: str, name: str = "ext-authz.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def config_error(path: Path) -> str:
    with pytest.raises(ConfigError) as caught:
        load_settings(path)
    return str(caught.value)


def test_minimal_file_gets_the_documented_defaults(tmp_path: Path) -> None:
    settings = load_settings(write(tmp_path, POLICY))

    assert settings.listen == "127.0.0.1:9191"
    assert settings.providers == ()
    assert settings.headers == HeaderSettings()
    assert settings.headers.owned_prefix == "x-auth-"


def test_provider_gets_safe_defaults(tmp_path: Path) -> None:
    provider = load_settings(write(tmp_path, POLICY + PROVIDER)).providers[0]

    assert provider.algorithms == ("RS256",)
    assert provider.audiences == ("api",)
    assert provider.clock_skew == 30
    assert provider.max_lifetime == 86400
    assert provider.max_token_bytes == 8192


def test_relative_paths_are_resolved_against_the_files_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    conf_dir = tmp_path / "conf"
    conf_dir.mkdir()
    path = write(conf_dir, POLICY + PROVIDER)
    monkeypatch.chdir(tmp_path)  # not the file's directory

    settings = load_settings(Path("conf/ext-authz.yaml"))

    assert settings.policy.model == conf_dir.resolve() / "policies" / "model.conf"
    assert settings.policy.policy == conf_dir.resolve() / "policies" / "policy.csv"
    assert settings.providers[0].jwks_file == conf_dir.resolve() / "keys" / "jwks.json"
    assert path.exists()


def test_absolute_paths_are_kept(tmp_path: Path) -> None:
    model = tmp_path / "elsewhere" / "model.conf"
    text = f"policy:\n  model: {model}\n  policy: policy.csv\n"

    assert load_settings(write(tmp_path, text)).policy.model == model


def test_missing_file_is_a_config_error_naming_it(tmp_path: Path) -> None:
    path = tmp_path / "nope.yaml"

    assert str(path) in config_error(path)


def test_invalid_yaml_is_a_config_error_naming_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, "policy:\n  model: [unclosed\n")

    message = config_error(path)
    assert str(path) in message
    assert "YAML" in message


@pytest.mark.parametrize("text", ["", "- a\n- b\n", "just a string\n", "42\n"])
def test_file_that_is_not_a_mapping_is_a_config_error(tmp_path: Path, text: str) -> None:
    path = write(tmp_path, text)

    assert str(path) in config_error(path)


def test_unknown_key_is_named_with_its_path(tmp_path: Path) -> None:
    path = write(tmp_path, POLICY + PROVIDER.replace("issuer:", "isuer:"))

    message = config_error(path)
    assert f"{path}: providers[0].isuer: unknown key" in message


def test_unknown_top_level_key_is_named(tmp_path: Path) -> None:
    path = write(tmp_path, POLICY + "listn: 127.0.0.1:1\n")

    assert f"{path}: listn: unknown key" in config_error(path)


def test_duplicate_key_is_refused_with_its_line(tmp_path: Path) -> None:
    path = write(tmp_path, POLICY + "threads: 4\nthreads: 8\n")

    assert "duplicate key 'threads' (line 6)" in config_error(path)


def test_two_providers_with_one_issuer_are_refused(tmp_path: Path) -> None:
    second = PROVIDER.replace("providers:\n", "").replace("name: test", "name: other")
    path = write(tmp_path, POLICY + PROVIDER + second)

    assert "issuer 'https://issuer.test' is configured more than once" in config_error(path)


def test_missing_required_section_is_named(tmp_path: Path) -> None:
    path = write(tmp_path, "listen: 127.0.0.1:1\n")

    assert f"{path}: policy:" in config_error(path)


@pytest.mark.parametrize(
    ("field", "value", "key"),
    [
        ("clock_skew", '"30"', "providers[0].clock_skew"),
        ("clock_skew", "30.0", "providers[0].clock_skew"),
        ("clock_skew", "true", "providers[0].clock_skew"),
        ("clock_skew", "301", "providers[0].clock_skew"),
        ("clock_skew", "-1", "providers[0].clock_skew"),
        ("max_token_bytes", "100", "providers[0].max_token_bytes"),
        ("max_lifetime", "0", "providers[0].max_lifetime"),
        ("audiences", "api", "providers[0].audiences"),
        ("audiences", "[]", "providers[0].audiences"),
        ("algorithms", "RS256", "providers[0].algorithms"),
        ("subject_claim", "yes", "providers[0].subject_claim"),
        ("name", "123", "providers[0].name"),
    ],
)
def test_wrong_type_or_value_is_refused_strictly(tmp_path: Path, field, value, key) -> None:
    # The field under test replaces the valid one (a duplicate key would be refused as such).
    others = [
        line.strip(" -")
        for line in PROVIDER.strip().splitlines()[1:]
        if not line.strip(" -").startswith(f"{field}:")
    ]
    provider = "providers:\n" + f"  - {field}: {value}\n" + "".join(f"    {o}\n" for o in others)
    path = write(tmp_path, POLICY + provider)

    message = config_error(path)
    assert f"{path}: {key}:" in message


@pytest.mark.parametrize(
    ("line", "key"),
    [
        ('threads: "4"', "threads"),
        ("threads: 0", "threads"),
        ("log_level: verbose", "log_level"),
        ("listen: 9191", "listen"),
        ("headers: {owned_prefix: x}", "headers.owned_prefix"),
        ("headers: {subject: 1}", "headers.subject"),
    ],
)
def test_wrong_top_level_value_is_refused(tmp_path: Path, line: str, key: str) -> None:
    path = write(tmp_path, POLICY + line + "\n")

    assert f"{path}: {key}:" in config_error(path)


def test_yaml_value_with_no_json_form_is_a_config_error(tmp_path: Path) -> None:
    path = write(tmp_path, POLICY + "listen: 2024-01-01\n")

    assert str(path) in config_error(path)


def test_every_error_is_reported_at_once(tmp_path: Path) -> None:
    path = write(tmp_path, POLICY + "threads: x\nlog_level: loud\n")

    message = config_error(path)
    assert "threads" in message
    assert "log_level" in message
