"""`ext-authz review`: a security review of Envoy config, service config and policies, for CI."""

from __future__ import annotations

from pathlib import Path

import click

from ext_authz.cli.errors import config_errors_exit
from ext_authz.errors import ConfigError
from ext_authz.review import (
    FORMATS,
    Finding,
    Severity,
    apply_suppressions,
    failing,
    load_suppressions,
    render,
    summary,
    unused_suppressions,
)
from ext_authz.review.policy_rules import review_policy
from ext_authz.review.service_rules import review_settings
from ext_authz.settings import load_settings

__all__ = ["review"]

FINDINGS_EXIT = 1
_FILE = click.Path(exists=True, dir_okay=False, path_type=Path)


@click.command()
@click.option(
    "--envoy",
    "envoy_files",
    multiple=True,
    type=_FILE,
    help="An Envoy bootstrap, YAML (JSON when named *.json); repeat for several.",
)
@click.option(
    "--config",
    type=_FILE,
    help="A serve config: tokens, credentials, exposure, and its policy files unless given.",
)
@click.option(
    "--policies",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="A policy folder holding model.conf and policy.csv.",
)
@click.option("--model", type=_FILE, help="A Casbin model (with --policy).")
@click.option("--policy", "policy_file", type=_FILE, help="A Casbin policy (with --model).")
@click.option(
    "--format",
    "output_format",
    type=click.Choice(FORMATS),
    default="table",
    show_default=True,
    help="table for people, json, or sarif (2.1.0) for code scanning.",
)
@click.option(
    "--output",
    type=click.Path(dir_okay=False, writable=True, path_type=Path),
    help="Write the report to this file (a summary line still goes to standard output).",
)
@click.option(
    "--fail-on",
    type=click.Choice([severity.name.lower() for severity in Severity]),
    default="high",
    show_default=True,
    help="Exit 1 when an unsuppressed finding is at least this severe.",
)
@click.option(
    "--suppressions",
    type=_FILE,
    help="YAML list of {rule, location (glob over 'FILE PATH'), justification}.",
)
def review(
    envoy_files: tuple[Path, ...],
    config: Path | None,
    policies: Path | None,
    model: Path | None,
    policy_file: Path | None,
    output_format: str,
    output: Path | None,
    fail_on: str,
    suppressions: Path | None,
) -> None:
    """Review the access layer as a security reviewer would: Envoy bootstraps (--envoy), the
    service config (--config) and the Casbin policies (--policies, --model/--policy, or the
    config's policy section).

    Exit status: 0 nothing unsuppressed at or above --fail-on, 1 something is, 2 invalid input.
    """
    policy_pair = _policy_pair(policies, model, policy_file)
    if not (envoy_files or config or policy_pair):
        raise click.UsageError("nothing to review: give --envoy, --config or policy files")
    threshold = Severity.parse(fail_on)
    with config_errors_exit():
        accepted = load_suppressions(suppressions) if suppressions else []
        findings = _findings(envoy_files, config, policy_pair)
    reviewed = apply_suppressions(findings, accepted)
    for stale in unused_suppressions(reviewed, accepted):
        click.echo(f"ext-authz: warning: {stale.source} matched no finding", err=True)
    report = render(reviewed, output_format, threshold)
    if output is None:
        click.echo(report, nl=False)
    else:
        try:
            output.write_text(report, encoding="utf-8")
        except OSError as exc:
            raise click.FileError(str(output), hint=exc.strerror) from None
        click.echo(f"{output}: {summary(reviewed, threshold)}")
    if failing(reviewed, threshold):
        raise SystemExit(FINDINGS_EXIT)


def _policy_pair(
    policies: Path | None, model: Path | None, policy: Path | None
) -> tuple[Path, Path] | None:
    if policies is not None:
        if model is not None or policy is not None:
            raise click.UsageError("give either --policies DIR or --model and --policy")
        return policies / "model.conf", policies / "policy.csv"
    if (model is None) != (policy is None):
        raise click.UsageError("--model and --policy go together")
    return (model, policy) if model is not None and policy is not None else None


def _findings(
    envoy_files: tuple[Path, ...], config: Path | None, policy_pair: tuple[Path, Path] | None
) -> list[Finding]:
    """Every input is read and checked before anything is reported (exit 2 on the first bad)."""
    findings: list[Finding] = []
    identity_headers: tuple[str, ...] | None = None
    if config is not None:
        settings = load_settings(config)
        identity_headers = (settings.headers.subject, settings.headers.roles)
        findings += review_settings(settings, config)
        policy_pair = policy_pair or (settings.policy.model, settings.policy.policy)
    if envoy_files:
        findings += _envoy_findings(envoy_files, identity_headers)
    if policy_pair is not None:
        findings += review_policy(*policy_pair)
    return findings


def _envoy_findings(
    envoy_files: tuple[Path, ...], identity_headers: tuple[str, ...] | None
) -> list[Finding]:
    # Imported here: envoy-data-plane is an optional dependency (the dev extra), slow to load,
    # and no other command needs it.
    try:
        from ext_authz.review.envoy_config import load_bootstrap
        from ext_authz.review.envoy_rules import DEFAULT_IDENTITY_HEADERS, review_envoy
    except ModuleNotFoundError as exc:
        raise ConfigError(
            f"reviewing Envoy configs needs {exc.name}: pip install 'envoy-data-plane>=2.2'"
        ) from exc
    headers = identity_headers or DEFAULT_IDENTITY_HEADERS
    return [
        finding
        for envoy_file in envoy_files
        for finding in review_envoy(load_bootstrap(envoy_file), headers)
    ]
