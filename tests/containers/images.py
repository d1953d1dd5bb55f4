"""The images the container tests run, built with podman from this checkout's ``Containerfile``.

No image registry is reachable from the machines the suite runs on, so every base image is made from
Debian's packages with ``mmdebstrap`` (which reaches Debian's mirrors like apt does): one with Python for
the product's images, one with PostgreSQL and Ceph's S3 gateway for the stand-ins of the compose file's
``postgres`` and MinIO services. The product's images are built exactly as the README says, with only
``BASE_IMAGE`` changed and pip inside the build configured like the host's pip (its CA bundle, local wheels
and indexes mounted read-only), since builds reach the package registries through the same gateway.

Building takes minutes, so ``ImageBuild.start`` runs it in a thread from the moment the suite is collected;
the container tests run last and wait for it. ``python -m tests.containers.images`` builds them on its own.
"""

from __future__ import annotations

import atexit
import functools
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
STANDINS = Path(__file__).parent / "standins"
DEBIAN_SUITE = "bookworm"
PYTHON_BASE_PACKAGES = ("python3", "python3-venv", "python3-pip", "ca-certificates", "curl")
SERVICES_BASE_PACKAGES = ("python3", "ca-certificates", "postgresql", "radosgw", "ceph-mon", "ceph-osd", "ceph-common")
TAG = "test"
LOG_TAIL_LINES = 60


@dataclass(frozen=True)
class BuiltImages:
    python_base: str
    engine: str
    api: str
    postgres: str
    s3: str


def unavailable_reason() -> str | None:
    """Why the images cannot be built here (a skip reason), or None."""
    for tool in ("podman", "mmdebstrap"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (Debian: apt-get install podman runc mmdebstrap)"
    done = subprocess.run(["podman", "info"], env=podman_environment(), capture_output=True, text=True)
    if done.returncode != 0:
        return f"podman does not work here: {done.stderr.strip()[-500:]}"
    return None


def podman_environment() -> dict[str, str]:
    """podman with the settings these machines need (``../shared/reference``-style hosts: crun cannot set
    rlimits, cgroups are mixed v1/v2), given through ``CONTAINERS_CONF`` so nothing in /etc changes. An
    operator's own CONTAINERS_CONF wins."""
    env = dict(os.environ)
    if "CONTAINERS_CONF" not in env:
        env["CONTAINERS_CONF"] = str(_containers_conf())
    return env


@functools.cache
def _containers_conf() -> Path:
    """Written once per process, into a file of its own: podman processes started from other threads
    must never read it half-written."""
    runtime = 'runtime = "runc"\n' if shutil.which("runc") else ""
    handle, name = tempfile.mkstemp(prefix="layerdiffuse-tests-", suffix=".containers.conf")
    with os.fdopen(handle, "w") as conf:
        conf.write(f'[containers]\ndefault_ulimits = []\n[engine]\ncgroup_manager = "cgroupfs"\n{runtime}')
    atexit.register(os.unlink, name)
    return Path(name)


def podman(*arguments: str, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        ["podman", *arguments], env=podman_environment(), capture_output=True, text=True, timeout=timeout
    )
    if check and done.returncode != 0:
        raise RuntimeError(f"podman {' '.join(arguments)} exited with {done.returncode}:\n{done.stderr[-4000:]}")
    return done


class ImageBuild:
    """Every image the container tests need, built once per session in a background thread."""

    def __init__(self, workdir: Path | None = None) -> None:
        self.workdir = workdir or Path(tempfile.mkdtemp(prefix="layerdiffuse-images-"))
        self.log_path = self.workdir / "build.log"
        self._thread: threading.Thread | None = None
        self._images: BuiltImages | None = None
        self._error: BaseException | None = None
        self._log_lock = threading.Lock()
        self._running: set[subprocess.Popen[bytes]] = set()
        self._cancelled = threading.Event()

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="image-build", daemon=True)
            self._thread.start()

    def result(self, timeout: float = 3600) -> BuiltImages:
        self.start()
        assert self._thread is not None
        self._thread.join(timeout)
        if self._thread.is_alive():
            raise TimeoutError(f"the images were not built in {timeout:.0f} s; {self._log_tail()}")
        if self._images is None:
            raise RuntimeError(f"building the images failed: {self._error}\n{self._log_tail()}")
        return self._images

    def _run(self) -> None:
        try:
            self._images = self._build()
        except BaseException as error:  # reported by result(), in the test that needs the images
            self._error = error

    def _build(self) -> BuiltImages:
        bases: dict[str, str] = {}

        errors: list[BaseException] = []

        def base(name: str, packages: tuple[str, ...]) -> None:
            try:
                bases[name] = self._debian_image(name, packages)
            except BaseException as error:  # re-raised below, from the build's own thread
                errors.append(error)

        threads = [
            threading.Thread(target=base, args=("layerdiffuse-test-python", PYTHON_BASE_PACKAGES)),
            threading.Thread(target=base, args=("layerdiffuse-test-services", SERVICES_BASE_PACKAGES)),
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        if errors:
            raise errors[0]

        python_base, services_base = bases["layerdiffuse-test-python"], bases["layerdiffuse-test-services"]
        api = self._product_image("api", f"localhost/layerdiffuse-api:{TAG}", python_base)
        engine = self._product_image("engine", f"localhost/layerdiffuse:{TAG}", python_base)
        postgres = self._standin("postgres", services_base, ())
        s3 = self._standin("s3", services_base, (REPO / "tests" / "support" / "radosgw.py",))
        return BuiltImages(python_base=python_base, engine=engine, api=api, postgres=postgres, s3=s3)

    def _debian_image(self, name: str, packages: tuple[str, ...]) -> str:
        """A base image from Debian's packages, named by what it holds: an unchanged list is built once per
        machine, not once per session."""
        digest = hashlib.sha256(f"{DEBIAN_SUITE} {' '.join(packages)}".encode()).hexdigest()[:12]
        image = f"localhost/{name}:{digest}"
        if podman("image", "exists", image, check=False).returncode == 0:
            self._log(f"{image}: already built")
            return image
        rootfs = self.workdir / f"{name}.tar"
        self._command(
            ["mmdebstrap", "--variant=minbase", f"--include={','.join(packages)}", DEBIAN_SUITE, str(rootfs)],
            timeout=1200,
        )
        self._command(["podman", "import", str(rootfs), image], timeout=600)
        rootfs.unlink()
        return image

    def _product_image(self, target: str, image: str, base: str) -> str:
        self._command(self.product_build_command(target, image, base, REPO), timeout=3000)
        return image

    def product_build_command(self, target: str, image: str, base: str, context: Path) -> list[str]:
        """The README's ``podman build``, with only the base image and pip's configuration changed."""
        return [
            "podman", "build", "--format", "docker", "--network", "host", "--target", target,
            "--build-arg", f"BASE_IMAGE={base}", *self._pip_like_the_host, "-t", image, str(context),
        ]  # fmt: skip

    def _standin(self, name: str, base: str, extra_files: tuple[Path, ...]) -> str:
        context = self.workdir / f"{name}-context"
        shutil.copytree(STANDINS, context, dirs_exist_ok=True)
        for extra in extra_files:
            shutil.copy(extra, context / extra.name)
        image = f"localhost/layerdiffuse-test-{name}:{TAG}"
        self._command(
            [
                "podman", "build", "--format", "docker", "--build-arg", f"SERVICES_BASE={base}",
                "-f", str(context / f"{name}.Containerfile"), "-t", image, str(context),
            ],
            timeout=600,
        )  # fmt: skip
        return image

    @functools.cached_property
    def _pip_like_the_host(self) -> list[str]:
        """``-v`` options that give pip inside the build the host's configuration: the CA bundle of a
        TLS-intercepting gateway, local wheel folders and indexes, constraints (``podman build --env`` does not
        reach RUN steps, a mounted /etc/pip.conf does)."""
        settings = _pip_settings()
        mounts: list[str] = []
        lines = ["[global]"]
        if cert := settings.get("cert"):
            mounts += ["-v", f"{cert}:/etc/ssl/certs/host-ca.crt:ro"]
            lines.append("cert = /etc/ssl/certs/host-ca.crt")
        for key in ("find-links", "constraint", "index-url", "extra-index-url"):
            if value := settings.get(key):
                for entry in value.split():
                    path = Path(entry.removeprefix("file://"))
                    # a local index's pages link to files beside it (../files/…): mount the folder above
                    folder = path.parent if key.endswith("index-url") else path
                    if path.is_absolute() and path.exists():
                        mounts += ["-v", f"{folder}:{folder}:ro"]
                lines.append(f"{key} = {value}")
        pip_conf = self.workdir / "pip.conf"
        pip_conf.write_text("\n".join(lines) + "\n")
        return [*mounts, "-v", f"{pip_conf}:/etc/pip.conf:ro"]

    def _command(self, command: list[str], timeout: float) -> None:
        if self._cancelled.is_set():
            raise RuntimeError("the build was cancelled")
        started = time.monotonic()
        self._log(f"$ {' '.join(command)}")
        with tempfile.TemporaryFile("w+") as output:
            process = subprocess.Popen(command, env=podman_environment(), stdout=output, stderr=subprocess.STDOUT)
            with self._log_lock:
                self._running.add(process)
            try:
                returncode = process.wait(timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                returncode = process.wait()
            finally:
                with self._log_lock:
                    self._running.discard(process)
            output.seek(0)
            self._log(output.read())
        self._log(f"(exit {returncode} after {time.monotonic() - started:.0f} s)")
        if returncode != 0:
            raise RuntimeError(f"{command[0]} {command[1]} exited with {returncode}")

    def cancel(self) -> None:
        """Stop a build still running when the session ends (a failed run, Ctrl-C): no podman build outlives it."""
        self._cancelled.set()
        with self._log_lock:
            running = list(self._running)
        for process in running:
            process.terminate()
        if self._thread is not None:
            self._thread.join(30)

    def _log(self, text: str) -> None:
        with self._log_lock, self.log_path.open("a") as log:
            log.write(text.rstrip("\n") + "\n")

    def _log_tail(self) -> str:
        lines = self.log_path.read_text(errors="replace").splitlines() if self.log_path.exists() else []
        return f"the last {LOG_TAIL_LINES} lines of {self.log_path}:\n" + "\n".join(lines[-LOG_TAIL_LINES:])


def _pip_settings() -> dict[str, str]:
    """The host pip's effective global settings; environment variables (PIP_CERT …) win over files."""
    done = subprocess.run([sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True)
    settings: dict[str, str] = {}
    from_env: dict[str, str] = {}
    for line in done.stdout.splitlines():
        name, _, value = line.partition("=")
        value = value.strip().strip("'\"")
        if name.startswith(":env:."):
            from_env[name.removeprefix(":env:.")] = value
        elif name.startswith(("global.", "install.")):
            settings[name.split(".", 1)[1]] = value
    return settings | from_env


if __name__ == "__main__":
    if reason := unavailable_reason():
        raise SystemExit(reason)
    build = ImageBuild()
    started = time.monotonic()
    print(f"building; log: {build.log_path}", flush=True)
    print(build.result(), f"in {time.monotonic() - started:.0f} s")
