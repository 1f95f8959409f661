//! The producer's OpenAPI document at `/openapi.json`: valid JSON that describes
//! `POST /callback` (its request and every answer with its error body), the probes and
//! the read API.

use e2e::{Status, TestEnv, post_callback};
use serde_json::Value;

/// The schema a `$ref` points to (`#/components/schemas/Name`), or the schema itself.
fn resolve<'a>(document: &'a Value, schema: &'a Value) -> &'a Value {
    match schema["$ref"].as_str() {
        Some(reference) => {
            let name = reference.trim_start_matches("#/components/schemas/");
            &document["components"]["schemas"][name]
        }
        None => schema,
    }
}

#[tokio::test]
async fn openapi_document_describes_the_callback_its_answers_and_error_bodies() -> anyhow::Result<()>
{
    let mut env = TestEnv::start(Status::default()).await?;
    let url = env.start_producer(&[]).await?;

    let response = lastseen::tls::get(url.replace("/callback", "/openapi.json")).await?;
    assert_eq!(response.status().as_u16(), 200);
    assert_eq!(
        response
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok()),
        Some("application/json")
    );
    let document: Value = response.json().await?;
    assert!(
        document["openapi"]
            .as_str()
            .is_some_and(|v| v.starts_with("3.")),
        "{}",
        document["openapi"]
    );

    let callback = &document["paths"]["/callback"]["post"];
    let request = resolve(
        &document,
        &callback["requestBody"]["content"]["application/json"]["schema"],
    );
    assert_eq!(request["required"], serde_json::json!(["object_ids"]));
    let object_id = resolve(&document, &request["properties"]["object_ids"]["items"]);
    assert_eq!(
        (
            &object_id["type"],
            &object_id["format"],
            &object_id["minimum"]
        ),
        (
            &Value::from("integer"),
            &Value::from("int64"),
            &Value::from(0)
        )
    );

    let responses = &callback["responses"];
    let accepted = resolve(
        &document,
        &responses["202"]["content"]["application/json"]["schema"],
    );
    assert_eq!(accepted["properties"]["accepted"]["type"], "integer");
    assert_eq!(accepted["properties"]["spooled"]["type"], "boolean");
    for status in ["400", "413", "415", "422", "503"] {
        let error = resolve(
            &document,
            &responses[status]["content"]["application/json"]["schema"],
        );
        assert_eq!(
            error["required"],
            serde_json::json!(["error", "message"]),
            "{status}"
        );
    }
    assert!(
        responses["503"]["headers"]["Retry-After"].is_object(),
        "{}",
        responses["503"]
    );
    for probe in ["/healthz", "/readyz"] {
        assert!(
            document["paths"][probe]["get"]["responses"]["200"].is_object(),
            "{probe}"
        );
    }

    // The error codes the producer sends are the ones the document lists.
    let codes = &document["components"]["schemas"]["ErrorCode"]["enum"];
    let codes: Vec<&str> = codes
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    // The read API: every path, its 400 body, and the codes its errors send.
    for path in [
        "/objects",
        "/objects/{id}",
        "/objects/{id}/history",
        "/events",
        "/events/stream",
    ] {
        let get = &document["paths"][path]["get"];
        assert!(get["responses"]["200"].is_object(), "{path}");
        assert!(get["responses"]["503"].is_object(), "{path}");
    }
    for code in [
        "invalid_parameter",
        "unknown_object",
        "reads_off",
        "database_unavailable",
    ] {
        assert!(codes.contains(&code), "{code:?} is not among {codes:?}");
    }
    for (content_type, body) in [
        (Some("application/json"), "{\"object_ids\": [1,"),
        (Some("application/json"), "{\"object_ids\": [-1]}"),
        (Some("text/plain"), "{\"object_ids\": [1]}"),
    ] {
        let (_, error) = post_callback(&url, content_type, body).await?;
        let code = error["error"].as_str().unwrap_or_default();
        assert!(codes.contains(&code), "{code:?} is not among {codes:?}");
    }
    env.teardown().await
}
