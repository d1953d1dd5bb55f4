"""Fixtures of the container tests: the images (built in the background since collection, see
``tests/conftest.py``), and containers that are always removed, their logs shown when a test failed."""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import Callable, Iterator

import httpx
import pytest

from ..conftest import service_unavailable
from .images import BuiltImages, ImageBuild, podman, unavailable_reason

#: The stash key under which ``tests/conftest.py`` keeps the session's build.
IMAGE_BUILD = pytest.StashKey[ImageBuild]()


@pytest.fixture(scope="session")
def image_build(request: pytest.FixtureRequest) -> ImageBuild:
    """The session's build: started at collection when the container tests were selected (podman was
    checked then), else now."""
    build = request.config.stash.get(IMAGE_BUILD, None)
    if build is None:
        if reason := unavailable_reason():
            service_unavailable(reason)
        build = request.config.stash[IMAGE_BUILD] = ImageBuild()
    return build


@pytest.fixture(scope="session")
def images(image_build: ImageBuild) -> BuiltImages:
    return image_build.result()


def unique_name(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def wait_for_http(url: str, timeout: float, *, alive: Callable[[], None] | None = None) -> None:
    """Until ``url`` answers 200; ``alive`` raises when what should answer has died."""
    deadline = time.monotonic() + timeout
    last = "no answer"
    while time.monotonic() < deadline:
        if alive is not None:
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
        print(container_log(name, 80))
        raise
    finally:
        podman("rm", "--force", "--time", "0", name, check=False)


def container_state(name: str) -> str:
    """``running``, ``exited``, ``stopped`` …, as podman sees the container now."""
    return podman("inspect", "--format", "{{.State.Status}}", name).stdout.strip()


def container_log(name: str, lines: int) -> str:
    """The last ``lines`` of what the container wrote, stdout and stderr (where the service logs)."""
    done = podman("logs", "--tail", str(lines), name, check=False)
    return f"--- {name} ---\n{done.stdout}{done.stderr}"
