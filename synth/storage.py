"""Where synth writes, in one place: local folders and URLs, every write all-or-nothing.

- **Local paths**: a file is written under a hidden temporary name beside it, fsynced and
  renamed over the target; a folder is built under a temporary name and renamed into place.
  A crash leaves the old file (or none) and a `.tmp-` leftover that the next run removes.
- **URLs** (`s3://`, `gs://`, `abfs://`, `file://`, anything fsspec resolves): a file is
  uploaded whole in one request; an object store makes the key visible only once the upload
  completes, so a killed writer leaves no partial object. Credentials and endpoints come from
  the standard environment (for S3: AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY,
  AWS_ENDPOINT_URL, AWS_DEFAULT_REGION); synth stores none.

Knows nothing of models or shards. Failed writes become one `OutputError` line.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING

from synth.errors import OutputError, SynthError
from synth.layout import TEMP_PREFIX

if TYPE_CHECKING:
    import pyarrow as pa
    import pyarrow.parquet as pq


@contextmanager
def output_errors(where: object) -> Iterator[None]:
    """A failed write (disk full, permission denied, a store refusing) becomes one clear
    line, not a traceback."""
    try:
        yield
    except OSError as err:
        raise OutputError(
            f"{where}: cannot write ({err.strerror or err}); free space or fix permissions, then "
            "re-run the same command to resume"
        ) from None


def fsync(path: Path) -> None:
    with path.open("rb") as handle:
        os.fsync(handle.fileno())


def temporary_name(path: Path, suffix: str = "") -> Path:
    return path.with_name(f"{TEMP_PREFIX}{path.name}{suffix}")


@contextmanager
def atomic_file(path: Path) -> Iterator[Path]:
    """A local path to write `path`'s new content to; on success it is fsynced and renamed
    over `path`, on failure (Ctrl-C included) removed."""
    temporary = temporary_name(path)
    with output_errors(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            yield temporary
            fsync(temporary)
            os.replace(temporary, path)
        except BaseException:
            temporary.unlink(missing_ok=True)
            raise


@contextmanager
def atomic_folder(folder: Path, suffix: str = "") -> Iterator[Path]:
    """A local folder to build `folder`'s new content in; on success it replaces `folder`,
    on failure it is removed. A reader sees the old folder, or the whole new one."""
    temporary = temporary_name(folder, suffix)
    with output_errors(folder):
        shutil.rmtree(temporary, ignore_errors=True)
        temporary.mkdir(parents=True)
        try:
            yield temporary
            shutil.rmtree(folder, ignore_errors=True)
            temporary.replace(folder)
        except BaseException:
            shutil.rmtree(temporary, ignore_errors=True)
            raise


def write_text_atomic(path: Path, text: str | bytes | memoryview | pa.Buffer) -> None:
    """A small local file (spec, record, weights) all-or-nothing; text is written as UTF-8."""
    with atomic_file(path) as temporary:
        temporary.write_bytes(text.encode("utf-8") if isinstance(text, str) else text)


def remove_temporary_files(folder: Path) -> int:
    """Delete leftovers of local writes that a crash interrupted; returns how many."""
    leftovers = list(folder.glob(f"{TEMP_PREFIX}*")) if folder.is_dir() else []
    for leftover in leftovers:
        if leftover.is_dir():
            shutil.rmtree(leftover, ignore_errors=True)
        else:
            leftover.unlink(missing_ok=True)
    return len(leftovers)


@contextmanager
def _client_errors() -> Iterator[None]:
    """A store client's own exceptions (botocore's connection and credential errors, say) as
    OSError, which every caller already handles as a disk's failure; OSErrors, such as a
    missing key's FileNotFoundError, pass as they are."""
    try:
        yield
    except (OSError, SynthError):
        raise
    except Exception as err:
        raise OSError(f"{type(err).__name__}: {err}") from err


# pip packages that give fsspec its common object stores (s3fs comes with synth).
FILESYSTEM_PACKAGES = {"s3": "s3fs", "gs": "gcsfs", "gcs": "gcsfs", "abfs": "adlfs", "az": "adlfs"}


def is_url(ref: str | Path) -> bool:
    """A URL (scheme://...) rather than a local path."""
    return isinstance(ref, str) and "://" in ref and not ref.startswith("file://")


@dataclass(frozen=True)
class Location:
    """A file or folder, local or at a URL. Pickles as its URL, so each process (a Ray worker
    on another node) opens the store with its own environment's credentials."""

    url: str  # an absolute local path, or scheme://...

    def __reduce__(self):
        return (Location, (self.url,))

    def __str__(self) -> str:
        return self.url

    def __fspath__(self) -> str:
        """A local Location is a path: Path(location), open(location) work."""
        if not self.local:
            raise TypeError(f"{self.url} is a URL, not a local path")
        return self.url

    def __truediv__(self, name: str) -> Location:
        return Location(f"{self.url.rstrip('/')}/{name}")

    @property
    def name(self) -> str:
        return self.url.rstrip("/").rsplit("/", 1)[-1]

    @property
    def parent(self) -> Location:
        return Location(self.url.rstrip("/").rsplit("/", 1)[0])

    @property
    def local(self) -> bool:
        return not is_url(self.url)

    @property
    def path(self) -> Path:
        """The local path (a URL has none)."""
        if not self.local:
            raise ValueError(f"{self.url} is not a local path")
        return Path(self.url)

    @cached_property
    def _fs_and_key(self):
        import fsspec

        try:
            return fsspec.core.url_to_fs(self.url)
        except (ImportError, ValueError) as err:  # no filesystem for the scheme, or a bad URL
            scheme = self.url.split("://", 1)[0]
            raise OutputError(
                f"{self.url}: cannot open a {scheme}:// URL here ({err}); install its "
                f"filesystem package ({FILESYSTEM_PACKAGES.get(scheme, 'see fsspec')}) "
                "or use a local folder"
            ) from None

    @property
    def fs(self):
        return self._fs_and_key[0]

    @property
    def key(self) -> str:
        return self._fs_and_key[1]

    # Reading. A store's client errors (no connection, bad credentials) are OSErrors here,
    # as a local disk's are: "cannot read".
    def exists(self) -> bool:
        if self.local:
            return self.path.exists()
        with _client_errors():
            self.fs.invalidate_cache(self.key)
            return self.fs.exists(self.key)

    def is_file(self) -> bool:
        if self.local:
            return self.path.is_file()
        with _client_errors():
            self.fs.invalidate_cache(self.key)
            return self.fs.isfile(self.key)

    def read_bytes(self) -> bytes:
        if self.local:
            return self.path.read_bytes()
        with _client_errors():
            return self.fs.cat_file(self.key)

    def read_text(self) -> str:
        return self.read_bytes().decode("utf-8")

    def files(self, pattern: str = "*") -> list[Location]:
        """The files directly in this folder whose names match `pattern`, sorted by name."""
        if self.local:
            folder = self.path
            found = (
                sorted(p for p in folder.glob(pattern) if p.is_file()) if folder.is_dir() else []
            )
            return [Location(str(p)) for p in found]
        with _client_errors():
            self.fs.invalidate_cache()  # other processes (the workers) write here too
            matches = self.fs.glob(f"{self.key.rstrip('/')}/{pattern}", detail=True)
        names = sorted(k.rsplit("/", 1)[-1] for k, info in matches.items()
                       if info.get("type") == "file")  # fmt: skip
        return [self / name for name in names]

    def names(self) -> list[str]:
        """The names directly in this folder (none when it does not exist)."""
        if self.local:
            return sorted(p.name for p in self.path.iterdir()) if self.path.is_dir() else []
        with _client_errors():
            self.fs.invalidate_cache()
            try:
                listed = self.fs.ls(self.key, detail=False)
            except FileNotFoundError:
                return []
        return sorted(k.rstrip("/").rsplit("/", 1)[-1] for k in listed)

    def parquet(self) -> pq.ParquetFile:
        """The Parquet file here, read lazily: footers and columns, never more than asked."""
        import pyarrow.parquet as pq

        if self.local:
            return pq.ParquetFile(self.path)
        with _client_errors():
            return pq.ParquetFile(self.fs.open(self.key, "rb"))

    # Writing: every write is whole or absent, and a failure is one OutputError line.
    def make_folder(self) -> None:
        with output_errors(self):
            if self.local:
                self.path.mkdir(parents=True, exist_ok=True)
            else:
                with _client_errors():
                    self.fs.makedirs(self.key, exist_ok=True)  # a no-op on object stores

    def write_bytes(self, data: bytes | str | memoryview | pa.Buffer) -> None:
        data = data.encode("utf-8") if isinstance(data, str) else data
        if self.local:
            write_text_atomic(self.path, data)  # any buffer: written without a copy
            return
        with output_errors(self), _client_errors():
            # One upload: the key appears complete or not at all.
            self.fs.pipe_file(self.key, data if isinstance(data, bytes) else bytes(data))

    def write_table(self, table: pa.Table, **options) -> None:
        """A Parquet file, all-or-nothing."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        if self.local:
            with atomic_file(self.path) as temporary:
                pq.write_table(table, temporary, **options)
            return
        sink = pa.BufferOutputStream()
        pq.write_table(table, sink, **options)
        self.write_bytes(sink.getvalue())

    def create_exclusive(self, data: bytes) -> bool:
        """Create this file only if it does not exist (an object store's conditional create,
        If-None-Match); False when it already does."""
        with output_errors(self):
            try:
                if self.local:
                    with self.path.open("xb") as handle:
                        handle.write(data)
                else:
                    with _client_errors(), self.fs.open(self.key, "xb") as handle:
                        handle.write(data)
            except FileExistsError:
                return False
        return True

    def remove(self) -> None:
        with output_errors(self):
            if self.local:
                self.path.unlink(missing_ok=True)
                return
            with _client_errors():
                if self.fs.exists(self.key):
                    self.fs.rm_file(self.key)

    def remove_tree(self) -> None:
        with output_errors(self):
            if self.local:
                shutil.rmtree(self.path, ignore_errors=True)
                return
            with _client_errors():
                if self.fs.exists(self.key):
                    self.fs.rm(self.key, recursive=True)

    def remove_temporary_files(self) -> int:
        """Leftovers of interrupted local writes (an object store never has any)."""
        return remove_temporary_files(self.path) if self.local else 0


def location(ref: str | Path | Location) -> Location:
    """A Location for a local path (made absolute) or a URL (kept as given)."""
    if isinstance(ref, Location):
        return ref
    text = str(ref)
    if text.startswith("file://"):
        text = text.removeprefix("file://")
    if is_url(text):
        return Location(text.rstrip("/"))
    return Location(str(Path(text).expanduser().resolve()))


# A run's lock on an object store is a file its driver refreshes; one untouched this long
# belongs to a driver that is gone (killed, its machine lost), and the next run takes it over.
LOCK_HEARTBEAT_S = 30.0
LOCK_STALE_S = 120.0


@contextmanager
def exclusive_lock(lock: Location, busy: str) -> Iterator[None]:
    """Hold `lock` for the block, or raise OutputError(`busy`) when another holder has it.

    Locally, an flock on the file: the kernel releases it when the process dies. At a URL, a
    conditional create (If-None-Match: the key must not exist), which S3, GCS and Azure
    honour, holding the holder's host, pid and a heartbeat that a thread refreshes; it is
    removed at the end, and a lock whose heartbeat stopped LOCK_STALE_S ago is taken over.
    On a store without conditional create two runs starting in the same instant could both
    pass; synth cannot detect that."""
    if lock.local:
        import fcntl

        with output_errors(lock):
            lock.path.parent.mkdir(parents=True, exist_ok=True)
            handle = lock.path.open("a")
        try:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise OutputError(busy) from None
            yield
        finally:
            handle.close()
        return
    with _object_lock(lock, busy):
        yield


def _lock_note() -> bytes:
    import json
    import socket
    import time

    return json.dumps({"host": socket.gethostname(), "pid": os.getpid(),
                       "heartbeat": time.time()}).encode()  # fmt: skip


@contextmanager
def _object_lock(lock: Location, busy: str) -> Iterator[None]:
    import json
    import threading
    import time

    if not lock.create_exclusive(_lock_note()):
        try:
            held = json.loads(lock.read_bytes())
            age = time.time() - float(held["heartbeat"])
        except (OSError, ValueError, KeyError, TypeError):
            held, age = {}, LOCK_STALE_S + 1  # unreadable: a torn or foreign file
        if age <= LOCK_STALE_S:
            raise OutputError(
                f"{busy} (lock {lock}: held by pid {held.get('pid')} on {held.get('host')}, "
                f"alive {age:.0f} s ago)"
            )
        lock.remove()  # its driver is gone; two takers race, and conditional create decides
        if not lock.create_exclusive(_lock_note()):
            raise OutputError(busy)
    stop = threading.Event()

    def heartbeat() -> None:
        while not stop.wait(LOCK_HEARTBEAT_S):
            try:
                lock.write_bytes(_lock_note())
            except OutputError:
                continue  # a missed beat; the lock is stale only after several

    beat = threading.Thread(target=heartbeat, name="synth-lock", daemon=True)
    beat.start()
    try:
        yield
    finally:
        stop.set()
        beat.join()
        with suppress(OutputError):  # else it goes stale, and the next run takes it over
            lock.remove()
