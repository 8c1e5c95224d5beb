//! Pay's integration tests, on a real database (fresh per test) and broker: its inbox (refunds
//! included), its read and admin APIs, database outages, shutdown, and the real binary killed
//! and restarted. One binary (modules below) so it links once.

mod admin;
mod admin_api;
mod api;
mod faults;
mod inbox;
mod kill;
mod refunds;
mod settings;
mod shutdown;
mod support;
