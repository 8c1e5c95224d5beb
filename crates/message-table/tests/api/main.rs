//! The mechanism's tests on real PostgreSQL and RabbitMQ: outbox and relay, inbox, batches,
//! consumer, retention and metrics. One binary (modules below) so it links once.

mod batch;
mod consumer;
mod dead_letters;
mod inbox;
mod metrics;
mod order;
mod outbox;
mod retention;
mod support;
