"""The admin HTTP port: Prometheus /metrics and the live view."""

from ext_authz.admin.live import LiveView
from ext_authz.admin.server import AdminServer

__all__ = ["AdminServer", "LiveView"]
