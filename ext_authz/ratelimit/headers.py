"""The RateLimit-Policy and RateLimit response fields of the IETF httpapi draft
(draft-ietf-httpapi-ratelimit-headers-11): structured-field lists of one item each.

    RateLimit-Policy: "<rule>";q=<rate>;w=<period>     the limit: q requests per w seconds
    RateLimit: "<rule>";r=<remaining>;t=<seconds>       what is left; t: until the bucket is
                                                        full again (on a 429: Retry-After)
"""

from __future__ import annotations

from ext_authz.models import Quota

__all__ = ["quota_headers"]


def quota_headers(quota: Quota) -> list[tuple[str, str]]:
    """The two fields for ``quota``; rule names are ``[a-z0-9_]`` (settings), safe to quote."""
    return [
        ("ratelimit-policy", f'"{quota.policy}";q={quota.limit};w={quota.window}'),
        ("ratelimit", f'"{quota.policy}";r={quota.remaining};t={quota.reset}'),
    ]
