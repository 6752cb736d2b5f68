"""The ext-authz settings every benchmark runs with: the demo's, minus what would refuse a load
generator for being one (the scripted-attack thresholds and the per-address rate limits)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ext_authz.assets import bundled_path
from ext_authz.demo.issuer import service_settings


def service_config(state: Path, grpc_port: int, admin_port: int) -> dict[str, Any]:
    """The demo's settings for ``state`` (the demo's keys and credentials) as YAML data."""
    settings = service_settings(state, bundled_path("policies"), grpc_port, admin_port)
    settings.pop("security")  # the demo's scripted-attack thresholds; the defaults apply
    # The demo's rate limits, raised so that a load generator on one address is never refused:
    # the guard's cost is measured, not its refusals.
    limits = settings["rate_limits"]
    limits["rules"] = [{**rule, "rate": 10**6, "burst": 10**6} for rule in limits["rules"]]
    return settings
