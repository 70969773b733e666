"""Fixtures: tiny generated image datasets and a tiny search space, all in tmp dirs; an S3 server."""

from __future__ import annotations

import gc
import os
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from tests.helpers import TINY_SPACE, write_class_folders


@pytest.fixture
def image_folder(tmp_path: Path) -> Path:
    return write_class_folders(tmp_path / "data")


@pytest.fixture
def close_leftover_connections() -> Iterator[None]:
    """Storages opened in the test process (``main()`` in-process, storage polls) hold database
    connections until the garbage collector frees them; a full run exhausted PostgreSQL's 100."""
    yield
    gc.collect()


@pytest.fixture
def tiny_space(tmp_path: Path) -> Path:
    path = tmp_path / "tiny.toml"
    path.write_text(TINY_SPACE)
    return path


# The test models are tiny: one intra-op thread is as fast and does not fight other processes.
os.environ["AUTOCLS_THREADS"] = "1"
torch.set_num_threads(1)


S3_URL_ENV = "AUTOCLS_TEST_S3_URL"  # an S3 API endpoint to use instead of starting moto's server here
S3_SECRET = "s3cret-key-never-shown"  # the tests check that no output holds it


def _answers(url: str) -> bool:
    try:
        urllib.request.urlopen(url, timeout=2).close()
    except OSError as err:  # an HTTP error status is an answer too
        return hasattr(err, "code")
    return True


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    """A real S3 API on loopback: ``$AUTOCLS_TEST_S3_URL``, else moto's server started here (``moto[server]``
    is in the ``dev`` extra, so the S3 tests run wherever the test dependencies are installed; without
    it they skip, except under ``$AUTOCLS_TEST_REQUIRE_S3``, which CI sets)."""
    if os.environ.get(S3_URL_ENV):
        yield os.environ[S3_URL_ENV]
        return
    try:
        import moto.server  # noqa: F401
    except ImportError:
        why = "moto's S3 server is not installed: pip install -e '.[dev]', or set AUTOCLS_TEST_S3_URL"
        if os.environ.get("AUTOCLS_TEST_REQUIRE_S3"):  # CI (.ci/run): a skipped S3 test would pass unnoticed
            pytest.fail(why)
        pytest.skip(why)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while not _answers(url):
        assert server.poll() is None, "moto's S3 server exited: pip install -e '.[dev]' (moto[server])"
        assert time.monotonic() < deadline, "moto's S3 server did not answer in 60 s"
        time.sleep(0.2)
    yield url
    server.terminate()
    server.wait(timeout=30)


@dataclass(frozen=True)
class S3Bucket:
    url: str  # s3://BUCKET/PREFIX
    bucket: str
    env: dict[str, str]  # the AWS variables a subprocess needs


@pytest.fixture
def s3_bucket(s3_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> S3Bucket:
    """A new bucket on the test S3 server, and the AWS variables that reach it set in this process."""
    import boto3

    env = {
        "AWS_ENDPOINT_URL": s3_endpoint,
        "AWS_ACCESS_KEY_ID": "autocls-test-key",
        "AWS_SECRET_ACCESS_KEY": S3_SECRET,
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_EC2_METADATA_DISABLED": "true",
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    bucket = f"autocls-{uuid.uuid4().hex[:12]}"
    boto3.client("s3").create_bucket(Bucket=bucket)
    return S3Bucket(f"s3://{bucket}/runs", bucket, env)
