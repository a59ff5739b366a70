//! The app-language bindings (crates/ffi) end to end: scripts/bindings builds the
//! library and generates its Python module; a Python program
//! (examples/python/device_flow.py) drives the device through it against a real
//! server, the office answering its questions from here.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::harness::*;

const NORTH_TASK: &str = "north-inspections";

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Runs scripts/bindings for Python; the folder of the generated module.
fn python_module() -> PathBuf {
    let out = Command::new("bash")
        .arg(workspace().join("scripts/bindings"))
        .arg("python")
        .output()
        .expect("bash runs scripts/bindings");
    assert!(
        out.status.success(),
        "scripts/bindings failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let dir = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let dir = workspace().join(dir);
    assert!(
        dir.join("fieldsync_ffi.py").is_file(),
        "no generated module in {}",
        dir.display()
    );
    dir
}

#[test]
fn python_app_runs_the_device_flow() {
    let module = python_module();
    let office = Office::new(1000);
    let code = office
        .admin(&["device", "add", "py1"], "")
        .ok()
        .stdout
        .trim()
        .to_string();
    office
        .admin(&["task", "assign", NORTH_TASK, "--device", "py1"], "")
        .ok();
    let device_dir = TempDir::new("py1");
    let mut child = Command::new("python3")
        .arg(workspace().join("examples/python/device_flow.py"))
        .arg(&module)
        .arg(&device_dir.0)
        .args([office.server.url.as_str(), "py1", &code])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| {
            panic!("python3 does not run ({e}): install it (scripts/test installs python3)")
        });
    let mut stdin = child.stdin.take().unwrap();
    let mut said = Vec::new();
    for line in BufReader::new(child.stdout.take().unwrap()).lines() {
        let line = line.unwrap();
        eprintln!("python: {line}");
        if let Some(ask) = line.strip_prefix("ASK ") {
            answer(&office, ask);
            writeln!(stdin, "ok").unwrap();
            stdin.flush().unwrap();
        }
        said.push(line);
    }
    let status = child.wait().unwrap();
    assert!(status.success(), "the Python program failed: {status}");
    assert_eq!(said.last().map(String::as_str), Some("DONE"), "{said:?}");
    let progress = said
        .iter()
        .find_map(|l| l.strip_prefix("progress "))
        .expect("the program reports the progress it counted");
    let counted: serde_json::Value = serde_json::from_str(progress).unwrap();
    assert!(counted["TRANSFER"].as_u64() > Some(0), "{counted}");
}

/// Does what the Python program asks of the office.
fn answer(office: &Office, ask: &str) {
    let mut words = ask.splitn(3, ' ');
    let (what, id, value) = (words.next(), words.next(), words.next());
    match (what, id, value) {
        (Some("office-sees"), Some(id), Some(name)) => assert_eq!(
            office.value(&format!("SELECT name FROM assets WHERE id = {id}")),
            name,
            "the main database has the device's edit"
        ),
        (Some("office-edits"), Some(id), Some(name)) => office.execute_batch(&format!(
            "UPDATE assets SET name = '{name}' WHERE id = {id}"
        )),
        // Every row changes (random text: the stream does not compress it away), so
        // the next download has rows to transfer.
        (Some("office-changes-all"), None, None) => {
            office.execute_batch("UPDATE assets SET name = name || ' ' || hex(randomblob(200))")
        }
        _ => panic!("the Python program asked {ask:?}"),
    }
}
