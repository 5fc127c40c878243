"""Where a job reads and writes: plain paths of this machine's file system, or URIs of any ``pyarrow.fs``
file system (``s3://bucket/prefix``, ``file:///abs/path``), behind one small interface, ``Storage``.

    plain path     -> LocalStorage    files written under a temporary name, fsynced, renamed into place
    scheme://...   -> ObjectStorage   pyarrow.fs; one whole write per file, no rename, create-only markers

Which one a location gets is decided by what it is: ``locate(text, field)`` turns a ``-m`` / ``--out``
argument into a ``pathlib.Path`` (a plain path, handled exactly as before this module existed) or a
``StorePath`` (a URI: the file system and the path in it). ``storage_of(path)`` gives the Storage of
either. A StorePath carries its file system, so it travels to Ray workers as it is (pyarrow file systems
pickle), and a worker never parses a URI again.

The two differ in one way that matters: where rename is a copy and a delete (S3, GCS), a file cannot be
put in place whole under a name another attempt may also use. So on an ObjectStorage
(``atomic_rename`` False) a unit's shards get names unique to the attempt, and its marker is written
once, by a create-only conditional write (``create_only``): the first attempt to create it wins
(jobs/folder.py, docs/SCALING.md "Object storage"). pyarrow.fs has no conditional write, so each scheme
brings its own (``CREATE_ONLY``): S3's ``put_object(IfNoneMatch='*')`` through boto3 (the ``s3`` extra),
and for ``file://`` a hard link of a finished temporary file, which fails if the name exists.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import secrets
import stat as stat_module
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol
from urllib.parse import parse_qs, urlsplit

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from zsteer.core.errors import ZsteerError, fault_reason, first_line

TMP_PREFIX = ".tmp-"
HASH_CHUNK = 1 << 20  # bytes hashed at a time: a shard is never held in memory to be checked
S3_EXTRA_HINT = "pip install 'zsteer[s3]'"


# ---------------------------------------------------------------------------------------------------------
# What both storages return


@dataclass(frozen=True)
class FileCheck:
    """What a marker records of each file it names, to tell it from a damaged or replaced one."""

    bytes: int  # size: a truncated or extended file is found by a stat alone
    sha256: str  # hex digest of the whole file: any altered byte


@dataclass(frozen=True)
class FileStat:
    """What a job asks of a file: its size, its modification time, and what kind of entry it is."""

    size: int
    mtime_ns: int  # an object store's LastModified (whole seconds on S3)
    kind: str  # "file", "folder", or "other" (a link not followed, a FIFO, a socket)


def _digest(stream) -> FileCheck:
    digest, size = hashlib.sha256(), 0
    for chunk in iter(lambda: stream.read(HASH_CHUNK), b""):
        digest.update(chunk)
        size += len(chunk)
    return FileCheck(size, digest.hexdigest())


# ---------------------------------------------------------------------------------------------------------
# The local file system: today's protocol (temporary name, fsync, rename), unchanged


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextmanager
def naming(path) -> Iterator[None]:
    """OS errors inside name ``path``: pyarrow's write errors (a full disk, a size limit) carry no file
    name, and the CLI prints an OSError as ``FILE: reason`` (cli/main.py)."""
    try:
        yield
    except OSError as exc:
        if exc.filename is not None:
            raise
        raise OSError(exc.errno, fault_reason(exc), str(path)) from exc


def file_check(path: Path) -> FileCheck:
    """Size and sha256 of ``path``, read in chunks (about 1 GB/s: docs/NOTES.md, "Checksums of committed shards")."""
    with open(path, "rb") as fh:
        return _digest(fh)


def write_bytes_atomic(path: Path, data: bytes) -> None:
    """Write ``path`` under a temporary name in the same folder, fsync, rename into place."""
    tmp = path.with_name(TMP_PREFIX + path.name)
    with naming(path), open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def write_json_atomic(path: Path, obj) -> None:
    write_bytes_atomic(path, json_bytes(obj))


def json_bytes(obj) -> bytes:
    """How zsteer writes its JSON files (job.json, markers, summary.json)."""
    return (json.dumps(obj, indent=2, sort_keys=False) + "\n").encode()


def write_parquet_atomic(table: pa.Table, path: Path) -> FileCheck:
    """One row group per shard: shards are bounded in rows, so a reader never needs more. Returns the
    size and sha256 of the file as written (read back from the page cache: a few ms a shard)."""
    tmp = path.with_name(TMP_PREFIX + path.name)
    with naming(path):
        pq.write_table(table, tmp, row_group_size=max(table.num_rows, 1))
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        check = file_check(tmp)
    os.replace(tmp, path)
    return check


def _local_kind(mode: int) -> str:
    return "file" if stat_module.S_ISREG(mode) else "folder" if stat_module.S_ISDIR(mode) else "other"


class StatQueries:
    """What both storages answer from their own ``_stat(path, follow_links)`` (a FileStat, None if absent)."""

    def stat(self, path, follow_links: bool = True, missing_ok: bool = True) -> FileStat | None:
        """Size, modification time and kind of ``path``: None if it is not there, or with ``missing_ok``
        False a FileNotFoundError naming it (as opening it would raise)."""
        found = self._stat(path, follow_links)
        if found is None and not missing_ok:
            raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), str(path))
        return found

    def is_file(self, path) -> bool:
        """Whether ``path`` is a regular file (a link is followed)."""
        found = self.stat(path)
        return found is not None and found.kind == "file"


class LocalStorage(StatQueries):
    """Plain paths: what zsteer did before URIs, call for call (so its output is the same, bit for bit)."""

    atomic_rename = True  # a file is renamed into place whole: shard names are reused by a retry

    def _stat(self, path: Path, follow_links: bool) -> FileStat | None:
        try:
            st = path.stat() if follow_links else path.lstat()
        except FileNotFoundError:
            return None
        return FileStat(st.st_size, st.st_mtime_ns, _local_kind(st.st_mode))

    def list_folder(self, path: Path, follow_links: bool = True) -> list[tuple[Path, FileStat | None]]:
        """Every entry directly in ``path`` (none if it does not exist), sorted, with its ``stat`` (None:
        gone since, or a link to nothing when ``follow_links``)."""
        entries = sorted(path.iterdir()) if path.is_dir() else []
        return [(entry, self.stat(entry, follow_links)) for entry in entries]

    def read_bytes(self, path: Path) -> bytes:
        return path.read_bytes()

    def open_input(self, path: Path):
        return open(path, "rb")

    def parquet_file(self, path: Path, **options) -> pq.ParquetFile:
        return pq.ParquetFile(path, **options)

    def file_check(self, path: Path) -> FileCheck:
        return file_check(path)

    def write_bytes(self, path: Path, data: bytes) -> None:
        write_bytes_atomic(path, data)

    def write_parquet(self, table: pa.Table, path: Path) -> FileCheck:
        return write_parquet_atomic(table, path)

    def remove(self, path: Path) -> None:
        path.unlink(missing_ok=True)

    def make_folder(self, path: Path) -> None:
        path.mkdir(parents=True, exist_ok=True)

    def sync_folder(self, path: Path) -> None:
        fsync_dir(path)


def _link_create(path: Path, data: bytes) -> bool:
    """Create ``path`` with ``data`` unless it exists, whole or not at all: the data goes to a file of a
    unique temporary name, which is then hard-linked to ``path`` (link fails if the name is taken,
    atomically, on every POSIX file system). No rename is involved."""
    tmp = path.with_name(f"{TMP_PREFIX}{secrets.token_hex(8)}-{path.name}")
    with naming(path), open(tmp, "xb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    try:
        os.link(tmp, path)
    except FileExistsError:
        return False
    finally:
        tmp.unlink()
    fsync_dir(path.parent)
    return True


# ---------------------------------------------------------------------------------------------------------
# Any pyarrow.fs file system reached by URI: whole writes, no rename, create-only markers


class CreateOnly(Protocol):
    """A store's create-only write: put ``data`` at ``path`` unless an object is there; False if one was."""

    def __call__(self, fs: pafs.FileSystem, path: str, data: bytes) -> bool: ...


@dataclass(frozen=True)
class LocalCreateOnly:
    """``file://``: a hard link of a finished temporary file (``_link_create``)."""

    def __call__(self, fs: pafs.FileSystem, path: str, data: bytes) -> bool:
        return _link_create(Path(path), data)


CONFLICT_RETRIES = 5  # tries of a create-only write that S3 answered 409 (a concurrent conditional write)
_S3_CLIENTS: dict = {}  # S3CreateOnly -> its boto3 client (made once per process; clients are thread-safe)
_S3_LOCK = threading.Lock()


@dataclass(frozen=True)
class S3CreateOnly:
    """``s3://``: ``put_object(IfNoneMatch='*')`` (S3's conditional write; a 412 means the key exists).
    The endpoint, region and keys come from the URI's query as pyarrow reads them; anything not given
    comes from boto3's usual places (environment, ~/.aws), as it does for pyarrow."""

    endpoint_url: str | None = None
    region: str | None = None
    access_key: str | None = field(default=None, repr=False)
    secret_key: str | None = field(default=None, repr=False)
    session_token: str | None = field(default=None, repr=False)

    def client(self):
        with _S3_LOCK:
            if self not in _S3_CLIENTS:
                boto3 = import_boto3("s3://")
                _S3_CLIENTS[self] = boto3.client(
                    "s3", endpoint_url=self.endpoint_url, region_name=self.region,
                    aws_access_key_id=self.access_key, aws_secret_access_key=self.secret_key,
                    aws_session_token=self.session_token,
                )  # fmt: skip
            return _S3_CLIENTS[self]

    def __call__(self, fs: pafs.FileSystem, path: str, data: bytes) -> bool:
        from botocore.exceptions import ClientError

        bucket, _, key = path.partition("/")
        tries = 0
        while True:
            try:
                self.client().put_object(Bucket=bucket, Key=key, Body=data, IfNoneMatch="*")
                return True
            except ClientError as exc:
                code = exc.response.get("Error", {}).get("Code")
                if code in ("PreconditionFailed", "412"):
                    return False
                # 409: another conditional write of the key was in flight; once it is done, a retry
                # gets 412 (it won) or succeeds (it failed), as S3's documentation says to do.
                tries += 1
                if code not in ("ConditionalRequestConflict", "409") or tries == CONFLICT_RETRIES:
                    raise OSError(None, f"S3 refused the write ({exc})", f"s3://{path}") from None
                time.sleep(0.1 * 2**tries)

    @staticmethod
    def from_query(query: dict[str, list[str]]) -> S3CreateOnly:
        one = {k: v[-1] for k, v in query.items()}
        endpoint = one.get("endpoint_override")
        if endpoint and "://" not in endpoint:
            endpoint = f"{one.get('scheme', 'https')}://{endpoint}"
        return S3CreateOnly(
            endpoint,
            one.get("region"),
            one.get("access_key"),
            one.get("secret_key"),
            one.get("session_token"),
        )


def import_boto3(where: str):
    """boto3, or a one-line error naming the extra that installs it."""
    try:
        import boto3
    except ImportError:
        raise ZsteerError(
            f"{where}: writing a job folder to S3 needs boto3 (pyarrow has no create-only write, which "
            f"the commit markers need); install the 's3' extra: {S3_EXTRA_HINT}"
        ) from None
    return boto3


def _file_stat(info: pafs.FileInfo) -> FileStat | None:
    if info.type == pafs.FileType.NotFound:
        return None
    kind = {pafs.FileType.File: "file", pafs.FileType.Directory: "folder"}.get(info.type, "other")
    return FileStat(info.size or 0, info.mtime_ns or 0, kind)


@dataclass(frozen=True)
class ObjectStorage(StatQueries):
    """A pyarrow.fs file system reached by a URI. Every file is written in one write, never renamed;
    markers by ``create_only``. On an object store one write is one PUT, visible whole or not at all.
    pyarrow's LocalFileSystem (``file://``) writes in place instead: shards and markers keep exactly once
    there too (unique names, markers linked whole), but a crash while job.json or summary.json is being
    written again can leave it cut short, so a local disk is better given as a plain path."""

    fs: pafs.FileSystem = field(compare=False)
    scheme: str  # how paths are shown: "s3" -> s3://bucket/key
    key: str  # the URI the file system was made from, less its path: what tells two stores apart
    # The store's create-only write; None: a store zsteer reads from but cannot commit to.
    create: CreateOnly | None = None

    atomic_rename = False  # a class attribute: names are unique per attempt, markers create-only

    def uri(self, path: str) -> str:
        return f"{self.scheme}://{path}"

    def _stat(self, path: StorePath, follow_links: bool) -> FileStat | None:
        return _file_stat(self.fs.get_file_info(path.path))  # a store has no links to follow

    def list_folder(
        self, path: StorePath, follow_links: bool = True
    ) -> list[tuple[StorePath, FileStat | None]]:
        """Every entry directly in ``path``, sorted, with the stat its listing returned: one LIST request
        for the folder, none per entry. ``follow_links`` as in ``stat``: a store has no links."""
        selector = pafs.FileSelector(path.path, allow_not_found=True, recursive=False)
        entries = [(StorePath(i.path, self), _file_stat(i)) for i in self.fs.get_file_info(selector)]
        return sorted(entries, key=lambda entry: entry[0])

    def find_files(self, path: StorePath) -> list[StorePath]:
        """Every file below ``path``, at any depth."""
        selector = pafs.FileSelector(path.path, allow_not_found=True, recursive=True)
        infos = self.fs.get_file_info(selector)
        return sorted(StorePath(i.path, self) for i in infos if i.type == pafs.FileType.File)

    def read_bytes(self, path: StorePath) -> bytes:
        with naming(path), self.fs.open_input_stream(path.path) as fh:
            return fh.read()

    def open_input(self, path: StorePath):
        return self.fs.open_input_file(path.path)

    def parquet_file(self, path: StorePath, **options) -> pq.ParquetFile:
        return pq.ParquetFile(path.path, filesystem=self.fs, **options)

    def file_check(self, path: StorePath) -> FileCheck:
        with self.fs.open_input_stream(path.path) as fh:
            return _digest(fh)

    def write_bytes(self, path: StorePath, data: bytes) -> None:
        """One write (on an object store, a reader sees the old object or the new one, never part of one)."""
        with naming(path), self.fs.open_output_stream(path.path) as out:
            out.write(data)

    def write_parquet(self, table: pa.Table, path: StorePath) -> FileCheck:
        """The shard is written to memory first (at most rows_per_shard rows), then in one write: its
        size and sha256 come from the bytes sent, with no read back from the store."""
        buffer = pa.BufferOutputStream()
        with naming(path):
            pq.write_table(table, buffer, row_group_size=max(table.num_rows, 1))
        data = buffer.getvalue().to_pybytes()
        self.write_bytes(path, data)
        return FileCheck(len(data), hashlib.sha256(data).hexdigest())

    def create_only(self, path: StorePath, data: bytes) -> bool:
        """Create ``path`` with ``data`` unless an object is there; False if another write's object is.

        True too when the object there holds exactly ``data``: a PUT that succeeded but lost its response
        is retried by botocore, and the retry meets the object it wrote itself (412). Equal bytes are this
        write's own: what zsteer creates names its writer (a marker its attempt's shard tokens and
        sha256s, a lease its host, pid and times), and where two writes' bytes are equal anyway, each
        would have written the same thing."""
        if self.create is None:
            raise ZsteerError(f"{path}: this store has no create-only write zsteer can use")
        with naming(path):
            if self.create(self.fs, path.path, data):
                return True
            try:
                return self.read_bytes(path) == data
            except FileNotFoundError:  # removed since (a lease that ran out): not ours
                return False

    def remove(self, path: StorePath) -> None:
        with suppress(FileNotFoundError):
            self.fs.delete_file(path.path)

    def make_folder(self, path: StorePath) -> None:
        self.fs.create_dir(path.path, recursive=True)

    def sync_folder(self, path: StorePath) -> None:
        """Nothing: a whole write is durable when it returns."""


@dataclass(frozen=True, order=True)
class StorePath:
    """A file or folder of an ObjectStorage: the path inside its file system (``bucket/prefix/x`` on
    S3, ``/abs/x`` for file://). Shown (``str``) as its URI; ``/``, ``name``, ``parent`` as a Path's."""

    path: str
    store: ObjectStorage = field(compare=False, repr=False)

    def __truediv__(self, name: str) -> StorePath:
        return StorePath(f"{self.path.rstrip('/')}/{name}", self.store)

    @property
    def name(self) -> str:
        return self.path.rstrip("/").rpartition("/")[2]

    @property
    def parent(self) -> StorePath:
        return StorePath(self.path.rstrip("/").rpartition("/")[0], self.store)

    def with_name(self, name: str) -> StorePath:
        return self.parent / name

    def is_relative_to(self, other) -> bool:
        return (
            isinstance(other, StorePath)
            and other.store.key == self.store.key
            and (self.path + "/").startswith(other.path.rstrip("/") + "/")
        )

    def __str__(self) -> str:
        return self.store.uri(self.path)


AnyPath = Path | StorePath
Storage = LocalStorage | ObjectStorage
LOCAL = LocalStorage()


def storage_of(path: AnyPath) -> Storage:
    """The Storage that reads and writes ``path``: by what it is (a plain path, or a URI's StorePath)."""
    return path.store if isinstance(path, StorePath) else LOCAL


# ---------------------------------------------------------------------------------------------------------
# From a URI to a StorePath: the schemes zsteer knows how to commit to, and any other pyarrow knows


def _s3(uri: str, query: dict) -> tuple[pafs.FileSystem, str, CreateOnly | None]:
    fs, path = pafs.FileSystem.from_uri(uri)
    return fs, path, S3CreateOnly.from_query(query)


def _file(uri: str, query: dict) -> tuple[pafs.FileSystem, str, CreateOnly | None]:
    fs, path = pafs.FileSystem.from_uri(uri)
    return fs, path, LocalCreateOnly()


# scheme -> (uri, its query) -> (file system, path in it, its create-only write). A scheme that is not
# here is opened by pyarrow.fs.FileSystem.from_uri with no create-only write: it can be read (-m), not
# committed to (--out). ``register_scheme`` adds one (tests add a file system whose rename fails).
SCHEMES: dict[str, Callable[[str, dict], tuple[pafs.FileSystem, str, CreateOnly | None]]] = {
    "s3": _s3,
    "file": _file,
}


def register_scheme(scheme: str, opener: Callable[[str, dict], tuple]) -> None:
    SCHEMES[scheme] = opener


def is_uri(text: str) -> bool:
    scheme, sep, _ = str(text).partition("://")
    return bool(sep) and scheme.replace("+", "").replace("-", "").replace(".", "").isalnum()


def read_as_uri_by_pyarrow(text: str) -> bool:
    """Whether pyarrow.fs takes ``text`` for a URI although it has no "://" (``file:out``, ``s3:bucket``,
    ``ab:c/d``). pyarrow's readers and writers resolve a path string that way when nothing is there yet
    (``pyarrow.fs._resolve_filesystem_and_path``), so such a text cannot be a plain path: its files would
    go to another file system, or fail at the first write. The test is pyarrow's own: a text it does not
    take for a URI fails to parse with "empty scheme" or "Cannot parse URI"."""
    if not urlsplit(text).scheme:  # no "scheme:" in front: a plain path, without asking pyarrow
        return False
    try:
        fs, path = pafs.FileSystem.from_uri(text)
    except (pa.ArrowException, ValueError, OSError) as exc:
        message = str(exc)
        return "empty scheme" not in message and "Cannot parse URI" not in message
    return not (isinstance(fs, pafs.LocalFileSystem) and path == text)  # an absolute path stays one


def locate(text: str | Path, field: str) -> AnyPath:
    """``-m`` / ``--out`` as given: a plain path stays a Path; a URI becomes a StorePath on its file
    system. A URI pyarrow cannot open (an unknown scheme, no bucket, a relative ``file:`` URI) is one
    line naming ``field``, and so is a path pyarrow would take for such a URI (``file:out``: click's
    path options give it as a Path)."""
    if isinstance(text, StorePath):
        return text
    if isinstance(text, Path) or not is_uri(text):
        # Something already there at that path (``-m latents:v2.parquet``) is read as a path, as pyarrow
        # reads it too; only a path to be made is refused when pyarrow would take it for a URI.
        if os.path.lexists(text) or not read_as_uri_by_pyarrow(str(text)):
            return Path(text)
        text = str(text)
    parts = urlsplit(text)
    scheme = parts.scheme.lower()
    opener = SCHEMES.get(scheme, lambda uri, query: (*pafs.FileSystem.from_uri(uri), None))
    try:
        fs, path, create = opener(text, parse_qs(parts.query))
    except (pa.ArrowException, ValueError, OSError) as exc:
        hint = (
            "give a path, or a URI such as s3://bucket/prefix or file:///absolute/path"
            if is_uri(text)
            else "pyarrow reads it as a URI, not a path: give an absolute path, or file:///absolute/path"
        )
        raise ZsteerError(
            f"{field} {text}: not a location zsteer can open ({first_line(exc)}); {hint}"
        ) from None
    if scheme == "s3" and not path.strip("/"):
        raise ZsteerError(f"{field} {text}: no bucket in the URI; expected s3://bucket/prefix")
    key = parts._replace(path="", fragment="").geturl()
    return StorePath(path.rstrip("/") or path, ObjectStorage(fs, scheme, key, create))


def check_writable(root: AnyPath, field: str = "--out") -> None:
    """Refuse, in one line, a URI a job folder cannot be committed to: a store with no create-only
    write, S3 without boto3, a bucket that does not exist."""
    if not isinstance(root, StorePath):
        return
    store = root.store
    if store.create is None:
        raise ZsteerError(
            f"{field} {root}: zsteer commits job folders only to plain paths, file:// and s3:// URIs (its "
            f"commit markers need a create-only write, which {store.scheme}:// lacks in pyarrow.fs)"
        )
    if isinstance(store.create, S3CreateOnly):
        import_boto3(f"{field} {root}")
        bucket = root.path.split("/", 1)[0]
        try:
            info = store.fs.get_file_info(bucket)
        except OSError as exc:
            raise ZsteerError(f"{field} {root}: cannot reach the bucket ({exc})") from None
        if info.type == pafs.FileType.NotFound:
            raise ZsteerError(f"{field} {root}: bucket {bucket!r} does not exist (create it first)")
