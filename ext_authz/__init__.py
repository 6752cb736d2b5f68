"""ext-authz: an Envoy external authorization (ext_authz v3) server."""

from __future__ import annotations

__version__ = "0.1.0"
