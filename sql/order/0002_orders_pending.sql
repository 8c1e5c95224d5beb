-- What the reconciler (services/order/src/reconciler.rs) looks for: orders still waiting for
-- pay's answer, oldest first, without scanning the settled ones.
CREATE INDEX orders_pending ON orders (created_at, id) WHERE status = 'PENDING_PAYMENT';
