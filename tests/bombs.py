"""Small files that declare huge images (decompression bombs), made in memory for the tests."""

from __future__ import annotations

import base64
import io
import struct
import zlib

import numpy as np
import tifffile


def png_bomb(side: int = 13000) -> bytes:
    """A valid 8-bit grey PNG of ``side``² black pixels (164 KB for 13000², 169 MB decoded)."""
    row = b"\x00" * (side + 1)  # filter byte, then the pixels
    compress = zlib.compressobj(9)
    block = 500
    body = b"".join(compress.compress(row * block) for _ in range(side // block))
    body += compress.compress(row * (side % block)) + compress.flush()

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = struct.pack(">I", zlib.crc32(kind + data))
        return struct.pack(">I", len(data)) + kind + data + crc

    header = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", body)
            + chunk(b"IEND", b""))


def tiff_bomb(side: int = 60000, tile: int = 1024) -> bytes:
    """A valid zlib-tiled uint8 TIFF of ``side``² zeros whose tiles are one encoded tile
    repeated (3.6 MB for 60000², 3.6 GB decoded)."""
    tiles = (-(-side // tile)) ** 2
    encoded = zlib.compress(bytes(tile * tile), 9)
    buffer = io.BytesIO()
    with tifffile.TiffWriter(buffer) as tif:
        tif.write(iter([encoded] * tiles), shape=(side, side), dtype=np.uint8,
                  tile=(tile, tile), compression="zlib", photometric="minisblack")
    return buffer.getvalue()


def npy_bomb(shape: tuple[int, ...] = (10**12, 64, 64)) -> str:
    """Base64 of an ``.npy`` header declaring a float32 array of ``shape``, with no data."""
    buffer = io.BytesIO()
    header = {"descr": "<f4", "fortran_order": False, "shape": shape}
    np.lib.format.write_array_header_1_0(buffer, header)
    return base64.b64encode(buffer.getvalue()).decode()


def npz_crops(crops: np.ndarray) -> str:
    """Base64 of an ``.npz`` archive (a zip, not an ``.npy``) holding ``crops``."""
    buffer = io.BytesIO()
    np.savez(buffer, crops=crops)
    return base64.b64encode(buffer.getvalue()).decode()
