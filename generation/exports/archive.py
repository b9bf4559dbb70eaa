"""Zip archives for the package exports: deterministic (fixed times) and readable files."""

from __future__ import annotations

import io
import zipfile
from collections.abc import Iterable

ZIP_TIME = (2020, 1, 1, 0, 0, 0)  # the same course gives the same bytes


def zip_files(files: Iterable[tuple[str, bytes]]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, content in files:
            info = zipfile.ZipInfo(name, ZIP_TIME)
            info.external_attr = 0o644 << 16  # rw-r--r-- once unpacked
            archive.writestr(info, content, zipfile.ZIP_DEFLATED)
    return buffer.getvalue()
