//! What the three services share: the one JSON error shape ([`http`]), health and readiness
//! answers, environment-variable helpers ([`config`]), logging ([`telemetry`]), the W3C
//! trace context ([`trace`]) and the shutdown signal. Nothing here knows about databases or brokers, so the gateway depends on
//! this crate alone (`sqlx` is an opt-in feature for the services that have a database).
pub mod admin;
pub mod config;
pub mod http;
pub mod metrics;
pub mod openapi;
pub mod telemetry;
/// The W3C trace context, from its own crate (the message table uses it without this one).
pub use trace_context as trace;
