//! Checks of a service's `GET /openapi.json`, the same for every service: what a test
//! asserts about a document, written once.

use std::collections::BTreeSet;

use serde_json::Value;

const METHODS: [&str; 5] = ["get", "post", "put", "patch", "delete"];

/// `doc` is OpenAPI 3.1 and documents exactly `operations` (`(path, method)`, nothing more,
/// nothing less); each operation has a success response; every error response is the one
/// error shape; every `/admin` operation names the admin token's security scheme, which
/// the components define.
pub fn assert_documents(doc: &Value, operations: &[(&str, &str)]) {
    let version = doc["openapi"].as_str().unwrap_or_default();
    assert!(version.starts_with("3.1"), "openapi version {version:?}");

    let mut found = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().expect("paths") {
        for method in METHODS {
            let Some(op) = item.get(method) else { continue };
            found.insert((path.clone(), method.to_string()));
            let responses = op["responses"].as_object().expect("responses");
            assert!(
                responses.keys().any(|s| s.starts_with('2')),
                "{method} {path}: no success response"
            );
            for (status, response) in responses {
                if status.starts_with('2') || status == "503" && path == "/readyz" {
                    continue;
                }
                let schema = &response["content"]["application/json"]["schema"]["$ref"];
                assert_eq!(
                    schema, "#/components/schemas/ErrorBody",
                    "{method} {path} {status}: not the error shape"
                );
            }
            if path.starts_with("/admin") {
                assert_eq!(
                    op["security"][0]["admin_token"],
                    Value::Array(vec![]),
                    "{method} {path}: no admin_token security"
                );
            }
        }
    }
    let expected: BTreeSet<(String, String)> = operations
        .iter()
        .map(|(p, m)| (p.to_string(), m.to_string()))
        .collect();
    assert_eq!(found, expected, "documented operations");
    assert_eq!(
        doc["components"]["securitySchemes"]["admin_token"]["scheme"], "bearer",
        "admin_token security scheme"
    );
    assert!(doc["components"]["schemas"]["ErrorBody"].is_object());
}

/// The admin routes of the message tables, as every service with them documents them.
pub const MESSAGE_TABLE_ADMIN: [(&str, &str); 12] = [
    ("/admin/stats", "get"),
    ("/admin/queue", "get"),
    ("/admin/outbox", "get"),
    ("/admin/inbox", "get"),
    ("/admin/outbox/dead", "get"),
    ("/admin/inbox/dead", "get"),
    ("/admin/outbox/dead", "delete"),
    ("/admin/inbox/dead", "delete"),
    ("/admin/outbox/requeue", "post"),
    ("/admin/inbox/requeue", "post"),
    ("/admin/outbox/{id}/requeue", "post"),
    ("/admin/inbox/{id}/requeue", "post"),
];

/// The endpoints every service documents.
pub const STANDARD: [(&str, &str); 4] = [
    ("/healthz", "get"),
    ("/readyz", "get"),
    ("/metrics", "get"),
    ("/openapi.json", "get"),
];
