//! Shared by order's integration tests.

use std::collections::HashSet;

use serde_json::Value;
use uuid::Uuid;

/// The order ids in the OrderCreated messages taken from a queue.
pub fn order_ids(deliveries: &[lapin::message::Delivery]) -> HashSet<Uuid> {
    deliveries
        .iter()
        .map(|d| {
            let body: Value = serde_json::from_slice(&d.data).unwrap();
            body["order_id"].as_str().unwrap().parse().unwrap()
        })
        .collect()
}
