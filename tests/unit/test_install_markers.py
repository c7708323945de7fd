"""Where the package installs: pyproject's `ml` extra asks for onnxruntime-gpu where PyPI has a wheel
for it (Linux x86_64, Windows) and for the CPU build everywhere else (macOS, Linux aarch64), never
both; and no code uses anything the CPU build lacks."""

from __future__ import annotations

import re
import tomllib

import pytest
from packaging.requirements import Requirement

from tests.unit.test_deploy_tools import REPO

ONNXRUNTIME = {"onnxruntime", "onnxruntime-gpu"}

# the marker variables of each platform, as `packaging.markers.default_environment()` reports them there
LINUX_X86_64 = {"sys_platform": "linux", "platform_system": "Linux", "platform_machine": "x86_64"}
LINUX_AARCH64 = {"sys_platform": "linux", "platform_system": "Linux", "platform_machine": "aarch64"}
MACOS_ARM64 = {"sys_platform": "darwin", "platform_system": "Darwin", "platform_machine": "arm64"}
MACOS_X86_64 = {"sys_platform": "darwin", "platform_system": "Darwin", "platform_machine": "x86_64"}
WINDOWS = {"sys_platform": "win32", "platform_system": "Windows", "platform_machine": "AMD64"}


def ml_requirements() -> list[Requirement]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    return [Requirement(line) for line in project["optional-dependencies"]["ml"]]


def installed_on(platform: dict[str, str], extra: str = "ml") -> set[str]:
    """The onnxruntime distributions `pip install .[ml]` picks on that platform."""
    environment = {
        "python_version": "3.11",
        "python_full_version": "3.11.9",
        "implementation_name": "cpython",
        "platform_python_implementation": "CPython",
        "os_name": "nt" if platform["platform_system"] == "Windows" else "posix",
        "platform_release": "",
        "platform_version": "",
        "extra": extra,
        **platform,
    }
    return {
        r.name
        for r in ml_requirements()
        if r.name in ONNXRUNTIME and (r.marker is None or r.marker.evaluate(environment))
    }


@pytest.mark.parametrize(
    ("platform", "expected"),
    [
        (LINUX_X86_64, "onnxruntime-gpu"),
        (WINDOWS, "onnxruntime-gpu"),
        (LINUX_AARCH64, "onnxruntime"),
        (MACOS_ARM64, "onnxruntime"),
        (MACOS_X86_64, "onnxruntime"),
    ],
    ids=["linux-x86_64", "windows", "linux-aarch64", "macos-arm64", "macos-x86_64"],
)
def test_exactly_one_onnxruntime_build_per_platform(platform: dict[str, str], expected: str) -> None:
    # the two builds overwrite each other's files: one per environment
    assert installed_on(platform) == {expected}


def test_the_markers_can_fail() -> None:
    # a marker that read the wrong variable would give every platform the same answer
    answers = {frozenset(installed_on(p)) for p in (LINUX_X86_64, LINUX_AARCH64, MACOS_ARM64)}
    assert answers == {frozenset({"onnxruntime-gpu"}), frozenset({"onnxruntime"})}


def test_both_builds_ask_for_the_same_version_range() -> None:
    specifiers = {str(r.specifier) for r in ml_requirements() if r.name in ONNXRUNTIME}
    assert len(specifiers) == 1, specifiers


# What only onnxruntime-gpu has, or what would tie the code to CUDA: device-bound tensors and
# bindings, the training build, and CUDA options passed by name. The CPU build has the rest of the
# API the services use (InferenceSession, SessionOptions, get_available_providers, model metadata).
GPU_ONLY = re.compile(
    r"\b(?:ort|onnxruntime)\.(?:training|OrtValue|capi\._pybind_state\.set_cuda|get_device\b)"
    r"|\bio_binding\b|\bortvalue_from_numpy\([^)]*['\"]cuda"
    r"|\bcuda_mem_limit\b|\bdevice_id\b"
)


def test_no_code_needs_what_only_the_gpu_build_has() -> None:
    found = []
    for path in sorted((REPO / "services").rglob("*.py")) + sorted((REPO / "libs").rglob("*.py")):
        if "_pb2" in path.name:
            continue
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if GPU_ONLY.search(line):
                found.append(f"{path.relative_to(REPO)}:{number}: {line.strip()}")
    assert not found, "\n".join(found)
    # and the check can fail
    assert GPU_ONLY.search("binding = session.io_binding()")
    assert GPU_ONLY.search("import onnxruntime; onnxruntime.get_device()")
