//! The gateway: one HTTP entry point in front of the order and pay services.
//!
//! Why a gateway at all: clients get one address, one error shape and one place where
//! request ids start, while the services stay on a private network and can move without
//! clients noticing. It holds no business logic and no state, so it can be restarted or
//! replicated freely.
//!
//! Why it is this small: a reverse proxy's job is to be invisible. Method, path (minus the
//! route prefix), query, end-to-end headers and bodies pass through unchanged, and upstream
//! errors (4xx/5xx) reach the client as the service wrote them. The gateway only speaks up
//! for failures that are its own: no route (404), a body over the limit (413), an upstream it
//! cannot reach (502) or that does not answer in time (504).
//!
//! Why streaming: bodies are forwarded chunk by chunk in both directions, so memory use does
//! not grow with body size and a large download starts reaching the client immediately.
//!
//! Why several instances per route: a service can be scaled out or restarted one instance
//! at a time without clients noticing; an instance that refuses connections is taken out of
//! rotation and the request goes to the next one (see [`upstream`]).
//!
//! - [`config`]: the settings (environment variables) and the configuration.
//! - [`routes`]: the prefix route table: prefixes, instance URLs, per-route timeouts.
//! - [`upstream`]: round robin, ejection and trials of a route's instances.
//! - [`internal`]: the services' internal paths, kept from clients.
//! - [`proxy`]: the forwarding algorithm.
//! - [`error`]: the failures the gateway answers itself.
//! - [`health`]: readiness from every instance's health.
//! - [`metrics`]: the upstream results per instance, for `/metrics`.
//! - [`dashboard`]: the page at `/` that shows the local message table at work.
//! - [`startup`]: binding, middleware (request id, access log), serving.

pub mod config;
pub mod dashboard;
pub mod error;
pub mod health;
pub mod internal;
pub mod metrics;
pub mod openapi;
pub mod proxy;
pub mod routes;
pub mod startup;
pub mod upstream;

pub use config::{GatewayConfig, GatewaySettings, variables};
pub use startup::Application;
