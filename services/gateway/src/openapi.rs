//! `GET /openapi.json` on the gateway: the services' documents as a client of the gateway
//! sees them, merged into one.
//!
//! # Why at request time
//! The gateway does not link the services (it has no database driver, no broker client), so
//! it cannot build their documents; it asks each route for its `/openapi.json` when asked
//! for its own. The answer is then always the running services' contract, never a copy that
//! drifts. It is a rare request, so no cache.
//!
//! # What changes on the way
//! - A service path gets its route's prefix: pay's `/accounts/{user_id}` is
//!   `/pay/accounts/{user_id}`.
//! - A path the gateway keeps internal (`GATEWAY_INTERNAL_PATHS`: the services' `/healthz`,
//!   `/readyz`, `/metrics`) is left out: a client cannot reach it.
//! - A service's `/admin/...` is `/admin/<route>/...`, and only when the gateway's admin
//!   forwarding is on (`ADMIN_TOKEN`); off, those paths do not exist at the gateway.
//! - Operation ids get the route's name in front (`order_buy`), so they stay unique; so do
//!   the ids that response links name.
//! - A schema two services name alike but define differently is renamed for the second
//!   (`PayAccount`), with its references; alike and equal, it is kept once.
//! - Every forwarded operation may also get the gateway's own 502 and 504.
//!
//! The gateway's own `/healthz`, `/readyz`, `/metrics` and `/openapi.json` come from
//! [`common::openapi::StandardDoc`]. If a route has no instance that answers with a
//! document, the answer is 502: a partial contract would mislead.

use std::{sync::Arc, time::Duration};

use axum::{Json, extract::State};
use futures::future::join_all;
use serde_json::{Map, Value, json};
use utoipa::OpenApi;

use crate::{
    error::GatewayError,
    proxy::{Backend, Proxy},
};

/// How long one instance may take to send its document.
const FETCH_TIMEOUT: Duration = Duration::from_secs(5);

const METHODS: [&str; 8] = [
    "get", "put", "post", "delete", "options", "head", "patch", "trace",
];

pub async fn openapi_json(State(proxy): State<Arc<Proxy>>) -> Result<Json<Value>, GatewayError> {
    let documents = join_all(proxy.backends().iter().map(|b| fetch(&proxy, b))).await;
    let mut merged = gateway_document();
    for (backend, document) in proxy.backends().iter().zip(documents) {
        let document = document.ok_or_else(|| {
            tracing::warn!(
                route = backend.route.name(),
                "no instance of the route answered with its OpenAPI document"
            );
            GatewayError::BadGateway
        })?;
        merge(&mut merged, &proxy, backend, document);
    }
    Ok(Json(merged))
}

/// The gateway's own endpoints.
fn gateway_document() -> Value {
    let mut doc = serde_json::to_value(common::openapi::StandardDoc::openapi())
        .expect("a utoipa document serializes");
    doc["info"] = json!({
        "title": "gateway",
        "version": env!("CARGO_PKG_VERSION"),
        "description": "The one door to order and pay: each service's routes under its \
            prefix (`/order/...`, `/pay/...`), their admin APIs under `/admin/<route>/...` \
            with `Authorization: Bearer <ADMIN_TOKEN>`. Every error is \
            `{\"error\": {\"code\", \"message\"}}`.",
    });
    doc
}

/// The first document an instance of the route answers with, in the proxy's attempt order.
async fn fetch(proxy: &Proxy, backend: &Backend) -> Option<Value> {
    for instance in backend.upstream.attempt_order() {
        let Ok(url) = instance.url_for("/openapi.json") else {
            continue;
        };
        let answer = proxy
            .client()
            .get(url)
            .timeout(FETCH_TIMEOUT)
            .send()
            .await
            .and_then(|r| r.error_for_status());
        match answer {
            Ok(response) => match response.json::<Value>().await {
                Ok(doc) if doc["paths"].is_object() => return Some(doc),
                _ => tracing::warn!(instance = instance.name(), "not an OpenAPI document"),
            },
            Err(e) => {
                tracing::debug!(instance = instance.name(), error = %e, "OpenAPI document not fetched")
            }
        }
    }
    None
}

/// `document` (one route's) into `merged`, as described in the module docs.
fn merge(merged: &mut Value, proxy: &Proxy, backend: &Backend, mut document: Value) {
    let route = &backend.route;
    rename_clashing_schemas(merged, &mut document, route.name());

    let paths = take_object(&mut document["paths"]);
    for (path, mut item) in paths {
        let public = if path == "/admin" || path.starts_with("/admin/") {
            if !proxy.admin_enabled() {
                continue;
            }
            format!("/admin/{}{}", route.name(), &path["/admin".len()..])
        } else if proxy.internal_paths().blocks(&path) {
            continue;
        } else {
            route.public_path(&path)
        };
        for method in METHODS {
            if let Some(op) = item.get_mut(method) {
                rename_operation(op, route.name());
            }
        }
        merged["paths"][public] = item;
    }

    let components = take_object(&mut document["components"]);
    for (kind, entries) in components {
        let Value::Object(entries) = entries else {
            continue;
        };
        if !merged["components"][&kind].is_object() {
            merged["components"][&kind] = json!({});
        }
        for (name, value) in entries {
            merged["components"][&kind][name] = value;
        }
    }

    let tags = take_array(&mut document["tags"]);
    if !merged["tags"].is_array() {
        merged["tags"] = json!([]);
    }
    for tag in tags {
        let known = merged["tags"]
            .as_array()
            .is_some_and(|t| t.iter().any(|k| k["name"] == tag["name"]));
        if !known {
            merged["tags"].as_array_mut().expect("array").push(tag);
        }
    }
}

/// The operation as forwarded: a unique id, and the gateway's own failures.
fn rename_operation(op: &mut Value, route: &str) {
    let renamed = |id: &Value| id.as_str().map(|id| json!(format!("{route}_{id}")));
    if let Some(id) = renamed(&op["operationId"]) {
        op["operationId"] = id;
    }
    // Links name operations of the same document by id.
    if let Some(responses) = op["responses"].as_object_mut() {
        for link in responses
            .values_mut()
            .filter_map(|r| r.get_mut("links").and_then(Value::as_object_mut))
            .flat_map(|links| links.values_mut())
        {
            if let Some(id) = renamed(&link["operationId"]) {
                link["operationId"] = id;
            }
        }
    }
    for (status, description) in [
        ("502", "the gateway could not reach the service"),
        ("504", "the service did not answer in time"),
    ] {
        if op["responses"].get(status).is_none() {
            op["responses"][status] = json!({
                "description": description,
                "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}},
            });
        }
    }
}

/// A schema of `document` whose name `merged` already uses for another definition gets the
/// route's name in front, here and in every reference to it.
fn rename_clashing_schemas(merged: &Value, document: &mut Value, route: &str) {
    let Some(schemas) = document["components"]["schemas"].as_object() else {
        return;
    };
    let renames: Vec<(String, String)> = schemas
        .iter()
        .filter(|(name, schema)| {
            merged["components"]["schemas"]
                .get(name.as_str())
                .is_some_and(|existing| existing != *schema)
        })
        .map(|(name, _)| (name.clone(), format!("{}{name}", capitalized(route))))
        .collect();
    for (from, to) in renames {
        let schemas = document["components"]["schemas"]
            .as_object_mut()
            .expect("object");
        if let Some(schema) = schemas.remove(&from) {
            schemas.insert(to.clone(), schema);
        }
        replace_ref(
            document,
            &format!("#/components/schemas/{from}"),
            &format!("#/components/schemas/{to}"),
        );
    }
}

fn replace_ref(value: &mut Value, from: &str, to: &str) {
    match value {
        Value::Object(map) => {
            for (key, v) in map.iter_mut() {
                if key == "$ref" && v == from {
                    *v = json!(to);
                } else {
                    replace_ref(v, from, to);
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(|v| replace_ref(v, from, to)),
        _ => {}
    }
}

fn capitalized(name: &str) -> String {
    let mut chars = name.chars();
    chars
        .next()
        .map(|c| c.to_uppercase().chain(chars).collect())
        .unwrap_or_default()
}

fn take_object(value: &mut Value) -> Map<String, Value> {
    match value.take() {
        Value::Object(map) => map,
        _ => Map::new(),
    }
}

fn take_array(value: &mut Value) -> Vec<Value> {
    match value.take() {
        Value::Array(items) => items,
        _ => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_clashing_schema_is_renamed_with_its_references() {
        let merged = json!({"components": {"schemas": {
            "ErrorBody": {"type": "object"},
            "Account": {"type": "object", "properties": {"id": {}}},
        }}});
        let mut doc = json!({
            "paths": {"/a": {"get": {"responses": {"200": {"content": {"application/json":
                {"schema": {"$ref": "#/components/schemas/Account"}}}}}}}},
            "components": {"schemas": {
                "ErrorBody": {"type": "object"},
                "Account": {"type": "object", "properties": {"user": {}}},
            }},
        });
        rename_clashing_schemas(&merged, &mut doc, "pay");
        let schemas = &doc["components"]["schemas"];
        assert!(schemas["PayAccount"].is_object());
        assert!(schemas.get("Account").is_none());
        assert!(schemas["ErrorBody"].is_object(), "equal schemas are kept");
        assert_eq!(
            doc["paths"]["/a"]["get"]["responses"]["200"]["content"]["application/json"]["schema"]
                ["$ref"],
            "#/components/schemas/PayAccount"
        );
    }

    #[test]
    fn an_operation_gets_its_route_and_the_gateway_failures() {
        let mut op = json!({"operationId": "buy", "responses": {
            "201": {"links": {"the_order": {"operationId": "get_order"}}},
            "502": {"description": "x"},
        }});
        rename_operation(&mut op, "order");
        assert_eq!(op["operationId"], "order_buy");
        assert_eq!(
            op["responses"]["201"]["links"]["the_order"]["operationId"],
            "order_get_order"
        );
        assert_eq!(op["responses"]["502"]["description"], "x", "kept");
        assert!(op["responses"]["504"]["content"].is_object());
    }
}
