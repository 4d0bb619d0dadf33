#!/usr/bin/env python3
"""Writes a synthetic image folder for the memory benchmark of lazily decoded image folders (BENCHMARKS.md, "Image
folders"): DIR/train/<class>/NNNNNN.png, N grayscale 28x28 PNGs over 10 classes (class k: a bright square at a place
that depends on k, plus noise). Only the standard library, so it runs anywhere:

    python3 scripts/make-image-folder.py /tmp/images-100k 100000
"""
import os
import random
import struct
import sys
import zlib


def png(width, height, rows):
    def chunk(kind, data):
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body) & 0xFFFFFFFF)

    raw = b"".join(b"\x00" + bytes(r) for r in rows)
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw, 6)) + chunk(b"IEND", b"")


def main():
    out, n = sys.argv[1], int(sys.argv[2])
    rng = random.Random(1)
    for k in range(10):
        os.makedirs(os.path.join(out, "train", f"class{k}"), exist_ok=True)
    for i in range(n):
        k = i % 10
        top, left = 2 + (k // 5) * 12, 2 + (k % 5) * 5
        rows = [[rng.randrange(40) for _ in range(28)] for _ in range(28)]
        for r in range(top, top + 10):
            for c in range(left, left + 4):
                rows[r][c] = 200 + rng.randrange(56)
        with open(os.path.join(out, "train", f"class{k}", f"{i:06d}.png"), "wb") as f:
            f.write(png(28, 28, rows))


if __name__ == "__main__":
    main()
