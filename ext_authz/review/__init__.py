"""`ext-authz review`: what an expert would flag in the access layer, as findings for people and CI.

- ``findings``: Finding, Location, Severity (what every rule reports).
- ``envoy_config``: an Envoy bootstrap parsed strictly into envoy-data-plane's typed messages.
- ``envoy_rules``: ext_authz, TLS and HTTP rules over that bootstrap.
- ``service_rules``, ``policy_rules``: the service config's and the Casbin policies' rules.
- ``report``: suppressions, the ``--fail-on`` verdict, and table / JSON / SARIF output.

The Envoy modules need envoy-data-plane (the ``dev`` extra) and take a moment to load, so this
package does not import them: ``from ext_authz.review.envoy_rules import review_envoy``.
"""

from __future__ import annotations

from ext_authz.review.findings import Finding, Location, Severity
from ext_authz.review.report import (
    FORMATS,
    Reviewed,
    Suppression,
    apply_suppressions,
    failing,
    load_suppressions,
    render,
    summary,
    unused_suppressions,
)

__all__ = [
    "FORMATS",
    "Finding",
    "Location",
    "Reviewed",
    "Severity",
    "Suppression",
    "apply_suppressions",
    "failing",
    "load_suppressions",
    "render",
    "summary",
    "unused_suppressions",
]
