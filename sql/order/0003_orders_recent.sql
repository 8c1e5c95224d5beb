-- What GET /orders (the dashboard's list) reads: the newest orders, without sorting them all.
CREATE INDEX orders_recent ON orders (created_at, id);
