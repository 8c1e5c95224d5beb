//! Black-box tests: real upstream servers on 127.0.0.1:0 and the gateway on port 0, talking
//! HTTP. One binary (modules below) so it links once.

mod admin;
mod balancing;
mod body_limit;
mod dashboard;
mod errors;
mod forwarding;
mod headers;
mod helpers;
mod internal_paths;
mod metrics;
mod process;
mod readiness;
mod shutdown;
mod streaming;
