#!/usr/bin/env python3
"""lookup_order: one order from the orders database, as text.

Runs in a sandbox of its own for each call (examples/tools/tools.toml): the input JSON on
standard input, the database mounted read-only at /data/orders.db, nothing else of the host.
"""

import json
import sqlite3
import sys

request = json.load(sys.stdin)
order_id = request["order_id"]  # the schema guarantees it, and its shape

# immutable=1: the mount is read-only, so SQLite must not try to lock or journal it.
db = sqlite3.connect("file:/data/orders.db?mode=ro&immutable=1", uri=True)
row = db.execute(
    "SELECT id, customer, status, total_cents, placed_at FROM orders WHERE id = ?",
    (order_id,),
).fetchone()
if row is None:
    # An error result the model reads: it can ask the user for another id.
    print(json.dumps({"content": [{"type": "text", "text": f"no order {order_id}"}], "is_error": True}))
    sys.exit(0)
order_id, customer, status, cents, placed = row
print(f"order {order_id}: {status}, {customer}, {cents // 100}.{cents % 100:02d} USD, placed {placed}")
