"""The local AWS endpoint refuses web pages and foreign Host names; boto3 and the AWS CLI work unchanged.

Through the real endpoint (moto behind :class:`trashsorter_cli.local.guard.LocalRequestGuard`, as
``trashsorter local up`` starts it): a page on another origin that submits an S3 browser-upload form (moto
accepts it unsigned) wrote a photo into ``images/`` - which ingest would catalogue and train on.
"""

from __future__ import annotations

import functools
import http.server
import os
import shutil
import subprocess
import threading
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest

from tests.support.browser import chromium_or_skip, dump_dom
from trashsorter_cli.local.server import LOCAL_CREDENTIALS, MotoServer, free_port

pytestmark = pytest.mark.integration

BUCKET = f"images-{uuid.uuid4().hex[:12]}"  # moto's state is per process: a bucket of this module's own
KEY = "images/Compost/from-a-web-page.jpg"


@pytest.fixture
def endpoint() -> Iterator[str]:
    server = MotoServer(port=free_port())
    url = server.start()
    try:
        yield url
    finally:
        server.stop()


def s3_client(url: str) -> Any:
    return boto3.client(
        "s3",
        endpoint_url=url,
        region_name="us-east-1",
        aws_access_key_id=LOCAL_CREDENTIALS["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=LOCAL_CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
    )


def form_upload(url: str, headers: dict[str, str]) -> int:
    """An unsigned S3 POST-object upload (what an HTML form can send), with the given browser headers."""
    boundary = uuid.uuid4().hex
    fields = {"key": KEY, "file": "not a photo"}
    body = "".join(
        f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'
        for name, value in fields.items()
    )
    request = urllib.request.Request(  # noqa: S310 - the local endpoint's http URL
        f"{url}/{BUCKET}",
        data=f"{body}--{boundary}--\r\n".encode(),
        method="POST",
        headers={"Content-Type": f"multipart/form-data; boundary={boundary}", **headers},
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310 - a local URL
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return exc.code


def keys(url: str) -> list[str]:
    return [o["Key"] for o in s3_client(url).list_objects_v2(Bucket=BUCKET).get("Contents", [])]


def test_boto3_and_the_aws_cli_still_work(endpoint: str, tmp_path: Path) -> None:
    s3 = s3_client(endpoint)
    s3.create_bucket(Bucket=BUCKET)
    s3.put_object(Bucket=BUCKET, Key="images/Compost/a.jpg", Body=b"x")
    assert "images/Compost/a.jpg" in keys(endpoint)
    assert form_upload(endpoint, {}) == 204  # a local program's unsigned form upload is not a browser's
    aws = shutil.which("aws")
    if aws is None:
        pytest.skip("NOT RUN (the boto3 part passed): the AWS CLI is not installed")
    env = {**os.environ, **LOCAL_CREDENTIALS, "AWS_DEFAULT_REGION": "us-east-1", "HOME": str(tmp_path)}
    listed = subprocess.run(
        [aws, "--endpoint-url", endpoint, "s3", "ls", f"s3://{BUCKET}/images/Compost/"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )
    assert listed.returncode == 0, listed.stderr
    assert "a.jpg" in listed.stdout


@pytest.mark.parametrize(
    "headers",
    [
        {"Origin": "http://attacker.example"},
        {"Origin": "null"},  # a sandboxed frame or a file:// page
        {"Origin": "http://127.0.0.1:1"},  # another local web server is another origin
        {"Sec-Fetch-Site": "cross-site"},  # no Origin (image and navigation loads), still a browser's
        {"Host": "rebound.attacker.example"},  # DNS rebinding: the page's own name resolved to 127.0.0.1
    ],
    ids=["foreign origin", "null origin", "other local port", "cross-site fetch", "rebound host"],
)
def test_browser_and_rebinding_requests_are_refused_before_moto(
    endpoint: str, headers: dict[str, str]
) -> None:
    s3_client(endpoint).create_bucket(Bucket=BUCKET)
    before = keys(endpoint)
    assert form_upload(endpoint, headers) == 403
    assert keys(endpoint) == before
    s3_client(endpoint).delete_object(Bucket=BUCKET, Key=KEY)
    assert form_upload(endpoint, {"Origin": endpoint}) == 204  # the endpoint's own origin is itself
    assert KEY in keys(endpoint)


class _Page(http.server.BaseHTTPRequestHandler):
    """A web page on another origin that submits an upload form to the local endpoint as it loads."""

    def do_GET(self) -> None:
        target = self.server.target  # type: ignore[attr-defined]
        html = (
            '<iframe name="sink"></iframe>'
            '<form id="f" method="POST" enctype="multipart/form-data" target="sink" '
            f'action="{target}/{BUCKET}">'
            f'<input name="key" value="{KEY}"><textarea name="file">not a photo</textarea></form>'
            '<script>document.getElementById("f").submit()</script>'
        ).encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(html)))
        self.end_headers()
        self.wfile.write(html)

    def log_message(self, *_args: object) -> None:
        pass


def test_a_web_page_cannot_write_to_the_local_endpoint_in_a_real_browser(endpoint: str) -> None:
    chromium = chromium_or_skip()
    s3_client(endpoint).create_bucket(Bucket=BUCKET)
    s3_client(endpoint).delete_object(Bucket=BUCKET, Key=KEY)
    page = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Page)
    page.target = endpoint  # type: ignore[attr-defined]
    thread = threading.Thread(target=page.serve_forever, daemon=True)
    thread.start()
    try:
        dump_dom(chromium, f"http://localhost:{page.server_address[1]}/")
    finally:
        page.shutdown()
    assert KEY not in keys(endpoint)  # unguarded, moto stored the page's upload under images/


def test_the_same_page_writes_to_an_unguarded_moto(tmp_path: Path) -> None:
    """The problem itself, for comparison: moto alone takes the page's unsigned upload."""
    from moto.server import ThreadedMotoServer

    chromium = chromium_or_skip()
    port = free_port()
    moto = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    moto.start()
    url = f"http://127.0.0.1:{port}"
    page = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Page))
    page.target = url  # type: ignore[attr-defined]
    threading.Thread(target=page.serve_forever, daemon=True).start()
    try:
        s3_client(url).create_bucket(Bucket=BUCKET)
        s3_client(url).delete_object(Bucket=BUCKET, Key=KEY)
        dump_dom(chromium, f"http://localhost:{page.server_address[1]}/")
        assert KEY in keys(url)
    finally:
        page.shutdown()
        moto.stop()
