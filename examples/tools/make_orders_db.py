#!/usr/bin/env python3
"""Makes orders.db from orders.sql, beside this file (replacing it)."""

import pathlib
import sqlite3

here = pathlib.Path(__file__).resolve().parent
db = here / "orders.db"
db.unlink(missing_ok=True)
with sqlite3.connect(db) as connection:
    connection.executescript((here / "orders.sql").read_text(encoding="utf-8"))
connection.close()
print(f"wrote {db}")
