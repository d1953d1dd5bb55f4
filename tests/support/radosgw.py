"""A throw-away single-node Ceph cluster with an S3 gateway (radosgw), for tests that need a real S3 server.

Ceph's gateway checks signatures and implements multipart uploads, presigned URLs and error codes the way
production S3 deployments see them, which an in-process fake does not guarantee. The cluster is as small as
Ceph allows: one monitor, one OSD that keeps its objects in memory (``memstore``) and one radosgw, all started
in the foreground from a temporary directory on free 127.0.0.1 ports. Nothing touches /etc/ceph, /var/lib/ceph,
/var/log/ceph, /var/run/ceph or systemd, so several gateways can run side by side (e.g. under pytest-xdist) and
stopping one leaves no process and no file behind.

Objects live in the OSD's memory, capped at 1 GiB: beyond that, writes hang instead of failing. Deleted objects
over 4 MiB keep counting for two hours, until radosgw's garbage collection frees their tails.

``python -m tests.support.radosgw`` starts one and exercises it with boto3 and httpx.
"""

from __future__ import annotations

import atexit
import contextlib
import http.client
import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from types import TracebackType
from typing import Any, Self

BINARIES = ("monmaptool", "ceph-mon", "ceph", "ceph-osd", "radosgw", "radosgw-admin")
MON_ID = "a"
GATEWAY_NAME = "client.rgw.gateway"
LOG_TAIL_LINES = 30
POLL_SECONDS = 0.1


def available() -> str | None:
    """Why no gateway can be started on this machine (a skip reason), or None when one can."""
    missing = [binary for binary in BINARIES if shutil.which(binary) is None]
    if missing:
        return (
            f"Ceph is not installed ({', '.join(missing)} not on PATH); "
            "install the radosgw, ceph-mon, ceph-osd and ceph-common packages"
        )
    return None


class RadosGatewayError(RuntimeError):
    """The cluster did not come up; the message ends with the tail of every log, so CI output is enough."""


def free_ports(count: int) -> list[int]:
    """Ports the kernel just handed out; holding all sockets open at once keeps the ports distinct.

    Here rather than in a shared module because this file also runs on its own, inside a container;
    the other tests that need several free ports import it from here."""
    with contextlib.ExitStack() as stack:
        probes = [stack.enter_context(socket.socket()) for _ in range(count)]
        for probe in probes:
            probe.bind(("127.0.0.1", 0))
        return [probe.getsockname()[1] for probe in probes]


def _ceph_conf(root: Path, fsid: str, mon_addresses: str, gateway_host: str, gateway_port: int) -> str:
    return f"""\
[global]
fsid = {fsid}
mon host = {mon_addresses}
# Loopback only: without an address the OSD listens on every interface.
public addr = 127.0.0.1
cluster addr = 127.0.0.1
# No cephx: nothing to protect, and no keyrings to create. Without cephx there is no session key to encrypt
# with, so every connection uses crc mode; radosgw would otherwise insist on "secure" towards the monitor, log
# "get_initial_auth_request returned -13" every 3 s and give up only after its 300 s init timeout.
auth cluster required = none
auth service required = none
auth client required = none
ms cluster mode = crc
ms service mode = crc
ms client mode = crc
ms mon cluster mode = crc
ms mon service mode = crc
ms mon client mode = crc
# Every path a daemon or client writes defaults to somewhere under /var.
run dir = {root}/run
crash dir = {root}/crash
log file = {root}/log/$name.log
mon cluster log file = {root}/log/cluster.$channel.log
# One OSD: one replica, few placement groups, no placement across hosts.
osd pool default size = 1
osd pool default min size = 1
osd pool default pg num = 8
osd pool default pgp num = 8
osd crush chooseleaf type = 0

[mon]
mon data = {root}/mon
mon allow pool size one = true
mon warn on pool no redundancy = false
# The monitor shuts itself down below 5 % free disk by default; a nearly full CI disk must not kill it.
mon data avail crit = 0
mon data avail warn = 0
# Each pool radosgw creates is an osdmap change, committed after this interval (1 s by default).
paxos propose interval = 0.05
admin socket = {root}/run/$name.asok

[osd]
osd data = {root}/osd
osd objectstore = memstore
# memstore keeps objects in RAM and reports this as its capacity. Past 97 % of it the OSD's failsafe drops
# writes without answering: S3 requests hang rather than fail, but a runaway test cannot exhaust the machine.
memstore device bytes = {1 << 30}
admin socket = {root}/run/$name.asok

[{GATEWAY_NAME}]
rgw frontends = beast endpoint={gateway_host}:{gateway_port}
rgw data = {root}/rgw
rgw enable apis = s3
rgw thread pool size = 16
# Resharding rewrites a bucket's index in the background; tests want the same behaviour on every run.
rgw dynamic resharding = false
admin socket = {root}/run/$name.asok
"""


class RadosGateway:
    """One cluster and its gateway. Each ``start`` makes a fresh, empty cluster; ``stop`` is idempotent."""

    region = "us-east-1"

    def __init__(
        self,
        *,
        listen: str = "127.0.0.1",
        port: int = 0,
        access_key: str = "RGWTESTACCESSKEY0001",
        secret_key: str = "rgw-test-secret-key-0000000000000000000001",
    ) -> None:
        """``listen`` and ``port`` place the S3 frontend only (a free loopback port by default); the monitor
        and the OSD stay on loopback. A container's gateway listens on every interface of the container."""
        self.access_key, self.secret_key = access_key, secret_key
        self._listen, self._fixed_port = listen, port
        self._root: Path | None = None
        self._port = 0
        self._daemons: dict[str, subprocess.Popen[bytes]] = {}
        # CEPH_ARGS and CEPH_CONF from the caller's environment would point the tools at another cluster.
        self._env = {name: value for name, value in os.environ.items() if not name.startswith("CEPH_")}

    @property
    def endpoint_url(self) -> str:
        if self._root is None:
            raise RuntimeError("the gateway is not running")
        host = "127.0.0.1" if self._listen in ("0.0.0.0", "127.0.0.1") else self._listen
        return f"http://{host}:{self._port}"

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.stop()

    def start(self, timeout: float = 120) -> None:
        if self._root is not None:
            raise RuntimeError("the gateway is already running")
        deadline = time.monotonic() + timeout
        self._root = Path(tempfile.mkdtemp(prefix="radosgw-"))
        # A test run that ends without stopping the gateway must not leave daemons running forever.
        atexit.register(self.stop)
        try:
            self._bootstrap(deadline)
        except BaseException as error:
            logs = self._log_tails()
            self.stop()
            if isinstance(error, Exception):
                raise RadosGatewayError(f"radosgw did not start: {error}\n{logs}") from error
            raise

    def stop(self) -> None:
        """SIGKILL rather than SIGTERM: a memstore OSD that shuts down cleanly first writes every object it
        holds to disk, only for the directory to be deleted."""
        for process in self._daemons.values():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
        for process in self._daemons.values():
            process.wait()
        self._daemons.clear()
        if self._root is not None:
            shutil.rmtree(self._root, ignore_errors=True)
            self._root = None
        atexit.unregister(self.stop)

    def _bootstrap(self, deadline: float) -> None:
        root = self._path()
        for directory in ("log", "run", "crash", "mon", "osd", "rgw"):
            (root / directory).mkdir()
        fsid = str(uuid.uuid4())
        mon_v2_port, mon_v1_port, free_port = free_ports(3)
        self._port = self._fixed_port or free_port
        mon_addresses = f"[v2:127.0.0.1:{mon_v2_port},v1:127.0.0.1:{mon_v1_port}]"
        (root / "ceph.conf").write_text(_ceph_conf(root, fsid, mon_addresses, self._listen, self._port))

        monmap = str(root / "monmap")
        self._run(deadline, "monmaptool", "--create", "--addv", MON_ID, mon_addresses, "--fsid", fsid, monmap)
        self._run(deadline, "ceph-mon", "--mkfs", "-i", MON_ID, "--monmap", monmap)
        self._spawn(f"mon.{MON_ID}", "ceph-mon", "-i", MON_ID)

        # `osd new` is the monitor's answer that it is up, and registers the OSD before its first boot.
        osd_uuid = str(uuid.uuid4())
        osd_id = self._run(deadline, "ceph", "osd", "new", osd_uuid).strip()
        self._run(deadline, "ceph-osd", "--mkfs", "-i", osd_id, "--osd-uuid", osd_uuid)
        self._spawn(f"osd.{osd_id}", "ceph-osd", "-i", osd_id)
        self._wait_for_osd(deadline)
        self._spawn(GATEWAY_NAME, "radosgw", "-n", GATEWAY_NAME)
        self._wait_for_gateway(deadline)

        # Only now: radosgw-admin racing radosgw for the first zone setup can leave two default zonegroups.
        self._run(
            deadline,
            "radosgw-admin", "user", "create", "--uid", "test", "--display-name", "test",
            "--access-key", self.access_key, "--secret", self.secret_key,
        )  # fmt: skip

    def _path(self) -> Path:
        if self._root is None:
            raise RuntimeError("the gateway is not running")
        return self._root

    def _command(self, binary: str, *arguments: str) -> list[str]:
        return [binary, "-c", str(self._path() / "ceph.conf"), *arguments]

    def _spawn(self, name: str, binary: str, *arguments: str) -> None:
        """Foreground daemons in their own process group: ``stop`` can then kill each with everything it started."""
        with (self._path() / "log" / f"{name}.out").open("wb") as output:
            self._daemons[name] = subprocess.Popen(
                self._command(binary, "-f", *arguments),
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=subprocess.STDOUT,
                env=self._env,
                start_new_session=True,
            )

    def _run(self, deadline: float, binary: str, *arguments: str) -> str:
        """Run a tool to completion, giving up early when a daemon dies: Ceph clients wait for a monitor forever."""
        command = self._command(binary, *arguments)
        process = subprocess.Popen(
            command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=self._env
        )
        try:
            while True:
                try:
                    stdout, stderr = process.communicate(timeout=POLL_SECONDS)
                    break
                except subprocess.TimeoutExpired:
                    self._check_daemons(deadline)
        finally:
            if process.poll() is None:
                process.kill()
                process.communicate()
        if process.returncode != 0:
            raise RuntimeError(f"{shlex.join(command)} exited with status {process.returncode}:\n{stderr}{stdout}")
        return stdout

    def _wait_for_osd(self, deadline: float) -> None:
        """radosgw creates its pools as soon as it starts. A pool created while the OSD is still booting gets its
        placement groups only at the monitor's next tick, which stalls the gateway's start by up to 5 s."""
        while json.loads(self._run(deadline, "ceph", "osd", "stat", "--format", "json"))["num_up_osds"] == 0:
            time.sleep(POLL_SECONDS)

    def _wait_for_gateway(self, deadline: float) -> None:
        while not self._gateway_answers():
            self._check_daemons(deadline)
            time.sleep(POLL_SECONDS)

    def _gateway_answers(self) -> bool:
        """Any HTTP answer will do: the S3 frontend only listens once radosgw has its pools and zone.

        http.client rather than urllib, which would send the request to a proxy named in the environment."""
        connection = http.client.HTTPConnection("127.0.0.1", self._port, timeout=1)
        try:
            connection.request("GET", "/")
            connection.getresponse().read()
            return True
        except OSError:
            return False
        finally:
            connection.close()

    def check_daemons_alive(self) -> None:
        """Raise when a daemon has exited: a served gateway must end rather than answer nothing."""
        self._check_daemons(float("inf"))

    def _check_daemons(self, deadline: float) -> None:
        for name, process in self._daemons.items():
            if process.poll() is not None:
                raise RuntimeError(f"{name} exited with status {process.returncode}")
        if time.monotonic() > deadline:
            raise TimeoutError("not ready before the deadline")

    def _log_tails(self) -> str:
        if self._root is None:
            return ""
        tails = []
        for log in sorted((self._root / "log").glob("*")):
            lines = log.read_text(errors="replace").splitlines()[-LOG_TAIL_LINES:]
            tails.append(f"--- {log.name} (last {len(lines)} lines) ---\n" + "\n".join(lines))
        return "\n".join(tails)


def _verify(gateway: RadosGateway) -> None:
    """Exercise what tests lean on, including that a bad signature is refused rather than ignored."""
    import boto3
    import httpx
    from botocore.config import Config
    from botocore.exceptions import ClientError

    def client(secret_key: str) -> Any:  # boto3 builds its clients at run time, untyped
        return boto3.client(
            "s3",
            endpoint_url=gateway.endpoint_url,
            aws_access_key_id=gateway.access_key,
            aws_secret_access_key=secret_key,
            region_name=gateway.region,
            config=Config(signature_version="s3v4", s3={"addressing_style": "path"}),
        )

    s3 = client(gateway.secret_key)
    bucket = "verify"
    s3.create_bucket(Bucket=bucket)
    s3.put_object(Bucket=bucket, Key="hello.txt", Body=b"hello")
    assert s3.get_object(Bucket=bucket, Key="hello.txt")["Body"].read() == b"hello"
    assert [entry["Key"] for entry in s3.list_objects_v2(Bucket=bucket)["Contents"]] == ["hello.txt"]

    get_url = s3.generate_presigned_url("get_object", Params={"Bucket": bucket, "Key": "hello.txt"}, ExpiresIn=60)
    assert "X-Amz-Signature=" in get_url, get_url
    with httpx.Client(trust_env=False) as presigned:  # trust_env: no proxy between us and 127.0.0.1
        response = presigned.get(get_url)
        assert response.status_code == 200 and response.content == b"hello", response.text
        forged = get_url.replace("X-Amz-Signature=", "X-Amz-Signature=0")
        assert presigned.get(forged).status_code == 403

        put_url = s3.generate_presigned_url("put_object", Params={"Bucket": bucket, "Key": "put.bin"}, ExpiresIn=60)
        response = presigned.put(put_url, content=b"presigned")
        assert response.status_code == 200, response.text
        assert s3.get_object(Bucket=bucket, Key="put.bin")["Body"].read() == b"presigned"

    parts = [os.urandom(5 << 20), os.urandom(5 << 20)]
    upload = s3.create_multipart_upload(Bucket=bucket, Key="multipart.bin")["UploadId"]
    etags = [
        s3.upload_part(Bucket=bucket, Key="multipart.bin", UploadId=upload, PartNumber=number, Body=part)["ETag"]
        for number, part in enumerate(parts, start=1)
    ]
    s3.complete_multipart_upload(
        Bucket=bucket,
        Key="multipart.bin",
        UploadId=upload,
        MultipartUpload={"Parts": [{"PartNumber": n, "ETag": etag} for n, etag in enumerate(etags, start=1)]},
    )
    assert s3.get_object(Bucket=bucket, Key="multipart.bin")["Body"].read() == b"".join(parts)

    try:
        client("not-the-secret").list_buckets()
    except ClientError as error:
        assert error.response["ResponseMetadata"]["HTTPStatusCode"] == 403, error.response
    else:
        raise AssertionError("a request signed with the wrong secret was accepted")

    for key in ("hello.txt", "put.bin", "multipart.bin"):
        s3.delete_object(Bucket=bucket, Key=key)
    s3.delete_bucket(Bucket=bucket)
    assert s3.list_buckets()["Buckets"] == []


def _serve() -> None:
    """The gateway as a container's only process: S3 on ``0.0.0.0:$S3_PORT`` (9000) with the keys MinIO's
    image reads (``MINIO_ROOT_USER``, ``MINIO_ROOT_PASSWORD``), until SIGTERM. Arguments are ignored, so the
    compose file's ``command: ["server", "/data"]`` for MinIO starts this as it is."""
    gateway = RadosGateway(
        listen="0.0.0.0",
        port=int(os.environ.get("S3_PORT", "9000")),
        access_key=os.environ["MINIO_ROOT_USER"],
        secret_key=os.environ["MINIO_ROOT_PASSWORD"],
    )
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    with gateway:
        print(f"radosgw: S3 on {gateway.endpoint_url.rsplit(':', 1)[1]} (every interface)", flush=True)
        while True:
            gateway.check_daemons_alive()
            time.sleep(1)


if __name__ == "__main__":
    if reason := available():
        raise SystemExit(reason)
    if sys.argv[1:2] == ["serve"]:
        _serve()
        raise SystemExit(0)
    gateway = RadosGateway()
    for attempt in (1, 2):  # the second round proves a stopped gateway starts again
        started = time.monotonic()
        with gateway:
            print(f"start {attempt}: {time.monotonic() - started:.1f} s, {gateway.endpoint_url}", flush=True)
            _verify(gateway)
        print(f"start {attempt}: verified and stopped", flush=True)
