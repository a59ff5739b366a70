//! The authorization matrix (issue [security], acceptance 1): users × devices × tasks
//! × every route of the server, each cell answered as docs/protocol.md says, with the
//! documented error body. The routes are those `/api/openapi.json` lists (itself held
//! to the router by the server's `routes` test): a route missing from the matrix fails.
//! Conflicts have no route of their own: they travel in uploads' outcomes.
//!
//! Who asks (the matrix's columns): nobody (no device credentials), an unknown
//! device, a revoked device with its right secret and a session made before, a paired
//! device without a session, the four pairs of users ana (assigned north) and ben
//! (assigned south) on devices tab-a (assigned north) and tab-b (assigned south), a
//! disabled user's session, and an automatic session redeemed from ana's ticket on
//! tab-a. Rows of one task never leave the server through another's download or file
//! routes, nor are written through an upload of another task or outside its slice.

use std::collections::BTreeSet;

mod http;

use http::*;

use crate::files::{attach, keys, office, sha256_of};
use crate::harness::*;

const A: &str = "north-inspections";
const B: &str = "south-work-orders";

/// The documented answer of a cell: a status, and for an error its code.
fn expected(cell: &str) -> (u16, Option<&'static str>) {
    match cell {
        "200" => (200, None),
        "204" => (204, None),
        "400" => (400, Some("bad_request")),
        "401" => (401, Some("unauthorized")),
        "403" => (403, Some("forbidden")),
        "rev" => (403, Some("revoked")),
        "404" => (404, Some("not_found")),
        other => panic!("no such cell {other}"),
    }
}

/// The askers, in the matrix's column order.
const COLUMNS: [&str; 10] = [
    "nobody", "ghost", "revoked", "no-login", "ana@a", "ben@a", "ana@b", "ben@b", "cara@a", "auto",
];

#[test]
fn every_asker_gets_the_documented_answer_on_every_route() {
    let office = office();
    let url = office.server.url.clone();
    let (north, south) = keys(&office);
    // A file of a north asset (in ana's slice of north) and one of a south asset.
    let in_a = b"the north pump's drawing".to_vec();
    let in_b = b"the south valve's drawing".to_vec();
    attach(&office, "assets", &north, "a.pdf", &in_a).ok();
    attach(&office, "assets", &south, "b.pdf", &in_b).ok();
    let (sha_a, sha_b) = (sha256_of(&in_a), sha256_of(&in_b));
    let sha_none = "cd".repeat(32);
    office
        .admin(&["user", "add", "cara", "--password-stdin"], "cara-pw\n")
        .ok();
    office
        .admin(&["task", "assign", A, "--user", "cara"], "")
        .ok();

    let tab_a = office.device("tab-a", &[A]);
    let tab_b = office.device("tab-b", &[B]);
    let tab_r = office.device("tab-r", &[A]);
    let dev = |id: &str, d: &DeviceDir| Some((id.to_string(), secret_of(d)));
    let (a, b, r) = (
        dev("tab-a", &tab_a),
        dev("tab-b", &tab_b),
        dev("tab-r", &tab_r),
    );
    let session = |d: &Option<(String, String)>, user| login(&url, d.as_ref().unwrap(), user);
    let (ana_a, ticket) = session(&a, "ana");
    let ben_a = session(&a, "ben").0;
    let ana_b = session(&b, "ana").0;
    let ben_b = session(&b, "ben").0;
    let cara_a = session(&a, "cara").0;
    let ana_r = session(&r, "ana").0;
    office.admin(&["device", "revoke", "tab-r"], "").ok();
    office.admin(&["user", "disable", "cara"], "").ok();
    // ana's ticket names north once she downloaded it; redeemed, it is an automatic
    // session of north.
    let asker = |name, device: &Option<(String, String)>, token: Option<&String>, user| Asker {
        name,
        device: device.clone(),
        token: token.cloned(),
        user,
    };
    let first = send(
        &url,
        &asker("ana@a", &a, Some(&ana_a), "ana"),
        "GET",
        &format!("/api/v1/tasks/{A}/download"),
        &[],
        None,
    );
    assert_eq!(first.status, 200, "{}", first.text());
    let redeem = format!(r#"{{"ticket":"{ticket}"}}"#);
    let redeemed = send(
        &url,
        &asker("auto", &a, None, "ana"),
        "POST",
        "/api/v1/tickets/redeem",
        &[],
        Some(redeem.as_bytes()),
    );
    assert_eq!(redeemed.status, 200, "{}", redeemed.text());
    assert_eq!(redeemed.json()["task"], A);
    let auto = redeemed.json()["token"].as_str().unwrap().to_string();

    let ghost = Some(("ghost".to_string(), "00".repeat(32)));
    let askers = [
        asker("nobody", &None, None, "ana"),
        asker("ghost", &ghost, None, "ana"),
        asker("revoked", &r, Some(&ana_r), "ana"),
        asker("no-login", &a, None, "ana"),
        asker("ana@a", &a, Some(&ana_a), "ana"),
        asker("ben@a", &a, Some(&ben_a), "ben"),
        asker("ana@b", &b, Some(&ana_b), "ana"),
        asker("ben@b", &b, Some(&ben_b), "ben"),
        asker("cara@a", &a, Some(&cara_a), "cara"),
        asker("auto", &a, Some(&auto), "ana"),
    ];
    assert_eq!(askers.each_ref().map(|a| a.name), COLUMNS);

    // (method, route as /api/openapi.json names it, its parameter, the answers in
    // COLUMNS' order). Logins and logouts last: a logout ends the asker's session.
    #[rustfmt::skip]
    let matrix: Vec<(&str, &str, &str, [&str; 10])> = vec![
        //                                              nobody ghost  revoked no-login ana@a  ben@a  ana@b  ben@b  cara@a auto
        ("GET", "/health", "", ["200", "200", "200", "200", "200", "200", "200", "200", "200", "200"]),
        ("GET", "/metrics", "", ["200", "200", "200", "200", "200", "200", "200", "200", "200", "200"]),
        ("GET", "/api/openapi.json", "", ["200", "200", "200", "200", "200", "200", "200", "200", "200", "200"]),
        ("POST", "/api/v1/pair", "", ["401", "401", "401", "401", "401", "401", "401", "401", "401", "401"]),
        ("POST", "/api/v1/tickets/redeem", "", ["401", "401", "rev", "401", "401", "401", "401", "401", "401", "401"]),
        ("GET", "/api/v1/tasks", "", ["401", "401", "rev", "401", "200", "200", "200", "200", "401", "403"]),
        ("GET", "/api/v1/tasks/{name}/download", A, ["401", "401", "rev", "401", "200", "403", "403", "403", "401", "200"]),
        ("GET", "/api/v1/tasks/{name}/download", B, ["401", "401", "rev", "401", "403", "403", "403", "200", "401", "403"]),
        ("GET", "/api/v1/tasks/{name}/download", "no-such-task", ["401", "401", "rev", "401", "403", "403", "403", "403", "401", "403"]),
        ("GET", "/api/v1/tasks/{name}/files", A, ["401", "401", "rev", "401", "200", "403", "403", "403", "401", "200"]),
        ("GET", "/api/v1/tasks/{name}/files", B, ["401", "401", "rev", "401", "403", "403", "403", "200", "401", "403"]),
        ("GET", "/api/v1/tasks/{name}/files", "no-such-task", ["401", "401", "rev", "401", "403", "403", "403", "403", "401", "403"]),
        ("GET", "/api/v1/files/{sha256}", sha_a.as_str(), ["401", "401", "rev", "401", "200", "404", "404", "404", "401", "200"]),
        ("GET", "/api/v1/files/{sha256}", sha_b.as_str(), ["401", "401", "rev", "401", "404", "404", "404", "404", "401", "404"]),
        ("GET", "/api/v1/files/{sha256}", sha_none.as_str(), ["401", "401", "rev", "401", "404", "404", "404", "404", "401", "404"]),
        ("GET", "/api/v1/files/{sha256}/upload", sha_none.as_str(), ["401", "401", "rev", "401", "200", "403", "403", "403", "401", "200"]),
        ("PUT", "/api/v1/files/{sha256}/upload", "", ["401", "401", "rev", "401", "200", "403", "403", "403", "401", "200"]),
        ("POST", "/api/v1/uploads", A, ["401", "401", "rev", "401", "200", "403", "403", "403", "401", "200"]),
        ("POST", "/api/v1/uploads", B, ["401", "401", "rev", "401", "403", "403", "403", "200", "401", "403"]),
        ("POST", "/api/v1/login", "", ["401", "401", "rev", "200", "200", "200", "200", "200", "401", "200"]),
        ("POST", "/api/v1/logout", "", ["401", "401", "rev", "401", "204", "204", "204", "204", "401", "403"]),
    ];

    // Every route the server describes is in the matrix, and only those.
    let doc = send(&url, &askers[0], "GET", "/api/openapi.json", &[], None).json();
    let mut described = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for method in item.as_object().unwrap().keys() {
            described.insert((method.to_uppercase(), path.clone()));
        }
    }
    let in_matrix: BTreeSet<(String, String)> = matrix
        .iter()
        .map(|(m, p, _, _)| (m.to_string(), p.to_string()))
        .collect();
    assert_eq!(
        in_matrix, described,
        "the matrix (left) misses or adds routes"
    );

    let before_b = (slice_rows(&office, B, "ben"), fingerprint(&office));
    let mut wrong = Vec::new();
    for (method, route, param, cells) in &matrix {
        for (asker, cell) in askers.iter().zip(cells) {
            let answer = call(&office, asker, method, route, param, &north, &south);
            let (status, code) = expected(cell);
            let got_code = (answer.status >= 400).then(|| answer.json()["code"].clone());
            let ok = answer.status == status
                && got_code.as_ref().and_then(|c| c.as_str()) == code
                && (code.is_none() || answer.content_type == "application/json");
            if !ok {
                wrong.push(format!(
                    "{method} {route} [{param}] as {}: want {cell}, got {} {}",
                    asker.name,
                    answer.status,
                    answer.text().chars().take(200).collect::<String>()
                ));
                continue;
            }
            if answer.status == 200 {
                check_content(&office, asker, method, route, param, &answer, &sha_a);
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "cells answered otherwise:\n{}",
        wrong.join("\n")
    );

    // The inserts of the upload cells: those answered 200 are there, the others not.
    let written: Vec<Vec<String>> =
        office.rows("SELECT id, inspector FROM inspections WHERE id LIKE 'matrix-%' ORDER BY id");
    assert_eq!(
        written,
        vec![
            vec!["tmatrix-ana@a".to_string(), "tana".to_string()],
            vec!["tmatrix-auto".to_string(), "tana".to_string()],
        ]
    );
    // Nothing of south changed.
    assert_eq!(slice_rows(&office, B, "ben"), before_b.0);
    let after = fingerprint(&office);
    let new: Vec<&Vec<String>> = after.iter().filter(|r| !before_b.1.contains(r)).collect();
    assert_eq!(new.len(), 2, "only the two inserts: {new:?}");
    // The logged-out sessions are dead.
    for asker in &askers[4..8] {
        let answer = call(&office, asker, "GET", "/api/v1/tasks", "", &north, &south);
        assert_eq!(answer.status, 401, "{} after logout", asker.name);
    }
}

/// The request of one cell.
fn call(
    office: &Office,
    asker: &Asker,
    method: &str,
    route: &str,
    param: &str,
    north: &str,
    south: &str,
) -> Answer {
    let url = &office.server.url;
    let path = route.replace("{name}", param).replace("{sha256}", param);
    match (method, route) {
        ("POST", "/api/v1/pair") => {
            let id = asker.device.as_ref().map_or("tab-new", |d| d.0.as_str());
            let body = format!(r#"{{"device_id":"{id}","code":"0000000000"}}"#);
            send(url, asker, method, &path, &[], Some(body.as_bytes()))
        }
        ("POST", "/api/v1/tickets/redeem") => {
            let body = format!(r#"{{"ticket":"{}"}}"#, "ab".repeat(32));
            send(url, asker, method, &path, &[], Some(body.as_bytes()))
        }
        ("POST", "/api/v1/login") => {
            let body = format!(
                r#"{{"user":"{}","password":"{}-pw"}}"#,
                asker.user, asker.user
            );
            send(url, asker, method, &path, &[], Some(body.as_bytes()))
        }
        ("PUT", "/api/v1/files/{sha256}/upload") => {
            let content = format!("a photo taken by {}", asker.name).into_bytes();
            let path = format!("/api/v1/files/{}/upload", sha256_of(&content));
            let headers = [
                ("x-fieldsync-file-offset", "0".to_string()),
                ("x-fieldsync-file-size", content.len().to_string()),
            ];
            send(url, asker, method, &path, &headers, Some(&content))
        }
        ("POST", "/api/v1/uploads") => {
            let entries = if param == A {
                let id = format!("matrix-{}", asker.name);
                vec![new_inspection(&id, north, asker.user, asker.user)]
            } else {
                // South takes no inserts: an empty upload asks only whether it may.
                let _ = south;
                vec![]
            };
            let (body, headers) = upload(param, &entries);
            send(url, asker, method, "/api/v1/uploads", &headers, Some(&body))
        }
        _ => send(url, asker, method, &path, &[], None),
    }
}

/// What a granted cell answered holds only what the asker may see.
fn check_content(
    office: &Office,
    asker: &Asker,
    method: &str,
    route: &str,
    param: &str,
    answer: &Answer,
    sha_a: &str,
) {
    let what = format!("{method} {route} [{param}] as {}", asker.name);
    match route {
        "/api/v1/tasks" => {
            let names: Vec<String> = answer
                .json()
                .as_array()
                .unwrap()
                .iter()
                .map(|t| t["name"].as_str().unwrap().to_string())
                .collect();
            let want: &[&str] = match asker.name {
                "ana@a" => &[A],
                "ben@b" => &[B],
                _ => &[],
            };
            assert_eq!(names, want, "{what}");
        }
        "/api/v1/tasks/{name}/download" => {
            let (task, rows) = streamed_rows(&answer.body);
            assert_eq!(task, param, "{what}");
            assert_eq!(rows, slice_rows(office, param, asker.user), "{what}");
        }
        "/api/v1/tasks/{name}/files" => {
            let files = answer.json();
            let shas: Vec<&str> = files
                .as_array()
                .unwrap()
                .iter()
                .map(|f| f["sha256"].as_str().unwrap())
                .collect();
            let want: &[&str] = if param == A { &[sha_a] } else { &[] };
            assert_eq!(shas, want, "{what}");
        }
        "/api/v1/uploads" => {
            let outcome = answer.json();
            let n = if param == A { 1 } else { 0 };
            assert_eq!(outcome["applied"], n, "{what}: {outcome}");
        }
        _ => {}
    }
}

/// One refused upload of ana's on tab-a for north: 403 naming the entry, and the main
/// database exactly as before.
#[track_caller]
fn refused(office: &Office, asker: &Asker, task: &str, entries: &[String], why: &str) -> String {
    let before = fingerprint(office);
    let (body, headers) = upload(task, entries);
    let answer = send(
        &office.server.url,
        asker,
        "POST",
        "/api/v1/uploads",
        &headers,
        Some(&body),
    );
    assert_eq!(answer.status, 403, "{why}: {}", answer.text());
    assert_eq!(answer.json()["code"], "forbidden", "{why}");
    assert_eq!(
        fingerprint(office),
        before,
        "{why}: the main database changed"
    );
    answer.json()["message"].as_str().unwrap().to_string()
}

/// Uploads for north carrying south's rows, rows outside ana's slice or tables north
/// does not have: each refused whole, nothing written; a download of north carries
/// none of south's rows.
#[test]
fn an_upload_writes_nothing_outside_its_slice_and_a_download_carries_nothing_of_another_task() {
    let office = Office::new(40);
    let (north, south) = keys(&office);
    let tab = office.device("tab-a", &[A]);
    let device = Some(("tab-a".to_string(), secret_of(&tab)));
    let token = login(&office.server.url, device.as_ref().unwrap(), "ana").0;
    let ana = Asker {
        name: "ana@a",
        device,
        token: Some(token),
        user: "ana",
    };
    let south_name = office.value(&format!("SELECT name FROM assets WHERE id = {south}"));
    let update_asset = |key: &str| {
        format!(
            r#"{{"seq_first":1,"seq_last":1,"table":"assets","key":{key},"op":"update","base_version":1,"user":"ana","old":{{"name":"x"}},"new":{{"name":"written through north"}}}}"#
        )
    };
    let work_order = office.value("SELECT min(id) FROM work_orders");
    let good = new_inspection("mine", &north, "ana", "ana");
    let cases = [
        ("a south asset's update", vec![update_asset(&south)]),
        (
            "an inspection of a south asset",
            vec![new_inspection("south-1", &south, "ana", "ana")],
        ),
        (
            "an inspection in ben's name",
            vec![new_inspection("bens-1", &north, "ben", "ana")],
        ),
        (
            "an entry in ben's name",
            vec![new_inspection("bens-2", &north, "ben", "ben")],
        ),
        (
            "a work order (not a table of north)",
            vec![format!(
                r#"{{"seq_first":1,"seq_last":1,"table":"work_orders","key":"{work_order}","op":"update","base_version":1,"user":"ana","old":{{"title":"x"}},"new":{{"title":"written through north"}}}}"#
            )],
        ),
    ];
    for (why, entries) in &cases {
        refused(&office, &ana, A, entries, why);
    }
    // South itself, which ana is not assigned: refused whatever it carries.
    refused(
        &office,
        &ana,
        B,
        std::slice::from_ref(&good),
        "an upload naming south",
    );
    assert_eq!(
        office.value(&format!("SELECT name FROM assets WHERE id = {south}")),
        south_name
    );
    // The good entry alone passes: the refusals above were for their bad entries.
    let (body, headers) = upload(A, &[good]);
    let answer = send(
        &office.server.url,
        &ana,
        "POST",
        "/api/v1/uploads",
        &headers,
        Some(&body),
    );
    assert_eq!(answer.status, 200, "{}", answer.text());
    assert_eq!(
        office.value("SELECT inspector FROM inspections WHERE id = 'mine'"),
        "ana"
    );

    // The download of north: exactly ana's slice, none of south's rows.
    let path = format!("/api/v1/tasks/{A}/download");
    let answer = send(&office.server.url, &ana, "GET", &path, &[], None);
    assert_eq!(answer.status, 200, "{}", answer.text());
    let (_, rows) = streamed_rows(&answer.body);
    assert_eq!(rows, slice_rows(&office, A, "ana"));
    let south_rows = slice_rows(&office, B, "ben");
    assert!(
        rows.is_disjoint(&south_rows),
        "south's rows in north's download"
    );
    assert!(rows.iter().all(|(t, _)| t != "work_orders"));
}

/// Leaks this matrix found in `integrate`, closed since: a refusal named whether a
/// key outside the slice exists ("outside the task's slice" against "never in the
/// slice (unknown key)"), and on PostgreSQL an update of a south row naming as its
/// base the one the same upload had just made was taken for a row the device's own
/// send moved out: answered 200 with a `left-slice` conflict whose `not_kept.kept`
/// carried the south row's value.
#[test]
fn an_upload_outside_its_slice_reveals_nothing() {
    for engine in [Engine::Sqlite, Engine::Postgres] {
        on_engine(engine, reveals_nothing_on_this_engine);
    }
}

fn reveals_nothing_on_this_engine() {
    let office = Office::new(40);
    let (north, south) = keys(&office);
    let tab = office.device("tab-a", &[A]);
    let device = Some(("tab-a".to_string(), secret_of(&tab)));
    let token = login(&office.server.url, device.as_ref().unwrap(), "ana").0;
    let ana = Asker {
        name: "ana@a",
        device,
        token: Some(token),
        user: "ana",
    };
    let update_asset = |key: &str| {
        format!(
            r#"{{"seq_first":2,"seq_last":2,"table":"assets","key":{key},"op":"update","base_version":1,"user":"ana","old":{{"name":"x"}},"new":{{"name":"written through north"}}}}"#
        )
    };
    let exists = refused(&office, &ana, A, &[update_asset(&south)], "south key");
    let missing = refused(&office, &ana, A, &[update_asset("987654")], "missing key");
    assert_eq!(
        exists.replace(&format!("key {south}"), "key KEY"),
        missing.replace("key 987654", "key KEY"),
        "{:?}: a refusal tells whether a key exists",
        office.engine()
    );
    let good = new_inspection("mine", &north, "ana", "ana");
    refused(
        &office,
        &ana,
        A,
        &[good, update_asset(&south)],
        "a good entry with a south asset's update",
    );
}

crate::also_on_postgres!(
    every_asker_gets_the_documented_answer_on_every_route,
    an_upload_writes_nothing_outside_its_slice_and_a_download_carries_nothing_of_another_task,
);
