"""Where experiments live: a local folder or cloud storage (s3://, gs://), read and written
through pyarrow's filesystems, as Ray Tune stores its own files.

:class:`StoragePath` has the few pathlib operations clustune needs, on any of them. Writes are
atomic: locally a temporary file renamed into place, in a bucket one PUT (an object appears
whole or not at all). S3-compatible servers other than AWS: set ``AWS_ENDPOINT_URL`` (or add
``?endpoint_override=HOST:PORT`` to the URI).
"""

from __future__ import annotations

import fnmatch
import os
import posixpath
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import quote, urlsplit

import pyarrow as pa
import pyarrow.fs as pafs

from ._errors import ClustuneError, first_line
from ._files import atomic_write_bytes, create_text

__all__ = ["StoragePath", "StorageError", "storage_path", "credentials_hidden",
           "CREDENTIAL_VARIABLES"]

# the secrets of the environment that Ray Tune copies into every trial's runtime environment
# (ray/tune/execution/class_cache.py), where Ray's runtime-env agent logs them in clear text
CREDENTIAL_VARIABLES = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN",
                        "AWS_SECURITY_TOKEN")
# one filesystem per bucket (and endpoint) and process, made once
_FILESYSTEMS: dict[tuple[str, str, str, str], pafs.FileSystem] = {}


def _filesystem(key: tuple[str, str, str, str]) -> pafs.FileSystem:
    """This process's filesystem for a bucket: S3 keys in the environment are read once, now,
    into it (the environment may lose them later: :func:`credentials_hidden`); otherwise the
    SDK's own chain finds them (credential files, an instance profile)."""
    if key not in _FILESYSTEMS:
        scheme, bucket, query, _ = key
        suffix = f"{bucket}" + (f"?{query}" if query else "")
        fs = pafs.FileSystem.from_uri(f"{scheme}://{suffix}")[0]
        key_id, secret = (os.environ.get(n) for n in CREDENTIAL_VARIABLES[:2])
        if scheme == "s3" and key_id and secret:
            token = os.environ.get("AWS_SESSION_TOKEN") or os.environ.get("AWS_SECURITY_TOKEN")
            if token:
                endpoint = urlsplit(os.environ.get("AWS_ENDPOINT_URL", ""))
                fs = pafs.S3FileSystem(
                    access_key=key_id, secret_key=secret, session_token=token, region=fs.region,
                    endpoint_override=endpoint.netloc or None, scheme=endpoint.scheme or "https")
            else:
                fs = pafs.FileSystem.from_uri(
                    f"s3://{quote(key_id, safe='')}:{quote(secret, safe='')}@{suffix}")[0]
        _FILESYSTEMS[key] = fs
    return _FILESYSTEMS[key]


class _ThisNodesCredentials(pafs.FileSystemHandler):
    """A cloud filesystem that pickles as its location, never as its credentials: unpickled
    in this process it is the filesystem this process made (with the credentials it resolved),
    and in another (a Ray worker, on any node) one made there from that node's own. Ray Tune
    copies the experiment's filesystem into every trial; a pyarrow S3 filesystem given keys
    would carry them along in clear text."""

    def __init__(self, key: tuple[str, str, str, str]) -> None:
        self.key = key
        self.fs = _filesystem(key)

    def __reduce__(self) -> tuple:
        return _ThisNodesCredentials, (self.key,)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _ThisNodesCredentials) and other.key == self.key

    def __hash__(self) -> int:
        return hash(self.key)

    def get_type_name(self) -> str:
        return self.fs.type_name

    def normalize_path(self, path: str) -> str:
        return self.fs.normalize_path(path)

    def get_file_info(self, paths: list[str]) -> list[pafs.FileInfo]:
        return self.fs.get_file_info(paths)

    def get_file_info_selector(self, selector: pafs.FileSelector) -> list[pafs.FileInfo]:
        return self.fs.get_file_info(selector)

    def create_dir(self, path: str, recursive: bool) -> None:
        self.fs.create_dir(path, recursive=recursive)

    def delete_dir(self, path: str) -> None:
        self.fs.delete_dir(path)

    def delete_dir_contents(self, path: str, missing_dir_ok: bool = False) -> None:
        self.fs.delete_dir_contents(path, missing_dir_ok=missing_dir_ok)

    def delete_root_dir_contents(self) -> None:
        self.fs.delete_dir_contents("/", accept_root_dir=True)

    def delete_file(self, path: str) -> None:
        self.fs.delete_file(path)

    def move(self, src: str, dest: str) -> None:
        self.fs.move(src, dest)

    def copy_file(self, src: str, dest: str) -> None:
        self.fs.copy_file(src, dest)

    def open_input_stream(self, path: str):
        return self.fs.open_input_stream(path)

    def open_input_file(self, path: str):
        return self.fs.open_input_file(path)

    def open_output_stream(self, path: str, metadata: dict | None):
        return self.fs.open_output_stream(path, metadata=metadata)

    def open_append_stream(self, path: str, metadata: dict | None):
        return self.fs.open_append_stream(path, metadata=metadata)


class StorageError(ClustuneError, OSError):
    """A storage location that cannot be used: unknown scheme, no such bucket, no access."""


class StoragePath:
    """A file or folder on a pyarrow filesystem; ``str()`` is what users type to name it."""

    def __init__(self, fs: pafs.FileSystem, path: str, scheme: str = "", query: str = "") -> None:
        self.fs, self.path, self.scheme, self.query = fs, path.rstrip("/") or "/", scheme, query

    @property
    def is_local(self) -> bool:
        return not self.scheme

    @property
    def local(self) -> Path:
        """The path on this machine (local storage only)."""
        if not self.is_local:
            raise StorageError(f"{self} is not on this machine")
        return Path(self.path)

    def __fspath__(self) -> str:
        """A local one works wherever a path does (open, Path, pyarrow, torch)."""
        return str(self.local)

    @property
    def uri(self) -> str:
        """The full location: with the query (endpoint) Ray Tune and pyarrow need, or the
        absolute path of a local one."""
        if self.is_local:
            return str(Path(self.path).resolve())
        return str(self) + (f"?{self.query}" if self.query else "")

    def __str__(self) -> str:
        return self.path if self.is_local else f"{self.scheme}://{self.path}"

    def __repr__(self) -> str:
        return f"StoragePath({self.uri!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, StoragePath) and self.uri == other.uri

    def __hash__(self) -> int:
        return hash(self.uri)

    def __lt__(self, other: StoragePath) -> bool:
        return self.uri < other.uri

    def __truediv__(self, name: str) -> StoragePath:
        return StoragePath(self.fs, posixpath.join(self.path, name), self.scheme, self.query)

    @property
    def name(self) -> str:
        return posixpath.basename(self.path)

    @property
    def stem(self) -> str:
        return self.name.rpartition(".")[0] or self.name

    @property
    def suffix(self) -> str:
        stem, dot, ext = self.name.rpartition(".")
        return f".{ext}" if dot and stem else ""

    @property
    def parent(self) -> StoragePath:
        return StoragePath(self.fs, posixpath.dirname(self.path), self.scheme, self.query)

    def _info(self) -> pafs.FileInfo:
        return _call(self, lambda: self.fs.get_file_info(self.path))

    def exists(self) -> bool:
        return self._info().type != pafs.FileType.NotFound

    def is_file(self) -> bool:
        return self._info().type == pafs.FileType.File

    def is_dir(self) -> bool:
        return self._info().type == pafs.FileType.Directory

    def has_files(self, ignore: tuple[str, ...] = ()) -> bool:
        """A folder with at least one file in it other than the ``ignore`` names at its top
        (a bucket has no empty folders)."""
        base = len(self.path.rstrip("/")) + 1
        return any(i.type == pafs.FileType.File and i.path[base:] not in ignore
                   for i in self._list(recursive=True))

    def _list(self, recursive: bool) -> list[pafs.FileInfo]:
        selector = pafs.FileSelector(self.path, allow_not_found=True, recursive=recursive)
        return _call(self, lambda: self.fs.get_file_info(selector))

    def glob(self, pattern: str) -> list[StoragePath]:
        """Entries matching pattern ('*' within one level, e.g. '*/params.json'), sorted: one
        listing call however many trial folders there are."""
        parts = pattern.split("/")
        infos = self._list(recursive=len(parts) > 1)
        base = len(self.path.rstrip("/")) + 1
        found = []
        for info in infos:
            rel = info.path[base:].split("/")
            if len(rel) == len(parts) and all(fnmatch.fnmatchcase(r, p)
                                               for r, p in zip(rel, parts, strict=True)):
                found.append(StoragePath(self.fs, info.path, self.scheme, self.query))
        return sorted(found, key=lambda p: p.path)

    def read_bytes(self) -> bytes:
        def read() -> bytes:
            with self.fs.open_input_stream(self.path) as f:
                return f.read()

        return _call(self, read)

    def read_text(self, encoding: str = "utf-8") -> str:
        return self.read_bytes().decode(encoding)

    def atomic_write_bytes(self, data: bytes) -> None:
        if self.is_local:
            atomic_write_bytes(self.path, data)
            return

        def write() -> None:
            with self.fs.open_output_stream(self.path) as f:
                f.write(data)

        _call(self, write)

    def atomic_write_text(self, text: str) -> None:
        self.atomic_write_bytes(text.encode())

    def create_text(self, text: str) -> None:
        """Write a new file, whole or not at all; locally, FileExistsError when one is there
        already, even if another process writes it at the same moment (a bucket has no such
        check: a lease guards it)."""
        if self.is_local:
            create_text(self.path, text)
        else:
            self.atomic_write_text(text)

    def unlink(self, missing_ok: bool = False) -> None:
        if missing_ok and not self.exists():
            return
        _call(self, lambda: self.fs.delete_file(self.path))

    def download(self, to: Path) -> None:
        """Copy this file to a local path (atomically)."""
        atomic_write_bytes(to, self.read_bytes())

    def upload(self, source: Path) -> None:
        """Copy a local file here (atomically)."""
        self.atomic_write_bytes(Path(source).read_bytes())

    def check(self) -> StoragePath:
        """Self, once the storage answered (the bucket exists and the credentials work): a
        one-line error now rather than a failure inside Ray later."""
        if not self.is_local:
            bucket = self.path.split("/", 1)[0]
            if not StoragePath(self.fs, bucket, self.scheme, self.query).exists():
                raise StorageError(f"{self.scheme}://{bucket}: no such bucket")
        return self


def _call(where: StoragePath, action):
    """Run a storage call; a failure becomes a one-line StorageError naming the location."""
    try:
        return action()
    except FileNotFoundError:
        raise
    except (OSError, pa.ArrowException) as err:
        if where.is_local and isinstance(err, OSError):
            raise
        raise StorageError(f"{where}: {first_line(err)}") from None


def storage_path(location: str | Path | StoragePath) -> StoragePath:
    """A local path or a URI (s3://bucket/prefix, gs://bucket/prefix, file:///path)."""
    if isinstance(location, StoragePath):
        return location
    text = str(location)
    scheme = urlsplit(text).scheme if "://" in text else ""
    if not scheme or scheme == "file":
        local = Path(text.removeprefix("file://")).expanduser()  # named as given
        return StoragePath(pafs.LocalFileSystem(), str(local))
    parts = urlsplit(text)
    path = f"{parts.netloc}{parts.path}".rstrip("/")
    if not path.strip("/"):
        raise StorageError(f"{text}: name a bucket, e.g. {scheme}://BUCKET/experiments")
    try:
        handler = _ThisNodesCredentials((scheme, parts.netloc, parts.query,
                                         os.environ.get("AWS_ENDPOINT_URL", "")))
    except (pa.ArrowException, ValueError, OSError) as err:
        raise StorageError(f"{text.split('?')[0]}: not a storage location "
                           f"({first_line(err)})") from None
    return StoragePath(pafs.PyFileSystem(handler), path, scheme, parts.query)


@contextmanager
def credentials_hidden() -> Iterator[None]:
    """Take the cloud secrets out of this process's environment for the duration, so that
    nothing started or configured meanwhile copies them (Ray Tune's trial runtime environment,
    which Ray logs). Filesystems made before keep the credentials they resolved; make them
    first (:func:`storage_path`). Processes started before (an embedded Ray's nodes) inherited
    them, which is how its trials reach the storage."""
    saved = {name: os.environ.pop(name) for name in CREDENTIAL_VARIABLES if name in os.environ}
    try:
        yield
    finally:
        os.environ.update(saved)
