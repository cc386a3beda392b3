-- The example orders database the lookup_order and order_chart tools read (read-only).
-- orders.db is made from this file: python3 examples/tools/make_orders_db.py
CREATE TABLE orders (
    id TEXT PRIMARY KEY,
    customer TEXT NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('pending', 'shipped', 'delivered', 'refunded')),
    total_cents INTEGER NOT NULL,
    placed_at TEXT NOT NULL
);
INSERT INTO orders VALUES
    ('ord_1001', 'Ada Lovelace', 'delivered', 12999, '2026-11-02'),
    ('ord_1002', 'Grace Hopper', 'shipped', 4500, '2026-11-20'),
    ('ord_1003', 'Alan Turing', 'pending', 23000, '2026-12-01'),
    ('ord_1004', 'Katherine Johnson', 'refunded', 1999, '2026-10-15'),
    ('ord_1005', 'Edsger Dijkstra', 'delivered', 8750, '2026-11-11'),
    ('ord_1006', 'Barbara Liskov', 'shipped', 15400, '2026-11-28');
