//! The runtime order and pay are built on: a service around the local message table.
//! [`service::Service`] wires the database (the message tables' migrations, then the
//! service's), the outbox and inbox workers, the standard endpoints and an orderly shutdown;
//! [`admin`] is the operator's view of the message tables; [`faults`] its teaching fault
//! switches (`DEMO_FAULTS`); [`metrics`] is `GET /metrics`; [`settings`] are the message
//! table's environment variables. Order and pay bring only their routes and their message
//! handler.
pub mod admin;
pub mod faults;
pub mod metrics;
pub mod service;
pub mod settings;
