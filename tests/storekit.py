"""Helpers of the object-storage tests (no tests here): a local file system that cannot rename, reached by
the ``norename://`` scheme, and a local S3 (moto's server) for ``s3://``.

``norename:///abs/path`` is ``file:///abs/path`` through a pyarrow ``PyFileSystem`` whose ``move`` fails,
so a job that wrote anything by rename there would fail: what passes uses the object-store protocol
only (whole writes, names unique per attempt, create-only markers). Ray workers cannot import the tests'
modules, so the Ray test registers this module to be pickled by value, as tests/raykit.py is.
"""

from __future__ import annotations

import contextlib
import logging
import os
from urllib.parse import urlsplit

import pyarrow.fs as pafs

from zsteer.jobs.storage import LocalCreateOnly, register_scheme

SCHEME = "norename"
BUCKET = "zsteer-test"


class NoRenameHandler(pafs.FileSystemHandler):
    """pyarrow's LocalFileSystem, every call passed on, but ``move`` (rename) refused; counts moves tried."""

    def __init__(self):
        self.fs = pafs.LocalFileSystem()

    def __eq__(self, other):
        return isinstance(other, NoRenameHandler)

    def __ne__(self, other):
        return not self == other

    def get_type_name(self):
        return SCHEME

    def normalize_path(self, path):
        return self.fs.normalize_path(path)

    def get_file_info(self, paths):
        return self.fs.get_file_info(paths)

    def get_file_info_selector(self, selector):
        return self.fs.get_file_info(selector)

    def create_dir(self, path, recursive):
        self.fs.create_dir(path, recursive=recursive)

    def delete_dir(self, path):
        self.fs.delete_dir(path)

    def delete_dir_contents(self, path, missing_dir_ok=False):
        self.fs.delete_dir_contents(path, missing_dir_ok=missing_dir_ok)

    def delete_root_dir_contents(self):
        raise OSError("not in a test")

    def delete_file(self, path):
        self.fs.delete_file(path)

    def move(self, src, dest):
        raise OSError(f"rename is disabled on {SCHEME}:// ({src} -> {dest})")

    def copy_file(self, src, dest):
        self.fs.copy_file(src, dest)

    def open_input_stream(self, path):
        return self.fs.open_input_stream(path)

    def open_input_file(self, path):
        return self.fs.open_input_file(path)

    def open_output_stream(self, path, metadata):
        return self.fs.open_output_stream(path, metadata=metadata)

    def open_append_stream(self, path, metadata):
        raise OSError(f"append is disabled on {SCHEME}://")


def _open_norename(uri: str, query: dict):
    """``norename:///abs/path`` -> (the no-rename file system, "/abs/path", create by hard link)."""
    return pafs.PyFileSystem(NoRenameHandler()), urlsplit(uri).path, LocalCreateOnly()


def register() -> None:
    register_scheme(SCHEME, _open_norename)


def uri(path) -> str:
    """The ``norename://`` URI of a local absolute path."""
    return f"{SCHEME}://{os.path.abspath(path)}"


@contextlib.contextmanager
def s3_server():
    """A local S3 (moto's threaded server) with one bucket; yields the URI query that reaches it
    (``?endpoint_override=...&scheme=http&region=...``). The environment points pyarrow and boto3 at it
    too (``AWS_ENDPOINT_URL``, as for MinIO), so plain ``s3://bucket/key`` URIs reach it; any keys."""
    import boto3
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # moto's server logs every request
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    env = {"AWS_ACCESS_KEY_ID": "x", "AWS_SECRET_ACCESS_KEY": "x", "AWS_DEFAULT_REGION": "us-east-1"}
    env["AWS_ENDPOINT_URL"] = f"http://{host}:{port}"
    before = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        boto3.client("s3").create_bucket(Bucket=BUCKET)
        yield f"endpoint_override={host}:{port}&scheme=http&region=us-east-1"
    finally:
        server.stop()
        for k, v in before.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
