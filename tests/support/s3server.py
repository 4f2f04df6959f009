"""A real S3 API on loopback for tests: moto's standalone server (its S3 speaks the wire protocol boto and s3fs use,
conditional writes included) behind a middleware that counts requests by method, so a test can state what a round
costs in requests. Runs in its own process (``python tests/support/s3server.py PORT``) like a bucket on another host;
``GET /_fedrec/requests`` returns the counts, ``POST /_fedrec/requests`` returns them and starts again."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from contextlib import contextmanager
from pathlib import Path
from urllib.request import Request, urlopen

COUNTS = "/_fedrec/requests"
#: credentials the test server accepts (moto checks none); never real ones
TEST_ENV = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}


class Counting:
    def __init__(self, app):
        self.app, self.counts, self.lock = app, Counter(), threading.Lock()

    def __call__(self, environ, start_response):
        if environ.get("PATH_INFO") == COUNTS:
            with self.lock:  # POST: the counts so far, then start again
                body = json.dumps(dict(self.counts)).encode()
                if environ["REQUEST_METHOD"] == "POST":
                    self.counts.clear()
            start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
            return [body]
        with self.lock:
            self.counts[environ["REQUEST_METHOD"]] += 1
        return self.app(environ, start_response)


def serve(port: int) -> None:
    from moto.moto_server.werkzeug_app import DomainDispatcherApplication, create_backend_app
    from werkzeug.serving import make_server

    os.environ.setdefault("MOTO_PORT", str(port))
    app = Counting(DomainDispatcherApplication(create_backend_app))
    make_server("127.0.0.1", port, app, threaded=True).serve_forever()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class S3Server:
    def __init__(self, endpoint: str, proc: subprocess.Popen):
        self.endpoint, self.proc = endpoint, proc

    def requests(self, reset: bool = False) -> dict[str, int]:
        """Requests served since the last reset, by HTTP method (``reset``: and start counting again)."""
        with urlopen(Request(self.endpoint + COUNTS, method="POST" if reset else "GET"), timeout=10) as r:
            return json.loads(r.read())

    @property
    def env(self) -> dict[str, str]:
        """What a party's process needs to reach this server through fsspec/s3fs (no config change)."""
        return {**TEST_ENV, "FSSPEC_S3_ENDPOINT_URL": self.endpoint}

    def make_bucket(self, name: str) -> None:
        import boto3

        boto3.client("s3", endpoint_url=self.endpoint, **{k.lower(): v for k, v in TEST_ENV.items()
                                                          if k != "AWS_DEFAULT_REGION"},
                     region_name=TEST_ENV["AWS_DEFAULT_REGION"]).create_bucket(Bucket=name)


@contextmanager
def s3_server():
    port = _free_port()
    log = tempfile.TemporaryFile()  # the server logs every request: a pipe nobody reads would fill and stall it
    proc = subprocess.Popen([sys.executable, str(Path(__file__).resolve()), str(port)],
                            stdout=subprocess.DEVNULL, stderr=log)
    server = S3Server(f"http://127.0.0.1:{port}", proc)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                server.requests()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    log.seek(0)
                    raise RuntimeError(f"the S3 test server did not start: {log.read().decode()[-2000:]}")
                time.sleep(0.1)
        yield server
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        log.close()


if __name__ == "__main__":
    serve(int(sys.argv[1]))
