"""Shared fixtures: the tiny preset is written once per test session and loaded once; a real
PostgreSQL server is started once per session for the tests that ask for one.

Services that the machine lacks skip their tests with the reason, unless
``LAYERDIFFUSE_REQUIRE_SERVICES=1`` (set by CI), where a missing service fails the run instead.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

from layerdiffuse_server.cpu_threads import prepare_environment

# Before torch loads, here and in every child process (they inherit the environment): OpenMP threads
# that sleep while they wait, so the suite stays fast on a machine that something else keeps busy.
prepare_environment()

import pytest  # noqa: E402
import torch  # noqa: E402

from layerdiffuse_server.settings import Settings  # noqa: E402
from layerdiffuse_server.store import Store, open_store  # noqa: E402

from . import server_process  # noqa: E402
from .support import postgres, radosgw  # noqa: E402

KEYS_DIR = Path(__file__).parent / "fixtures" / "keys"


def read_key_table(name: str) -> list[list[str]]:
    """Rows of a reference key table: key, shape and (for the LoRA table) the diffusers target."""
    lines = (KEYS_DIR / name).read_text().splitlines()
    return [line.split("\t") for line in lines if line and not line.startswith("#")]


def parse_shape(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in text.strip("[]").split(","))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Container tests last, their images building in the background from now on: the minutes of
    ``podman build`` overlap the rest of the suite instead of adding to it."""
    containers = [item for item in items if item.get_closest_marker("containers")]
    if not containers:
        return
    items[:] = [item for item in items if not item.get_closest_marker("containers")] + containers
    from .containers.conftest import IMAGE_BUILD
    from .containers.images import ImageBuild, unavailable_reason

    if unavailable_reason() is None:
        build = ImageBuild()
        build.start()
        config.stash[IMAGE_BUILD] = build


@pytest.hookimpl(trylast=True)
def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """After the last teardown, on failure and on Ctrl-C too: no service process outlives the run."""
    server_process.end_all()
    from .containers.conftest import IMAGE_BUILD

    if (build := session.config.stash.get(IMAGE_BUILD, None)) is not None:
        build.cancel()


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    """A SQLite store of the test's own, closed afterwards."""
    opened = open_store(f"sqlite:///{tmp_path / 'store.db'}")
    yield opened
    opened.close()


@pytest.fixture(scope="session")
def settings(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    return Settings(home=tmp_path_factory.mktemp("layerdiffuse-home"), device="cpu")


@pytest.fixture(scope="session")
def tiny_folder(settings: Settings) -> Path:
    from layerdiffuse_server.engine.presets import ensure_random_preset

    return ensure_random_preset("tiny", settings.presets_dir)


@pytest.fixture(scope="session")
def tiny_pipeline(settings: Settings, tiny_folder: Path) -> Iterator[object]:
    from layerdiffuse_server.engine.pipelines.transparent_sdxl import TransparentSDXLPipeline

    yield TransparentSDXLPipeline.from_preset("tiny", settings=settings, device="cpu")


@pytest.fixture(autouse=True)
def _seed_torch() -> None:
    """Tests that draw random tensors without their own generator still draw the same ones."""
    torch.manual_seed(0)


def service_unavailable(reason: str) -> None:
    """Skip (or, where CI requires every service, fail) a test whose service cannot run here."""
    if os.environ.get("LAYERDIFFUSE_REQUIRE_SERVICES") == "1":
        pytest.fail(f"{reason} (LAYERDIFFUSE_REQUIRE_SERVICES=1)")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[postgres.PostgresServer]:
    reason = postgres.available()
    if reason:
        service_unavailable(reason)
    with postgres.PostgresServer() as server:
        yield server


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """An empty database of each kind the store supports."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'store.db'}"
    return request.getfixturevalue("postgres_server").new_database()


@pytest.fixture(scope="session")
def rados_gateway() -> Iterator[radosgw.RadosGateway]:
    """A real S3 server (Ceph's radosgw), started once per session."""
    reason = radosgw.available()
    if reason:
        service_unavailable(reason)
    with radosgw.RadosGateway() as gateway:
        yield gateway


def s3_environment(gateway: radosgw.RadosGateway) -> dict[str, str]:
    """The standard AWS variables that point boto3 (and so the service) at the gateway."""
    return {
        "AWS_ENDPOINT_URL": gateway.endpoint_url,
        "AWS_ACCESS_KEY_ID": gateway.access_key,
        "AWS_SECRET_ACCESS_KEY": gateway.secret_key,
        "AWS_REGION": gateway.region,
    }


@pytest.fixture
def s3_bucket(rados_gateway: radosgw.RadosGateway, monkeypatch: pytest.MonkeyPatch) -> str:
    """A new, empty bucket; the AWS environment of this test points at the gateway. Its name."""
    import uuid

    import boto3

    for name, value in s3_environment(rados_gateway).items():
        monkeypatch.setenv(name, value)
    bucket = f"layerdiffuse-{uuid.uuid4().hex[:12]}"
    boto3.client("s3").create_bucket(Bucket=bucket)
    return bucket
