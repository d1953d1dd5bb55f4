"""Fixtures of the container tests: the images (built in the background since collection, see
``tests/conftest.py``), free loopback ports, and containers that are always removed."""

from __future__ import annotations

import contextlib
import socket
import time
import uuid
from collections.abc import Iterator

import httpx
import pytest

from ..conftest import service_unavailable
from .images import BuiltImages, ImageBuild, podman, unavailable_reason

#: The stash key under which ``tests/conftest.py`` keeps the session's build.
IMAGE_BUILD = pytest.StashKey[ImageBuild]()


@pytest.fixture(scope="session")
def image_build(request: pytest.FixtureRequest) -> ImageBuild:
    """The session's build: started at collection when the container tests were selected, else now."""
    if reason := unavailable_reason():
        service_unavailable(reason)
    build = request.config.stash.get(IMAGE_BUILD, None) or ImageBuild()
    request.config.stash[IMAGE_BUILD] = build
    return build


@pytest.fixture(scope="session")
def images(image_build: ImageBuild) -> BuiltImages:
    return image_build.result()


def free_ports(count: int) -> list[int]:
    with contextlib.ExitStack() as stack:
        probes = [stack.enter_context(socket.socket()) for _ in range(count)]
        for probe in probes:
            probe.bind(("127.0.0.1", 0))
        return [probe.getsockname()[1] for probe in probes]


def unique_name(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def wait_for_http(url: str, timeout: float, *, alive: object = None) -> None:
    """Until ``url`` answers 200; ``alive`` (a callable) raises when what should answer has died."""
    deadline = time.monotonic() + timeout
    last = "no answer"
    while time.monotonic() < deadline:
        if callable(alive):
            alive()
        try:
            answer = httpx.get(url, timeout=5)
            if answer.status_code == 200:
                return
            last = f"{answer.status_code} {answer.text[:200]}"
        except httpx.HTTPError as error:
            last = repr(error)
        time.sleep(1)
    raise TimeoutError(f"{url} did not answer 200 in {timeout:.0f} s: {last}")


@contextlib.contextmanager
def removed_afterwards(name: str) -> Iterator[str]:
    """The container ``name`` is removed however the test ends; its log is printed when it failed."""
    try:
        yield name
    except BaseException:
        print(podman("logs", "--tail", "80", name, check=False).stdout)
        raise
    finally:
        podman("rm", "--force", "--time", "0", name, check=False)
