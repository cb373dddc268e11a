//! The API against its description, docs/api/openapi.json: every operation
//! it documents is called on a running `pnlb run` (with the document's own
//! example bodies), every answer's status is one it documents, and every
//! JSON answer matches its schema. The sequence also covers every operation
//! exactly once, so the document and the server cannot drift apart.

use std::collections::BTreeSet;

use serde_json::Value;

mod support;

use pnlb_lab::{Lab, LabSpec};
use support::*;

fn openapi() -> Value {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/api/openapi.json");
    serde_json::from_str(&std::fs::read_to_string(path).expect("docs/api/openapi.json"))
        .expect("valid JSON")
}

fn resolve<'a>(doc: &'a Value, node: &'a Value) -> &'a Value {
    match node.get("$ref").and_then(Value::as_str) {
        Some(reference) => {
            let mut target = doc;
            for part in reference.trim_start_matches("#/").split('/') {
                target = &target[part];
            }
            resolve(doc, target)
        }
        None => node,
    }
}

/// The subset of JSON Schema the document uses: type, enum, required,
/// properties, items, additionalProperties.
fn check(doc: &Value, schema: &Value, value: &Value, at: &str) -> Result<(), String> {
    let schema = resolve(doc, schema);
    if let Some(kind) = schema.get("type").and_then(Value::as_str) {
        let fits = match kind {
            "object" => value.is_object(),
            "array" => value.is_array(),
            "string" => value.is_string(),
            "integer" => value.is_i64() || value.is_u64(),
            "number" => value.is_number(),
            "boolean" => value.is_boolean(),
            _ => true,
        };
        if !fits {
            return Err(format!("{at}: expected {kind}, got {value}"));
        }
    }
    if let Some(allowed) = schema.get("enum").and_then(Value::as_array) {
        if !allowed.contains(value) {
            return Err(format!("{at}: {value} is not one of {allowed:?}"));
        }
    }
    if let Some(object) = value.as_object() {
        for required in schema
            .get("required")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let key = required.as_str().unwrap_or_default();
            if !object.contains_key(key) {
                return Err(format!("{at}: required {key:?} is missing"));
            }
        }
        let properties = schema.get("properties").and_then(Value::as_object);
        for (key, item) in object {
            match properties.and_then(|p| p.get(key)) {
                Some(property) => check(doc, property, item, &format!("{at}.{key}"))?,
                None => match schema.get("additionalProperties") {
                    Some(Value::Bool(true)) => {}
                    Some(extra) if extra.is_object() => {
                        check(doc, extra, item, &format!("{at}.{key}"))?
                    }
                    _ => return Err(format!("{at}: {key:?} is not documented")),
                },
            }
        }
    }
    if let (Some(items), Some(list)) = (schema.get("items"), value.as_array()) {
        for (i, item) in list.iter().enumerate() {
            check(doc, items, item, &format!("{at}[{i}]"))?;
        }
    }
    Ok(())
}

#[test]
fn every_documented_operation_answers_as_the_openapi_document_says() {
    if !privileged() {
        return;
    }
    let doc = openapi();
    let lab = Lab::up(&LabSpec::default()).expect("lab");
    let (_, daemon) = start_with_api(&lab, true);
    spread(&lab, "10.77.100.1".parse().unwrap(), 6);

    // (method, template, concrete path, expected status): a sequence that
    // creates what it later changes and removes.
    let sequence = [
        ("get", "/", "/", 200),
        ("get", "/metrics", "/metrics", 200),
        ("get", "/api/v1/status", "/api/v1/status", 200),
        ("get", "/api/v1/config", "/api/v1/config", 200),
        ("get", "/api/v1/services", "/api/v1/services", 200),
        (
            "get",
            "/api/v1/services/{name}",
            "/api/v1/services/web",
            200,
        ),
        (
            "get",
            "/api/v1/services/{name}/backends",
            "/api/v1/services/web/backends",
            200,
        ),
        (
            "get",
            "/api/v1/services/{name}/backends/{address}",
            "/api/v1/services/web/backends/10.77.1.11",
            200,
        ),
        ("post", "/api/v1/services", "/api/v1/services", 201),
        (
            "put",
            "/api/v1/services/{name}",
            "/api/v1/services/example",
            200,
        ),
        (
            "post",
            "/api/v1/services/{name}/backends",
            "/api/v1/services/example/backends",
            201,
        ),
        (
            "put",
            "/api/v1/services/{name}/backends/{address}",
            "/api/v1/services/example/backends/10.77.1.13",
            200,
        ),
        (
            "post",
            "/api/v1/services/{name}/backends/{address}/drain",
            "/api/v1/services/web/backends/10.77.1.11/drain",
            200,
        ),
        (
            "post",
            "/api/v1/services/{name}/backends/{address}/undrain",
            "/api/v1/services/web/backends/10.77.1.11/undrain",
            200,
        ),
        (
            "delete",
            "/api/v1/services/{name}/backends/{address}",
            "/api/v1/services/example/backends/10.77.1.13",
            200,
        ),
        (
            "delete",
            "/api/v1/services/{name}",
            "/api/v1/services/example",
            200,
        ),
        ("post", "/api/v1/zero", "/api/v1/zero", 200),
        // Without [bgp] a node announces nothing to drain.
        ("post", "/api/v1/node/drain", "/api/v1/node/drain", 409),
        ("post", "/api/v1/node/resume", "/api/v1/node/resume", 409),
        ("post", "/api/v1/reload", "/api/v1/reload", 200),
        // Documented errors, answered with the Error schema.
        (
            "get",
            "/api/v1/services/{name}",
            "/api/v1/services/nope",
            404,
        ),
        (
            "delete",
            "/api/v1/services/{name}",
            "/api/v1/services/nope",
            404,
        ),
        (
            "post",
            "/api/v1/services/{name}/backends/{address}/drain",
            "/api/v1/services/web/backends/not-an-address/drain",
            400,
        ),
    ];

    let documented: BTreeSet<(String, String)> = doc["paths"]
        .as_object()
        .unwrap()
        .iter()
        .flat_map(|(template, item)| {
            item.as_object()
                .unwrap()
                .keys()
                .filter(|k| *k != "parameters")
                .map(move |method| (method.clone(), template.clone()))
        })
        .collect();
    let exercised: BTreeSet<(String, String)> = sequence
        .iter()
        .map(|(m, t, _, _)| (m.to_string(), t.to_string()))
        .collect();
    assert_eq!(
        documented, exercised,
        "the document and this test cover the same operations"
    );

    for (method, template, concrete, expected) in sequence {
        let operation = &doc["paths"][template][method];
        let body = operation["requestBody"]["content"]["application/json"]["example"].clone();
        let body = (!body.is_null()).then(|| body.to_string());
        let token = operation.get("security").map(|_| TOKEN);
        let (status, answer) = api(
            &lab,
            &method.to_uppercase(),
            concrete,
            token,
            body.as_deref(),
        );
        let what = format!("{} {concrete}", method.to_uppercase());
        assert_eq!(status, expected, "{what}: {answer}");
        let response = operation["responses"]
            .get(status.to_string())
            .unwrap_or_else(|| panic!("{what}: status {status} is not documented"));
        let response = resolve(&doc, response);
        if let Some(schema) = response["content"]
            .get("application/json")
            .and_then(|c| c.get("schema"))
        {
            let value: Value = serde_json::from_str(&answer)
                .unwrap_or_else(|_| panic!("{what}: not JSON: {answer}"));
            check(&doc, schema, &value, "$").unwrap_or_else(|err| panic!("{what}: {err}"));
        }
    }
    daemon.stop(std::time::Duration::from_secs(10));
}
