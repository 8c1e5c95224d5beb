//! Order, pay and the gateway together on the real broker and databases, and the checks that
//! the docs, the README and docker-compose.yml agree with the code. One binary (modules below)
//! so it links once.

mod cancel;
mod compose;
mod compose_stack;
mod contract;
mod docs;
mod e2e;
mod faults;
mod flows;
mod instances;
mod metrics;
mod openapi;
mod ordering;
mod readme;
mod reconciler;
mod takeover;
mod trace;
