//! The local message table, written once and used by every service.
pub mod admin;
pub mod amqp;
pub mod backoff;
pub mod config;
pub mod db;
pub mod http;
pub mod inbox;
pub mod outbox;
pub mod retention;
pub mod service;
pub mod telemetry;
#[cfg(feature = "testing")]
pub mod testing;
