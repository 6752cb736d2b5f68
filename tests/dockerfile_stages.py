"""Reading the repository's Dockerfile the way the build does: instructions per stage.

Shared by the compose and the Kubernetes tests, which both hold their manifests to the image's
user, ports, entrypoint and health check.
"""

from __future__ import annotations

import json
from pathlib import Path

DOCKERFILE = Path(__file__).resolve().parents[1] / "Dockerfile"


def dockerfile_stages(text: str) -> list[list[tuple[str, str]]]:
    """(INSTRUCTION, arguments) per build stage, continuation lines joined, comments dropped."""
    instructions: list[str] = []
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        instructions.append(pending + line)
        pending = ""
    stages: list[list[tuple[str, str]]] = []
    for instruction in instructions:
        keyword, _, arguments = instruction.partition(" ")
        if keyword.upper() == "FROM":
            stages.append([])
        if stages:  # an ARG before the first FROM belongs to no stage
            stages[-1].append((keyword.upper(), arguments.strip()))
    return stages


def runtime_stage() -> list[tuple[str, str]]:
    """The final stage of the repository's Dockerfile: what the image runs."""
    stages = dockerfile_stages(DOCKERFILE.read_text(encoding="utf-8"))
    assert len(stages) >= 2, "expected a multi-stage build (builder + runtime)"
    return stages[-1]


def last(stage: list[tuple[str, str]], keyword: str) -> str:
    values = [arguments for instruction, arguments in stage if instruction == keyword]
    assert values, f"the Dockerfile's final stage has no {keyword}"
    return values[-1]


def exec_form(arguments: str) -> list[str]:
    value = json.loads(arguments)
    assert isinstance(value, list), f"not exec (JSON) form: {arguments}"
    return [str(item) for item in value]


def exposed_ports(stage: list[tuple[str, str]]) -> set[int]:
    return {
        int(port.split("/", 1)[0])
        for instruction, arguments in stage
        if instruction == "EXPOSE"
        for port in arguments.split()
    }


def healthcheck_command(stage: list[tuple[str, str]]) -> list[str]:
    """The HEALTHCHECK's CMD, in exec form."""
    return exec_form(last(stage, "HEALTHCHECK").split(" CMD ", 1)[1])
