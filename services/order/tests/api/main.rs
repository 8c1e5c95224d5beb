//! Order's integration tests, on a real database (fresh per test) and broker: its HTTP API,
//! its inbox, cancellations, its reconciler, its settings, and the real binary killed and
//! restarted. One binary (modules below) so it links once.

mod api;
mod cancel;
mod faults;
mod kill;
mod payment_results;
mod reconciler;
mod settings;
mod startup;
mod support;
