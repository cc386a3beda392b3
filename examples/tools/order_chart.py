#!/usr/bin/env python3
"""order_chart: a PNG bar chart of order totals by status, returned as an image block.

Only the standard library (zlib, struct): the image needs no imaging package. The result is
{"content": [text, image]}, which Cordon passes to CMA as the tool result's content blocks.
"""

import base64
import json
import sqlite3
import struct
import sys
import zlib

request = json.load(sys.stdin)
title = request.get("title", "Order totals by status")

db = sqlite3.connect("file:/data/orders.db?mode=ro&immutable=1", uri=True)
rows = db.execute(
    "SELECT status, SUM(total_cents) FROM orders GROUP BY status ORDER BY status"
).fetchall()

WIDTH, HEIGHT, BAR, GAP = 320, 200, 50, 26
COLOURS = [(66, 133, 244), (52, 168, 83), (251, 188, 5), (234, 67, 53)]
pixels = [[(255, 255, 255)] * WIDTH for _ in range(HEIGHT)]
top = max(total for _, total in rows) or 1
for i, (_, total) in enumerate(rows):
    height = int((HEIGHT - 30) * total / top)
    left = GAP + i * (BAR + GAP)
    for y in range(HEIGHT - 10 - height, HEIGHT - 10):
        for x in range(left, min(left + BAR, WIDTH)):
            pixels[y][x] = COLOURS[i % len(COLOURS)]
for x in range(WIDTH):  # the axis
    pixels[HEIGHT - 10][x] = (0, 0, 0)


def chunk(kind, data):
    body = kind + data
    return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body) & 0xFFFFFFFF)


raw = b"".join(b"\x00" + bytes(c for pixel in row for c in pixel) for row in pixels)
png = (
    b"\x89PNG\r\n\x1a\n"
    + chunk(b"IHDR", struct.pack(">IIBBBBB", WIDTH, HEIGHT, 8, 2, 0, 0, 0))
    + chunk(b"IDAT", zlib.compress(raw, 9))
    + chunk(b"IEND", b"")
)
legend = ", ".join(
    f"{status} {total // 100}.{total % 100:02d} USD" for status, total in rows
)
print(json.dumps({
    "content": [
        {"type": "text", "text": f"{title}: {legend} (bars left to right)"},
        {"type": "image", "source": {"type": "base64", "media_type": "image/png",
                                     "data": base64.b64encode(png).decode()}},
    ]
}))
