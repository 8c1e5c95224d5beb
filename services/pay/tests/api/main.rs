//! Pay's integration tests, on a real database (fresh per test) and broker: its inbox, its
//! read and admin APIs, database outages, shutdown, and the real binary killed and restarted.
//! One binary (modules below) so it links once.

mod admin;
mod admin_api;
mod api;
mod faults;
mod inbox;
mod kill;
mod settings;
mod shutdown;
mod support;
