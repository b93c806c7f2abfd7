"""Caps on a skops file (a zip) checked before skops decompresses any byte of it.

A skops file is a zip archive, and whoever wrote it chose its sizes: an 18.8 MB file
can inflate to 4 GiB (a zip bomb), and the central directory's sizes are only claims.
`check_archive` refuses, in this order:

1. a file larger than `max_file_bytes` (ML_MODEL_MAX_FILE_BYTES);
2. an end-of-central-directory record that is missing, or a central directory that
   holds more than `max_entries` records (ML_MODEL_MAX_ENTRIES); the records are counted
   in the raw bytes, before `zipfile` builds an object per entry;
3. an entry that is encrypted or compressed with anything but stored / deflate (bzip2
   and lzma output is not bounded by `zipfile`'s reads), a declared total uncompressed
   size above `max_uncompressed_bytes` (ML_MODEL_MAX_UNCOMPRESSED_BYTES), or an entry
   above `RATIO_FLOOR_BYTES` whose declared size is more than `max_ratio`
   (ML_MODEL_MAX_COMPRESSION_RATIO) times its compressed size;
4. an entry whose actual content disagrees with its declared size or CRC-32: every
   entry is inflated as a stream (64 KiB in, at most 1 MiB out at a time, nothing kept)
   and refused the moment it produces a byte past its declared size, so a central
   directory that lies costs at most one chunk past the claim.

Only then does skops open the file. Refusals raise `ModelCheckError` (the loader turns
it into its UntrustedModelError) naming the check and the entry.
"""

from __future__ import annotations

import struct
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from ml_assets.core.artifacts.checks import ModelCheckError

MiB = 1024 * 1024
GiB = 1024 * MiB
# The compression-ratio cap applies to entries whose declared size is above this:
# small, highly repetitive arrays (a column of zeros) legitimately compress far.
RATIO_FLOOR_BYTES = 1 * MiB
_READ_CHUNK = 64 * 1024
_INFLATE_CHUNK = 1 * MiB
_EOCD = struct.Struct("<4s4H2LH")  # end of central directory record
_EOCD64_LOCATOR = struct.Struct("<4sLQL")
_EOCD64 = struct.Struct("<4sQ2H2L4Q")
_CENTRAL_RECORD_SIZE = 46  # fixed part of a central directory record
_LOCAL_HEADER_SIZE = 30
_ALLOWED_COMPRESSION = {zipfile.ZIP_STORED: "stored", zipfile.ZIP_DEFLATED: "deflate"}


@dataclass(frozen=True)
class ArchiveLimits:
    """The caps (settings ML_MODEL_MAX_FILE_BYTES, ML_MODEL_MAX_UNCOMPRESSED_BYTES,
    ML_MODEL_MAX_ENTRIES, ML_MODEL_MAX_COMPRESSION_RATIO)."""

    max_file_bytes: int = 512 * MiB
    max_uncompressed_bytes: int = 1 * GiB
    max_entries: int = 10_000
    max_ratio: float = 200.0


@dataclass(frozen=True)
class ArchiveSummary:
    """What a checked archive holds."""

    file_bytes: int
    entries: int
    uncompressed_bytes: int


def _refuse(check: str, message: str) -> ModelCheckError:
    return ModelCheckError(check, f"its skops file {message}")


def _central_directory(handle: BinaryIO, size: int) -> tuple[int, int]:
    """(start, size) of the central directory, from the end record (ZIP64 too)."""
    tail_size = min(size, _EOCD.size + 0xFFFF)
    handle.seek(size - tail_size)
    tail = handle.read(tail_size)
    at = tail.rfind(b"PK\x05\x06")
    if at < 0 or len(tail) - at < _EOCD.size:
        raise _refuse("archive.format", "is not a zip archive (no end of central directory)")
    end_record = size - tail_size + at
    *_, entries, cd_size, cd_offset, _comment = _EOCD.unpack_from(tail, at)
    cd_end = end_record
    if entries == 0xFFFF or 0xFFFFFFFF in (cd_size, cd_offset):  # ZIP64
        if end_record < _EOCD64_LOCATOR.size + _EOCD64.size:
            raise _refuse("archive.format", "has a truncated ZIP64 end record")
        handle.seek(end_record - _EOCD64_LOCATOR.size)
        if _EOCD64_LOCATOR.unpack(handle.read(_EOCD64_LOCATOR.size))[0] != b"PK\x06\x07":
            raise _refuse("archive.format", "has a malformed ZIP64 end record")
        cd_end = end_record - _EOCD64_LOCATOR.size - _EOCD64.size
        handle.seek(cd_end)
        record = _EOCD64.unpack(handle.read(_EOCD64.size))
        if record[0] != b"PK\x06\x06":
            raise _refuse("archive.format", "has a malformed ZIP64 end record")
        cd_size = record[8]
    if cd_size > cd_end:
        raise _refuse("archive.format", f"declares a {cd_size}-byte central directory in "
                      f"{cd_end} bytes")
    return cd_end - cd_size, cd_size


def _count_records(handle: BinaryIO, start: int, size: int, limit: int) -> int:
    """The central directory records in the raw bytes; refused past `limit`."""
    handle.seek(start)
    directory = handle.read(size)
    count = offset = 0
    while offset + _CENTRAL_RECORD_SIZE <= len(directory):
        if directory[offset:offset + 4] != b"PK\x01\x02":
            break
        count += 1
        if count > limit:
            raise _refuse("archive.entries", f"has more than {limit:,} entries "
                          "(ML_MODEL_MAX_ENTRIES)")
        name, extra, comment = struct.unpack_from("<3H", directory, offset + 28)
        offset += _CENTRAL_RECORD_SIZE + name + extra + comment
    return count


def _check_declared(infos: list[zipfile.ZipInfo], limits: ArchiveLimits) -> int:
    total = 0
    for info in infos:
        name = info.filename
        if info.flag_bits & 0x1:
            raise _refuse("archive.encrypted", f"entry {name!r} is encrypted")
        if info.compress_type not in _ALLOWED_COMPRESSION:
            raise _refuse("archive.compression", f"entry {name!r} uses compression method "
                          f"{info.compress_type}; only stored and deflate are opened")
        total += info.file_size
        if total > limits.max_uncompressed_bytes:
            raise _refuse("archive.uncompressed_size", f"declares more than "
                          f"{limits.max_uncompressed_bytes:,} bytes uncompressed "
                          f"(ML_MODEL_MAX_UNCOMPRESSED_BYTES; entry {name!r} alone declares "
                          f"{info.file_size:,})")
        if (info.file_size > RATIO_FLOOR_BYTES
                and info.file_size > limits.max_ratio * max(info.compress_size, 1)):
            ratio = info.file_size / max(info.compress_size, 1)
            raise _refuse("archive.compression_ratio", f"entry {name!r} declares "
                          f"{info.file_size:,} bytes from {info.compress_size:,} compressed "
                          f"(ratio {ratio:,.0f}:1, above {limits.max_ratio:g}:1, "
                          "ML_MODEL_MAX_COMPRESSION_RATIO)")
    return total


def _verify_entry(handle: BinaryIO, info: zipfile.ZipInfo) -> None:
    """Stream the entry: refuse as soon as it yields a byte past its declared size,
    and when its size or CRC-32 differs from what the central directory says."""
    name, declared = info.filename, info.file_size
    handle.seek(info.header_offset)
    header = handle.read(_LOCAL_HEADER_SIZE)
    if len(header) < _LOCAL_HEADER_SIZE or header[:4] != b"PK\x03\x04":
        raise _refuse("archive.format", f"entry {name!r} has no local header")
    name_len, extra_len = struct.unpack_from("<2H", header, 26)
    handle.seek(info.header_offset + _LOCAL_HEADER_SIZE + name_len + extra_len)
    inflater = zlib.decompressobj(-zlib.MAX_WBITS) if info.compress_type else None
    left, produced, crc = info.compress_size, 0, 0

    def take(data: bytes) -> None:
        nonlocal produced, crc
        produced += len(data)
        if produced > declared:
            raise _refuse("archive.size_mismatch", f"entry {name!r} inflates past the "
                          f"{declared:,} bytes its central directory declares")
        crc = zlib.crc32(data, crc)

    while left > 0:
        chunk = handle.read(min(_READ_CHUNK, left))
        if not chunk:
            raise _refuse("archive.format", f"entry {name!r} is truncated")
        left -= len(chunk)
        if inflater is None:
            take(chunk)
            continue
        while chunk and not inflater.eof:
            take(inflater.decompress(chunk, _INFLATE_CHUNK))
            chunk = inflater.unconsumed_tail
    if inflater is not None:
        while not inflater.eof:  # output still held back by the max_length bound
            out = inflater.decompress(b"", _INFLATE_CHUNK)
            if not out:
                raise _refuse("archive.format", f"entry {name!r} has a truncated deflate "
                              "stream")
            take(out)
    if produced != declared:
        raise _refuse("archive.size_mismatch", f"entry {name!r} holds {produced:,} bytes "
                      f"but its central directory declares {declared:,}")
    if crc != info.CRC:
        raise _refuse("archive.crc", f"entry {name!r} fails its CRC-32 check")


def check_archive(path: Path, limits: ArchiveLimits | None = None) -> ArchiveSummary:
    """Refuse (ModelCheckError) a skops file past the caps, or whose entries are not
    what its central directory declares; nothing is kept in memory but one chunk."""
    limits = limits or ArchiveLimits()
    size = path.stat().st_size
    if size > limits.max_file_bytes:
        raise _refuse("archive.file_size", f"is {size:,} bytes, above the "
                      f"{limits.max_file_bytes:,}-byte cap (ML_MODEL_MAX_FILE_BYTES)")
    with path.open("rb") as handle:
        start, cd_size = _central_directory(handle, size)
        _count_records(handle, start, cd_size, limits.max_entries)
        try:
            with zipfile.ZipFile(handle) as archive:
                infos = archive.infolist()
        except zipfile.BadZipFile as exc:
            raise _refuse("archive.format", f"is not a valid zip archive: {exc}") from exc
        if len(infos) > limits.max_entries:
            raise _refuse("archive.entries", f"has {len(infos):,} entries, above "
                          f"{limits.max_entries:,} (ML_MODEL_MAX_ENTRIES)")
        total = _check_declared(infos, limits)
        for info in infos:
            _verify_entry(handle, info)
    return ArchiveSummary(file_bytes=size, entries=len(infos), uncompressed_bytes=total)
