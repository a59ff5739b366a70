//! The router against its description (issue [security] points 3 and 5): every route
//! the code declares is in `/api/openapi.json` with its methods and no other, and
//! every answer outside them (an unknown path, another method, a path that does not
//! decode) is the documented JSON error body.

use std::collections::BTreeSet;

use axum::body::Body;
use axum::http::{Method, Request, StatusCode, header};
use fieldsync_proto::wire::{ErrorBody, ErrorCode};

use super::{call, fixture};

/// `(path, METHOD)` of every `.route("PATH", …)` call in the server's sources: the
/// methods are the `get(`, `post(`, `put(`, `delete(` and `patch(` of its handler
/// expression. Read from the code, so a route added without its description fails.
fn declared_routes() -> BTreeSet<(String, String)> {
    let mut found = BTreeSet::new();
    let mut dirs = vec![std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src")];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                routes_in(&std::fs::read_to_string(&path).unwrap(), &mut found);
            }
        }
    }
    found
}

fn routes_in(source: &str, found: &mut BTreeSet<(String, String)>) {
    let mut rest = source;
    while let Some(at) = rest.find(".route(") {
        rest = &rest[at + ".route(".len()..];
        let Some(path) = rest.trim_start().strip_prefix('"') else {
            continue;
        };
        let path = &path[..path.find('"').unwrap()];
        // The call's text up to its closing parenthesis.
        let mut depth = 1;
        let end = rest
            .char_indices()
            .find(|&(_, c)| {
                match c {
                    '(' => depth += 1,
                    ')' => depth -= 1,
                    _ => {}
                }
                depth == 0
            })
            .map(|(i, _)| i)
            .unwrap();
        let call = &rest[..end];
        let mut methods = 0;
        for method in ["get", "post", "put", "delete", "patch"] {
            let pattern = format!("{method}(");
            let named = call.match_indices(&pattern).any(|(i, _)| {
                let before = call[..i].chars().last();
                !before.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == ':')
            });
            if named {
                found.insert((path.to_string(), method.to_uppercase()));
                methods += 1;
            }
        }
        assert!(methods > 0, "no method found in .route({call})");
    }
}

/// `(path, METHOD)` of every operation of the OpenAPI document.
fn described_routes(doc: &serde_json::Value) -> BTreeSet<(String, String)> {
    let mut found = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for method in item.as_object().unwrap().keys() {
            found.insert((path.clone(), method.to_uppercase()));
        }
    }
    found
}

/// A path of the template with its parameters filled.
fn concrete(template: &str) -> String {
    template
        .replace("{name}", "north-inspections")
        .replace("{sha256}", &"ab".repeat(32))
}

#[track_caller]
fn json_error(body: &[u8]) -> ErrorBody {
    serde_json::from_slice(body).unwrap_or_else(|e| {
        panic!(
            "not the documented error body ({e}): {:?}",
            String::from_utf8_lossy(body)
        )
    })
}

#[tokio::test]
async fn openapi_describes_every_route_of_the_router_and_no_other() {
    let f = fixture("routes");
    let get = Request::get("/api/openapi.json").body(Body::empty());
    let (status, body) = call(&f, get.unwrap()).await;
    assert_eq!(status, StatusCode::OK);
    let doc: serde_json::Value = serde_json::from_slice(&body).unwrap();
    // The console's pages (`/admin`, crates/server/src/console/) are HTML for a
    // browser, not the API: deliberately outside the description, and checked apart
    // (`console_pages_are_html_outside_the_api_description`).
    let (console, declared): (BTreeSet<_>, BTreeSet<_>) = declared_routes()
        .into_iter()
        .partition(|(path, _)| is_console(path));
    assert!(
        console.len() >= 10,
        "the scan found too few console routes: {console:?}"
    );
    assert!(declared.len() >= 13, "the scan found too few: {declared:?}");
    assert_eq!(
        declared,
        described_routes(&doc),
        "the router's routes (left) and /api/openapi.json's (right) differ"
    );
    // Each described operation is served by the router: never the answer to a path
    // or a method it does not know.
    let paths: BTreeSet<&String> = declared.iter().map(|(p, _)| p).collect();
    for path in paths {
        for method in ["GET", "POST", "PUT", "DELETE", "PATCH"] {
            let req = Request::builder()
                .method(method)
                .uri(concrete(path))
                .header("x-fieldsync-protocol", "1")
                .body(Body::empty())
                .unwrap();
            let (status, body) = call(&f, req).await;
            let served = declared.contains(&(path.clone(), method.to_string()));
            if served {
                assert_ne!(status, StatusCode::METHOD_NOT_ALLOWED, "{method} {path}");
                if status == StatusCode::NOT_FOUND {
                    let e = json_error(&body);
                    assert!(!e.message.contains("no such route"), "{method} {path}");
                }
            } else {
                assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED, "{method} {path}");
                let e = json_error(&body);
                assert_eq!(e.code, ErrorCode::MethodNotAllowed, "{method} {path}");
            }
        }
    }
}

/// A console page's path: `/admin` and below.
fn is_console(path: &str) -> bool {
    path == "/admin" || path.starts_with("/admin/")
}

/// The console's routes are no part of the API's description, and each answers a
/// browser with HTML: its login form, or a redirect to it (never the JSON error body).
#[tokio::test]
async fn console_pages_are_html_outside_the_api_description() {
    let f = fixture("console");
    let doc: serde_json::Value =
        serde_json::from_str(include_str!("../../src/openapi.json")).unwrap();
    assert!(
        described_routes(&doc).iter().all(|(p, _)| !is_console(p)),
        "openapi.json describes no console page"
    );
    let console: BTreeSet<_> = declared_routes()
        .into_iter()
        .filter(|(p, _)| is_console(p))
        .collect();
    for (path, method) in &console {
        let uri = concrete(path).replace("{id}", "1");
        let req = Request::builder()
            .method(method.as_str())
            .uri(&uri)
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .body(Body::empty())
            .unwrap();
        let (status, body) = call(&f, req).await;
        match (path.as_str(), method.as_str()) {
            ("/admin/login", "GET") | ("/admin/console.css", "GET") => {
                assert_eq!(status, StatusCode::OK, "{method} {path}")
            }
            // The login form's post without its CSRF token: a refusal page.
            ("/admin/login", "POST") => {
                assert_eq!(status, StatusCode::FORBIDDEN, "{method} {path}");
                assert!(
                    String::from_utf8_lossy(&body).contains("CSRF"),
                    "{method} {path}"
                );
            }
            _ => assert_eq!(status, StatusCode::SEE_OTHER, "{method} {path}: no session"),
        }
    }
}

/// The codes the documented error body may carry: every [`ErrorCode`], each once.
#[test]
fn openapi_lists_every_error_code() {
    // An exhaustive match: a new code does not compile until it is listed here.
    let all = [
        ErrorCode::BadRequest,
        ErrorCode::Unauthorized,
        ErrorCode::Forbidden,
        ErrorCode::Revoked,
        ErrorCode::Throttled,
        ErrorCode::NotFound,
        ErrorCode::MethodNotAllowed,
        ErrorCode::PayloadTooLarge,
        ErrorCode::UpdateRequired,
        ErrorCode::Damaged,
        ErrorCode::Busy,
        ErrorCode::Internal,
    ];
    for code in all {
        match code {
            ErrorCode::BadRequest
            | ErrorCode::Unauthorized
            | ErrorCode::Forbidden
            | ErrorCode::Revoked
            | ErrorCode::Throttled
            | ErrorCode::NotFound
            | ErrorCode::MethodNotAllowed
            | ErrorCode::PayloadTooLarge
            | ErrorCode::UpdateRequired
            | ErrorCode::Damaged
            | ErrorCode::Busy
            | ErrorCode::Internal => {}
        }
    }
    let doc: serde_json::Value =
        serde_json::from_str(include_str!("../../src/openapi.json")).unwrap();
    let listed: BTreeSet<String> =
        doc["components"]["schemas"]["Error"]["properties"]["code"]["enum"]
            .as_array()
            .unwrap_or_else(|| panic!("no Error code enum in {doc}"))
            .iter()
            .map(|c| c.as_str().unwrap().to_string())
            .collect();
    let codes: BTreeSet<String> = all
        .iter()
        .map(|c| {
            serde_json::to_value(c)
                .unwrap()
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    assert_eq!(listed, codes);
}

#[tokio::test]
async fn unknown_paths_other_methods_and_undecodable_paths_answer_json() {
    let f = fixture("fallbacks");
    for (method, path, status, code) in [
        (
            Method::GET,
            "/no/such/route",
            StatusCode::NOT_FOUND,
            ErrorCode::NotFound,
        ),
        (
            Method::POST,
            "/api/v1/tasks/north-inspections",
            StatusCode::NOT_FOUND,
            ErrorCode::NotFound,
        ),
        (
            Method::DELETE,
            "/api/v1/tasks",
            StatusCode::METHOD_NOT_ALLOWED,
            ErrorCode::MethodNotAllowed,
        ),
        (
            Method::GET,
            "/api/v1/login",
            StatusCode::METHOD_NOT_ALLOWED,
            ErrorCode::MethodNotAllowed,
        ),
        (
            Method::POST,
            "/health",
            StatusCode::METHOD_NOT_ALLOWED,
            ErrorCode::MethodNotAllowed,
        ),
        // Not UTF-8 once percent-decoded: the path extractor's refusal.
        (
            Method::GET,
            "/api/v1/tasks/%FF%FE/download",
            StatusCode::BAD_REQUEST,
            ErrorCode::BadRequest,
        ),
        (
            Method::GET,
            "/api/v1/files/%C3%28",
            StatusCode::BAD_REQUEST,
            ErrorCode::BadRequest,
        ),
    ] {
        let req = Request::builder()
            .method(method.clone())
            .uri(path)
            .header("x-fieldsync-protocol", "1")
            .body(Body::empty())
            .unwrap();
        let resp = tower::ServiceExt::oneshot(
            fieldsync_server::router(fieldsync_server::AppState::new(
                f.store.clone(),
                Default::default(),
            )),
            req,
        )
        .await
        .unwrap();
        assert_eq!(resp.status(), status, "{method} {path}");
        let content_type = resp.headers().get(header::CONTENT_TYPE).cloned();
        assert_eq!(
            content_type.as_ref().and_then(|v| v.to_str().ok()),
            Some("application/json"),
            "{method} {path}"
        );
        if status == StatusCode::METHOD_NOT_ALLOWED {
            assert!(
                resp.headers().contains_key(header::ALLOW),
                "{method} {path}"
            );
        }
        let body = axum::body::to_bytes(resp.into_body(), usize::MAX)
            .await
            .unwrap();
        let e = json_error(&body);
        assert_eq!(e.code, code, "{method} {path}");
        assert!(!e.message.is_empty(), "{method} {path}");
    }
}
