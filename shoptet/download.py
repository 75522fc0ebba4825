"""Download a snapshot result file and prove it is complete (reference §5.4).

The result URL is an unauthenticated bearer link to personal data on the e-shop's own host: we send it
no Shoptet header, never log it in full (host + first path characters only; httpx's own request log
line is masked too), and write the body to a temp file in ``dest_dir`` that is renamed only after the
gzip stream decompressed to its end. Files that do not start with the gzip magic ``1f 8b`` are
accepted as plain JSON Lines (some endpoints may not compress).
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import re
import shutil
import stat
import tempfile
import threading
import time
import zlib
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import BinaryIO

import httpx

from shoptet import errors as e
from shoptet.snapshots import Job, mask_url

log = logging.getLogger(__name__)

DEFAULT_MIN_FREE_BYTES = 256 * 1024**2
CHUNK_SIZE = 1024**2
_GZIP_MAGIC = b"\x1f\x8b"
_MAX_INFLATE_STEP = 16 * 1024**2  # bound memory on highly compressible input


#: Names ``download_result`` gives its files: ``shoptet-<job>-<random>.part`` while downloading, then
#: ``.jsonl.gz`` or ``.jsonl``. ``sweep_downloads`` deletes only names of this shape.
DOWNLOAD_NAME = re.compile(r"^shoptet-[A-Za-z0-9]{1,32}-[A-Za-z0-9_]{1,64}(?:\.part|\.jsonl\.gz|\.jsonl)$")
SWEEP_AGE_SECONDS = 86400.0


class _MaskDownloadUrls(logging.Filter):
    """Mask URLs in httpx's "HTTP Request: GET <url>" record while this thread downloads a result."""

    def __init__(self) -> None:
        super().__init__()
        self.active = threading.local()

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(self.active, "on", False) and isinstance(record.args, tuple):
            record.args = tuple(mask_url(str(a)) if isinstance(a, httpx.URL) else a for a in record.args)
        return True


_url_filter = _MaskDownloadUrls()
logging.getLogger("httpx").addFilter(_url_filter)


class GzipVerifier:
    """Feed raw bytes; ``finish()`` raises ``CorruptResultError`` unless the stream is complete.

    Supports multi-member gzip. Decompressed bytes are counted, not kept.
    """

    def __init__(self) -> None:
        self.kind: str | None = None  # "gzip" | "plain", decided on the first two bytes
        self.raw_bytes = 0
        self.decompressed_bytes = 0
        self._head = b""
        self._inflater: zlib._Decompress | None = None
        self._first_text_byte: int | None = None

    def feed(self, chunk: bytes) -> None:
        self.raw_bytes += len(chunk)
        if self.kind is None:
            self._head += chunk
            if len(self._head) < 2:
                return
            chunk, self._head = self._head, b""
            self.kind = "gzip" if chunk[:2] == _GZIP_MAGIC else "plain"
        if self.kind == "plain":
            self._see_text(chunk)
            self.decompressed_bytes += len(chunk)
        else:
            self._inflate(chunk)

    def _inflate(self, data: bytes) -> None:
        try:
            while data:
                if self._inflater is None or self._inflater.eof:
                    self._inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)  # next gzip member
                out = self._inflater.decompress(data, _MAX_INFLATE_STEP)
                self.decompressed_bytes += len(out)
                data = self._inflater.unused_data if self._inflater.eof else self._inflater.unconsumed_tail
        except zlib.error as exc:
            raise e.CorruptResultError(f"result file is not valid gzip: {exc}") from exc

    def _see_text(self, chunk: bytes) -> None:
        if self._first_text_byte is None:
            stripped = chunk.lstrip()
            if stripped:
                self._first_text_byte = stripped[0]

    def finish(self) -> None:
        if self.kind is None and self._head:  # a single byte: neither gzip nor a JSON object
            raise e.CorruptResultError("result file is 1 byte long")
        if self.kind == "gzip":
            assert self._inflater is not None
            if not self._inflater.eof:
                raise e.CorruptResultError(
                    f"gzip stream truncated after {self.raw_bytes} bytes ({self.decompressed_bytes} decompressed)"
                )
        elif self.kind == "plain" and self._first_text_byte not in (None, ord("{")):
            raise e.CorruptResultError("result file is neither gzip nor JSON Lines")

    @property
    def suffix(self) -> str:
        return ".jsonl.gz" if self.kind == "gzip" else ".jsonl"


def download_result(
    job_or_url: Job | str,
    dest_dir: str | os.PathLike[str],
    *,
    http: httpx.Client,
    clock: Callable[[], float],
    min_free_bytes: int = DEFAULT_MIN_FREE_BYTES,
) -> Path:
    """Stream the result to ``dest_dir`` and return the verified file's path (the caller deletes it).

    ``http`` must carry no credentials. Raises ``ResultExpiredError`` (404/410, validUntil passed,
    no resultUrl), ``CorruptResultError``, ``InsufficientDiskSpaceError``, ``TransportError``,
    ``ServerError``.
    """
    url, label = _url_and_label(job_or_url, clock)
    dest = Path(dest_dir)
    dest.mkdir(parents=True, exist_ok=True)
    _check_disk(dest, min_free_bytes, 0)
    fd, tmp_name = tempfile.mkstemp(prefix=f"shoptet-{label}-", suffix=".part", dir=dest)
    tmp = Path(tmp_name)
    verifier = GzipVerifier()
    try:
        with os.fdopen(fd, "wb") as out:
            _stream(http, url, out, verifier, dest, min_free_bytes)
        verifier.finish()
        final = tmp.with_name(tmp.name.removesuffix(".part") + verifier.suffix)
        os.replace(tmp, final)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    log.info(
        "downloaded %s: %d bytes (%d decompressed) -> %s",
        mask_url(url),
        verifier.raw_bytes,
        verifier.decompressed_bytes,
        final.name,
    )
    return final


def _url_and_label(job_or_url: Job | str, clock: Callable[[], float]) -> tuple[str, str]:
    if isinstance(job_or_url, str):
        return job_or_url, "result"
    job = job_or_url
    if not job.result_url:
        raise e.ResultExpiredError(f"job {job.job_id} ({job.status}) has no resultUrl")
    now = datetime.fromtimestamp(clock(), tz=UTC)
    if job.valid_until is not None and job.valid_until <= now:
        raise e.ResultExpiredError(f"result of job {job.job_id} expired at {job.valid_until.isoformat()}")
    return job.result_url, "".join(c for c in job.job_id if c.isalnum())[:32] or "result"


def _stream(
    http: httpx.Client,
    url: str,
    out: BinaryIO,
    verifier: GzipVerifier,
    dest: Path,
    min_free_bytes: int,
) -> None:
    log.info("downloading result from %s", mask_url(url))
    _url_filter.active.on = True
    try:
        # identity: we want the stored bytes, not a transport re-encoding of them.
        with http.stream("GET", url, headers={"Accept-Encoding": "identity"}) as response:
            _check_status(response, url)
            length = response.headers.get("Content-Length")
            if length and length.isdigit():
                _check_disk(dest, min_free_bytes, int(length))
            for chunk in response.iter_raw(CHUNK_SIZE):
                verifier.feed(chunk)
                out.write(chunk)
    except httpx.TransportError as exc:
        raise e.TransportError(
            f"downloading {mask_url(url)} failed after {verifier.raw_bytes} bytes: {type(exc).__name__}"
        ) from None  # the httpx exception carries the full URL
    except OSError as exc:
        if exc.errno == errno.ENOSPC:
            raise e.InsufficientDiskSpaceError(f"disk full while writing into {dest}") from exc
        raise
    finally:
        _url_filter.active.on = False


def _check_status(response: httpx.Response, url: str) -> None:
    status = response.status_code
    if response.is_success:
        return
    where = mask_url(url)
    if status in (404, 410):
        raise e.ResultExpiredError(f"result file {where} is gone (HTTP {status})", status=status)
    if status == 429:
        raise e.RateLimitedError(f"result host rate-limited the download of {where}", status=status)
    if status >= 500:
        raise e.ServerError(f"result host failed serving {where}", status=status)
    raise e.ShoptetError(f"unexpected HTTP {status} downloading {where}", status=status)


def _check_disk(dest: Path, min_free_bytes: int, incoming: int) -> None:
    free = shutil.disk_usage(dest).free
    if free - incoming < min_free_bytes:
        raise e.InsufficientDiskSpaceError(
            f"{dest} has {free // 1024**2} MiB free; need {(incoming + min_free_bytes) // 1024**2} MiB "
            f"({incoming // 1024**2} MiB download + {min_free_bytes // 1024**2} MiB reserve)"
        )


def sweep_downloads(
    dest_dir: str | os.PathLike[str],
    *,
    older_than: float = SWEEP_AGE_SECONDS,
    now: float | None = None,
) -> tuple[int, int]:
    """Delete our own download files older than ``older_than`` seconds; returns (files, bytes).

    A run killed by SIGKILL or the OOM killer leaves its ``.part`` or verified file behind (its
    ``finally`` never ran). Only regular files named like ``download_result``'s (``DOWNLOAD_NAME``) are
    touched - never anything else an operator keeps in that folder - and only after a day, so a file a
    running import still reads is safe. A missing folder sweeps nothing.
    """
    folder = Path(dest_dir)
    cutoff = (time.time() if now is None else now) - older_than
    files = size = 0
    try:
        entries = list(os.scandir(folder))
    except FileNotFoundError:
        return 0, 0
    for entry in entries:
        if not DOWNLOAD_NAME.match(entry.name):
            continue
        try:
            info = entry.stat(follow_symlinks=False)
            if not stat.S_ISREG(info.st_mode) or info.st_mtime >= cutoff:
                continue
            os.unlink(entry.path)
        except FileNotFoundError:
            continue  # another process swept it first
        except OSError as exc:
            log.warning("could not delete old download %s: %s", entry.name, exc)
            continue
        files += 1
        size += info.st_size
    if files:
        log.info("swept %d old download file(s), %d bytes, from %s", files, size, folder)
    return files, size
