"""Size limits of a predictor file, read from zip central directories before any member is read.

A predictor file is a zip of ``manifest.json`` and ``model.skops``; the payload is itself a zip
(skops' format) of ``schema.json`` and ``.npy`` arrays. Before anything is decompressed, the
end-of-central-directory record bounds the number of members, and each member's declared size
(``file_size``, bytes) and compression ratio are checked against the limits below; members are
then read with a bounded read (``zipfile`` stops at the declared size and checks the CRC, so a
member that lies about its size fails instead of growing). Each ``.npy`` header is parsed with
numpy's own reader and its shape must fit in the bytes the member holds, so no array larger
than its member is ever allocated.
"""
from __future__ import annotations

import io
import math
import os
import struct
import zipfile
from dataclasses import dataclass
from typing import IO

from costmeter.errors import ConfigError, StoreError

MANIFEST_MAX_BYTES = 1 << 20
"""Largest manifest accepted, bytes (1 MiB; a real one is 1-2 KB)."""
PAYLOAD_MAX_BYTES = 512 << 20
"""Default largest payload, bytes (512 MiB), compressed and unpacked alike. A forest of 64 trees
per kernel type over 30 kernel types, 500 samples each, is about 80 MB."""
PAYLOAD_MAX_ENV = "COSTMETER_PREDICTOR_MAX_BYTES"
"""Environment variable overriding :data:`PAYLOAD_MAX_BYTES` (bytes, a positive integer)."""
MAX_MEMBERS = 8
"""Most members in a predictor file (it has two)."""
PAYLOAD_MAX_MEMBERS = 65_534
"""Most members in the payload: three arrays per tree, so about 21,000 trees. Zip64 (needed
beyond 65,535 members or 4 GiB) is never written for a payload within the limits."""
MAX_NAME_BYTES = 1024
"""Longest member name, bytes; bounds the central directory at ~1 KiB per member."""
MAX_RATIO = 100.0
"""Largest declared-size / compressed-size ratio of a member above :data:`RATIO_FLOOR_BYTES`
(real files: ~2 for the manifest, 6-8 for a payload, 1 inside it)."""
RATIO_FLOOR_BYTES = 1 << 20
"""Members up to this size (bytes, 1 MiB) are exempt from the ratio check: they are small anyway."""
_EOCD = struct.Struct(zipfile.structEndArchive)
_MAX_COMMENT = 0xFFFF


@dataclass(frozen=True)
class Limits:
    """Byte limits of one load: ``manifest_bytes`` and ``payload_bytes`` (see module constants)."""

    manifest_bytes: int = MANIFEST_MAX_BYTES
    payload_bytes: int = PAYLOAD_MAX_BYTES

    @classmethod
    def resolve(cls, payload_bytes: int | None = None) -> Limits:
        """Limits with ``payload_bytes`` if given, else ``$COSTMETER_PREDICTOR_MAX_BYTES``, else the
        default (512 MiB). A limit that is not a positive integer is a ConfigError."""
        source = "max_payload_bytes"
        if payload_bytes is None:
            raw = os.environ.get(PAYLOAD_MAX_ENV)
            if raw is None or not raw.strip():
                return cls()
            source = f"${PAYLOAD_MAX_ENV}"
            try:
                payload_bytes = int(raw.strip())
            except ValueError:
                payload_bytes = 0
        if isinstance(payload_bytes, bool) or not isinstance(payload_bytes, int) or payload_bytes <= 0:
            raise ConfigError(f"{source} must be a positive number of bytes, got {payload_bytes!r}; "
                              f"the default is {PAYLOAD_MAX_BYTES}")
        return cls(payload_bytes=payload_bytes)


def _refuse(label: str, detail: str) -> StoreError:
    return StoreError(f"{label}: {detail}; refusing to load it -- refit it with `bench predictor fit` "
                      "or fetch the original file")


def _member_count(fh: IO[bytes], size: int, label: str) -> tuple[int, int]:
    """(members, central directory bytes) from the end-of-central-directory record, found the
    way ``zipfile`` finds it: at the very end, else the last signature in the final 64 KiB."""
    if size < _EOCD.size:
        raise _refuse(label, "not a zip file (too short)")
    fh.seek(size - _EOCD.size)
    tail = fh.read(_EOCD.size)
    if not (tail[:4] == zipfile.stringEndArchive and tail[-2:] == b"\x00\x00"):
        start = max(size - _MAX_COMMENT - _EOCD.size, 0)
        fh.seek(start)
        window = fh.read(size - start)
        at = window.rfind(zipfile.stringEndArchive)
        if at < 0 or at + _EOCD.size > len(window):
            raise _refuse(label, "not a zip file (no end-of-central-directory record)")
        tail = window[at:at + _EOCD.size]
    fields = _EOCD.unpack(tail)
    return fields[4], fields[5]


def open_zip(source: IO[bytes], size: int, label: str, *, max_members: int,
             max_bytes: int) -> zipfile.ZipFile:
    """A ZipFile on ``source`` (``size`` bytes) once its central directory is small enough:
    at most ``max_members`` members (no zip64) and ~1 KiB of directory per member, the file
    and its members' declared sizes each within ``max_bytes`` in total (bytes). Each member is
    then checked by :func:`check_member` as it is read."""
    if size > max_bytes + max_members * (MAX_NAME_BYTES + 512):
        raise _refuse(label, f"it is {size} bytes, beyond the {max_bytes}-byte limit "
                             f"(raise ${PAYLOAD_MAX_ENV} if the file is trusted and this large)")
    members, directory_bytes = _member_count(source, size, label)
    if members >= 0xFFFF or members > max_members:
        raise _refuse(label, f"it has {members} zip members, more than the {max_members} allowed")
    if directory_bytes > members * (MAX_NAME_BYTES + 512) + 512:
        raise _refuse(label, f"its zip directory is {directory_bytes} bytes for {members} members")
    source.seek(0)
    try:
        zf = zipfile.ZipFile(source)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, ValueError, OSError, EOFError,
            NotImplementedError, struct.error) as exc:
        raise _refuse(label, f"not a readable zip file ({type(exc).__name__})") from exc
    infos = zf.infolist()
    names = [i.filename for i in infos]
    if len(infos) > max_members or len(set(names)) != len(names):
        zf.close()
        raise _refuse(label, "its zip directory lists too many or repeated member names")
    total = sum(i.file_size for i in infos)
    if total > max_bytes:
        zf.close()
        raise _refuse(label, f"its members unpack to {total} bytes, beyond the {max_bytes}-byte limit "
                             f"(raise ${PAYLOAD_MAX_ENV} if the file is trusted and this large)")
    return zf


def check_member(info: zipfile.ZipInfo, limit: int, label: str) -> None:
    """Refuse a member whose declared size (bytes) exceeds ``limit`` or whose compression
    ratio exceeds :data:`MAX_RATIO` (above :data:`RATIO_FLOOR_BYTES`), or whose name is long."""
    if len(info.filename.encode("utf-8", "surrogateescape")) > MAX_NAME_BYTES:
        raise _refuse(label, "a zip member name is longer than 1 KiB")
    if info.file_size > limit:
        raise _refuse(label, f"{info.filename} unpacks to {info.file_size} bytes, beyond the "
                             f"{limit}-byte limit")
    if info.file_size > RATIO_FLOOR_BYTES and info.file_size > MAX_RATIO * max(info.compress_size, 1):
        raise _refuse(label, f"{info.filename} claims to unpack {info.compress_size} bytes to "
                             f"{info.file_size} (more than {MAX_RATIO:.0f}:1)")


def read_member(zf: zipfile.ZipFile, name: str, limit: int, label: str) -> bytes:
    """The bytes of member ``name``, read only after :func:`check_member` (at most ``limit`` bytes)."""
    try:
        info = zf.getinfo(name)
    except KeyError as exc:
        raise _refuse(label, f"it has no {name}") from exc
    check_member(info, limit, label)
    try:
        with zf.open(info) as fh:
            data = fh.read(limit + 1)
    except (zipfile.BadZipFile, ValueError, OSError, EOFError, NotImplementedError, RuntimeError,
            struct.error) as exc:
        raise _refuse(label, f"{name} is unreadable ({type(exc).__name__}: {_short(exc)})") from exc
    if len(data) > limit:
        raise _refuse(label, f"{name} is larger than {limit} bytes")
    return data


def check_payload_zip(payload: bytes, limits: Limits, label: str) -> None:
    """Check the skops payload (a zip, bytes) before skops opens it: member count and sizes,
    and each ``.npy`` header's shape against the bytes its member holds."""
    with open_zip(io.BytesIO(payload), len(payload), label, max_members=PAYLOAD_MAX_MEMBERS,
                  max_bytes=limits.payload_bytes) as zf:
        for info in zf.infolist():
            check_member(info, limits.payload_bytes, label)
            if info.filename.endswith(".npy"):
                _check_npy_header(zf, info, label)


def _check_npy_header(zf: zipfile.ZipFile, info: zipfile.ZipInfo, label: str) -> None:
    import numpy as np
    from numpy.lib import format as npy

    try:
        with zf.open(info) as fh:
            version = npy.read_magic(fh)
            if version == (1, 0):
                shape, _, dtype = npy.read_array_header_1_0(fh)
            elif version == (2, 0):
                shape, _, dtype = npy.read_array_header_2_0(fh)
            else:
                raise ValueError(f"array format version {version} is not accepted")
    except (ValueError, OSError, EOFError, zipfile.BadZipFile, TypeError, SyntaxError,
            struct.error) as exc:
        raise _refuse(label, f"array {info.filename} has a bad header ({_short(exc)})") from exc
    if dtype.hasobject or any(int(d) < 0 for d in shape):
        raise _refuse(label, f"array {info.filename} declares dtype {dtype} shape {shape}")
    needed = math.prod(int(d) for d in shape) * np.dtype(dtype).itemsize
    if needed > info.file_size:
        raise _refuse(label, f"array {info.filename} declares shape {shape} ({needed} bytes) but "
                             f"its member holds {info.file_size} bytes")


def _short(exc: BaseException, width: int = 120) -> str:
    text = " ".join(str(exc).split())
    return text if len(text) <= width else text[:width - 3] + "..."
