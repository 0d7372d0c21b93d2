//! `GET /openapi.json`: a valid OpenAPI 3.1 document by an independent validator
//! (`openapi-spec-validator`, Python), with every route the node registers in it and nothing it
//! does not serve, and real answers that match their documented schemas (`jsonschema`).

mod common;

use std::collections::BTreeSet;
use std::process::Command;

use common::*;
use serde_json::{Value, json};

async fn document(node: &TestNode) -> Value {
    let r = node.send("GET", "/openapi.json", None, &[], None).await;
    assert_eq!(r.status.as_u16(), 200);
    assert_eq!(
        r.header("content-type").as_deref(),
        Some("application/json")
    );
    r.body
}

/// Runs `script` with python3 and the arguments; fails with the install hint when the validator
/// is missing.
fn python(script: &str, args: &[&str]) -> std::process::Output {
    let out = Command::new("python3")
        .arg("-c")
        .arg(script)
        .args(args)
        .output()
        .expect("python3 runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !stderr.contains("No module named"),
        "the OpenAPI validator is missing: python3 -m pip install openapi-spec-validator \
         (scripts/test installs it)\n{stderr}"
    );
    out
}

#[actix_web::test]
async fn the_document_is_valid_openapi_3_1_by_an_independent_validator() {
    let node = start("").await;
    let doc = document(&node).await;
    assert_eq!(doc["openapi"], "3.1.0");
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("openapi.json");
    std::fs::write(&file, doc.to_string()).expect("write");
    let out = python(
        "import json, sys\n\
         from openapi_spec_validator import validate\n\
         from openapi_spec_validator.validation import OpenAPIV31SpecValidator\n\
         validate(json.load(open(sys.argv[1])), cls=OpenAPIV31SpecValidator)\n\
         print('valid')",
        &[file.to_str().expect("utf-8")],
    );
    assert!(
        out.status.success() && String::from_utf8_lossy(&out.stdout).contains("valid"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // A broken document is refused by the same check (the validator is really consulted).
    let mut broken = doc.clone();
    broken["paths"]["/events/api/v1/events"]["get"]["responses"] = json!("none");
    std::fs::write(&file, broken.to_string()).expect("write");
    let out = python(
        "import json, sys\n\
         from openapi_spec_validator import validate\n\
         validate(json.load(open(sys.argv[1])))",
        &[file.to_str().expect("utf-8")],
    );
    assert!(!out.status.success(), "a broken document fails validation");
}

/// The (method, path) of every route registered in the node's source: `web::resource("P")`
/// followed by its `web::get()`/`post()`/…, and `.route("P", web::get()…)`.
fn registered_routes() -> BTreeSet<(String, String)> {
    let root = env!("CARGO_MANIFEST_DIR");
    let mut files: Vec<std::path::PathBuf> = std::fs::read_dir(format!("{root}/src/http"))
        .expect("src/http")
        .map(|e| e.expect("entry").path())
        .collect();
    files.push(format!("{root}/src/realtime/mod.rs").into());
    let mut routes = BTreeSet::new();
    for f in files {
        let text = std::fs::read_to_string(&f).expect("source");
        let mut marks: Vec<(usize, &str)> = Vec::new();
        for pat in [
            "web::resource(\"",
            ".route(",
            "web::get()",
            "web::post()",
            "web::put()",
            "web::delete()",
            "web::patch()",
        ] {
            marks.extend(text.match_indices(pat));
        }
        marks.sort();
        let mut current: Option<String> = None;
        let mut explicit: Option<String> = None;
        for (at, pat) in marks {
            // The string literal starting at `from` (after whitespace), if one does.
            let literal = |from: usize| {
                let rest = text[from..].trim_start();
                let rest = rest.strip_prefix('"')?;
                Some(rest[..rest.find('"')?].to_owned())
            };
            match pat {
                "web::resource(\"" => current = literal(at + pat.len() - 1),
                // `.route("P", web::get()…)`; `.route(web::get()…)` adds to the resource.
                ".route(" => explicit = literal(at + pat.len()),
                method => {
                    let m = method
                        .trim_start_matches("web::")
                        .trim_end_matches("()")
                        .to_owned();
                    let path = explicit.take().or_else(|| current.clone());
                    if let Some(p) = path {
                        routes.insert((m, p));
                    }
                }
            }
        }
    }
    routes
}

#[actix_web::test]
async fn every_route_the_node_registers_is_documented_and_nothing_else() {
    let node = start("").await;
    let doc = document(&node).await;
    let documented: BTreeSet<(String, String)> = doc["paths"]
        .as_object()
        .expect("paths")
        .iter()
        .flat_map(|(path, ops)| {
            ops.as_object()
                .expect("operations")
                .keys()
                .filter(|k| ["get", "post", "put", "delete", "patch"].contains(&k.as_str()))
                .map(move |m| (m.clone(), path.clone()))
        })
        .collect();
    let registered = registered_routes();
    assert!(registered.len() >= 40, "{registered:?}");
    let undocumented: Vec<_> = registered.difference(&documented).collect();
    assert!(
        undocumented.is_empty(),
        "registered but not documented: {undocumented:?}"
    );
    let unserved: Vec<_> = documented.difference(&registered).collect();
    assert!(
        unserved.is_empty(),
        "documented but not registered: {unserved:?}"
    );
    // Each documented path answers something other than 404 "no such path".
    for (method, path) in &documented {
        let concrete = path
            .replace("{id}", "01a23672-b6b6-725e-849f-3cd103a8b7eb")
            .replace("{file}", "x");
        let r = node
            .send(&method.to_uppercase(), &concrete, None, &[], None)
            .await;
        assert!(
            r.body["detail"] != "no such path",
            "{method} {path} is served"
        );
    }
}

/// Checks `instance` against `schema` (a JSON Schema of the document, `$ref`s into its
/// `components/schemas`) with Python's `jsonschema`; returns whether it matches and the errors.
fn schema_check(doc: &Value, schema: &Value, instance: &Value) -> (bool, String) {
    let dir = tempfile::tempdir().expect("tempdir");
    let doc_file = dir.path().join("doc.json");
    let case_file = dir.path().join("case.json");
    std::fs::write(&doc_file, doc.to_string()).expect("write");
    std::fs::write(
        &case_file,
        json!({"schema": schema, "instance": instance}).to_string(),
    )
    .expect("write");
    let out = python(
        "import json, sys\n\
         from jsonschema import Draft202012Validator\n\
         from referencing import Registry, Resource\n\
         import referencing.jsonschema as rj\n\
         doc = json.load(open(sys.argv[1])); case = json.load(open(sys.argv[2]))\n\
         registry = Registry().with_resource('urn:doc', Resource.from_contents(doc, default_specification=rj.DRAFT202012))\n\
         schema = json.loads(json.dumps(case['schema']).replace('\"#/components', '\"urn:doc#/components'))\n\
         errors = list(Draft202012Validator(schema, registry=registry).iter_errors(case['instance']))\n\
         [print(e.json_path, e.message) for e in errors]\n\
         sys.exit(1 if errors else 0)",
        &[
            doc_file.to_str().expect("utf-8"),
            case_file.to_str().expect("utf-8"),
        ],
    );
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

fn assert_matches(doc: &Value, schema: &Value, instance: &Value, what: &str) {
    let (ok, errors) = schema_check(doc, schema, instance);
    assert!(ok, "{what} does not match its documented schema:\n{errors}");
}

fn response_schema(doc: &Value, method: &str, path: &str, status: &str) -> Value {
    let content = &doc["paths"][path][method]["responses"][status]["content"];
    let media = content
        .as_object()
        .and_then(|m| m.values().next())
        .unwrap_or_else(|| panic!("{method} {path} {status} has a body"));
    media["schema"].clone()
}

#[actix_web::test]
async fn real_answers_match_their_documented_schemas() {
    let node = start("").await;
    let doc = document(&node).await;
    let id = node.create_dialog(&dialog_body()).await;
    post_activity(&node, &id).await;

    let read = node
        .get(
            &format!("/api/v1/enduser/dialogs/{id}"),
            &node.tokens.person_1,
        )
        .await;
    assert_eq!(read.status.as_u16(), 200);
    assert!(
        !read.body["activities"]
            .as_array()
            .expect("activities")
            .is_empty()
    );
    let schema = response_schema(&doc, "get", "/api/v1/enduser/dialogs/{id}", "200");
    assert_matches(&doc, &schema, &read.body, "an end-user read");

    let list = node
        .get("/api/v1/serviceowner/dialogs", &node.tokens.owner_a)
        .await;
    let schema = response_schema(&doc, "get", "/api/v1/serviceowner/dialogs", "200");
    assert_matches(&doc, &schema, &list.body, "a dialog list");

    let events = node
        .get(
            &format!("/events/api/v1/events?resource={RESOURCE}&after=0"),
            &node.tokens.owner_a,
        )
        .await;
    assert!(!events.body.as_array().expect("events").is_empty());
    let schema = response_schema(&doc, "get", "/events/api/v1/events", "200");
    assert_matches(&doc, &schema, &events.body, "a poll page");

    let sub = node
        .post(
            "/events/api/v1/subscriptions",
            &node.tokens.owner_a,
            &json!({"endPoint": "https://10.1.2.3/hook", "resourceFilter": RESOURCE}),
        )
        .await;
    // Refused at creation (a private address), so nothing is sent: the problem shape.
    let schema = response_schema(&doc, "post", "/events/api/v1/subscriptions", "400");
    assert_eq!(sub.status.as_u16(), 400, "{}", sub.body);
    assert_matches(&doc, &schema, &sub.body, "a 400 problem");

    let r = node.send("GET", "/health/ready", None, &[], None).await;
    let schema = response_schema(&doc, "get", "/health/ready", "200");
    assert_matches(&doc, &schema, &r.body, "readiness");

    // A wrong shape fails the same check (the schemas are really applied).
    let mut wrong = read.body.clone();
    wrong["sequence"] = json!("many");
    let schema = response_schema(&doc, "get", "/api/v1/enduser/dialogs/{id}", "200");
    assert!(
        !schema_check(&doc, &schema, &wrong).0,
        "a wrong answer fails its schema"
    );
}
