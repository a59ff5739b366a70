//! The app-language bindings (crates/ffi) end to end: scripts/bindings builds the
//! library and generates its modules; the same app flow, written in Python
//! (examples/python/device_flow.py) and in Kotlin for the JVM
//! (examples/kotlin/DeviceFlow.kt, built by scripts/kotlin-example), drives the device
//! through them against a real server, the office answering its questions from here.
//! Swift is generated and checked; it is compiled only where `swiftc` exists.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::harness::*;

const NORTH_TASK: &str = "north-inspections";

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Runs one of the workspace's scripts; the last line it printed (a path), made
/// absolute.
fn script(name: &str, args: &[&str]) -> PathBuf {
    let out = Command::new("bash")
        .arg(workspace().join("scripts").join(name))
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("bash runs scripts/{name}: {e}"));
    assert!(
        out.status.success(),
        "scripts/{name} {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let last = stdout.lines().last().unwrap_or_default().trim();
    workspace().join(last)
}

/// Runs scripts/bindings for `lang`; the folder of the generated module.
fn bindings(lang: &str) -> PathBuf {
    script("bindings", &[lang])
}

#[test]
fn python_app_runs_the_device_flow() {
    let module = bindings("python");
    assert!(
        module.join("fieldsync_ffi.py").is_file(),
        "no generated module in {}",
        module.display()
    );
    let mut app = Command::new("python3");
    app.arg(workspace().join("examples/python/device_flow.py"))
        .arg(&module);
    run_device_flow("python", app, "python3 (scripts/test installs it)");
}

#[test]
fn kotlin_app_runs_the_device_flow() {
    // Generates the Kotlin module, compiles it with the example (kotlinc, JNA: missing
    // ones fail here, with what to install) and writes the app's launcher.
    let launcher = script("kotlin-example", &[]);
    run_device_flow(
        "kotlin",
        Command::new(&launcher),
        "java (scripts/test installs a Java runtime)",
    );
}

/// The flow of examples/*/: a device `lang`1 enrolled for the task; `app` (its
/// program and leading arguments) runs with the device folder, the server's URL, the
/// device's id and enrollment code; every question it asks is answered; it must end
/// with `DONE` and report the transfer progress it counted.
fn run_device_flow(lang: &str, mut app: Command, install: &str) {
    let office = Office::new(1000);
    let device = format!("{}1", &lang[..2]);
    let code = office
        .admin(&["device", "add", &device], "")
        .ok()
        .stdout
        .trim()
        .to_string();
    office
        .admin(&["task", "assign", NORTH_TASK, "--device", &device], "")
        .ok();
    let device_dir = TempDir::new(&device);
    let mut child = app
        .arg(&device_dir.0)
        .args([office.server.url.as_str(), &device, &code])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("the {lang} app does not start ({e}): install {install}"));
    let mut stdin = child.stdin.take().unwrap();
    let mut said = Vec::new();
    for line in BufReader::new(child.stdout.take().unwrap()).lines() {
        let line = line.unwrap();
        eprintln!("{lang}: {line}");
        if let Some(ask) = line.strip_prefix("ASK ") {
            answer(&office, ask);
            writeln!(stdin, "ok").unwrap();
            stdin.flush().unwrap();
        }
        said.push(line);
    }
    let status = child.wait().unwrap();
    assert!(status.success(), "the {lang} app failed: {status}");
    assert_eq!(said.last().map(String::as_str), Some("DONE"), "{said:?}");
    let progress = said
        .iter()
        .find_map(|l| l.strip_prefix("progress "))
        .expect("the app reports the progress it counted");
    let counted: serde_json::Value = serde_json::from_str(progress).unwrap();
    assert!(counted["TRANSFER"].as_u64() > Some(0), "{counted}");
    let mine = format!("from {lang}");
    assert!(
        said.iter()
            .any(|l| l.starts_with("ASK office-sees") && l.ends_with(&mine)),
        "the {lang} app's own edit reached the office: {said:?}"
    );
}

/// Does what the app asks of the office.
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
        _ => panic!("the app asked {ask:?}"),
    }
}

/// Swift: generated with its C header and module map, the device's API in it. Swift
/// toolchains are not in this machine's packages: where `swiftc` exists the module is
/// type-checked too, elsewhere the test says it did not.
#[test]
fn swift_bindings_are_generated() {
    let dir = bindings("swift");
    let read = |name: &str| {
        std::fs::read_to_string(dir.join(name))
            .unwrap_or_else(|e| panic!("{name} in {}: {e}", dir.display()))
    };
    // Whitespace as one space: what is checked is the API, not the generator's layout.
    let swift = read("fieldsync_ffi.swift")
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ");
    let header = read("fieldsync_ffiFFI.h");
    let modulemap = read("fieldsync_ffiFFI.modulemap");
    assert!(modulemap.contains("fieldsync_ffiFFI.h"), "{modulemap}");
    for api in [
        "open class Device",
        "public static func `open`(dir: String) -> Device",
        "func pair(server: String, deviceId: String, code: String, caPem: String?) throws",
        "func login(user: String, password: String) throws",
        "func download(task: String, options: DownloadOptions, listener: ProgressListener?, \
         cancel: CancelToken?) throws -> Report",
        "func send(listener: ProgressListener?, cancel: CancelToken?) throws -> Report",
        "func sync(options: DownloadOptions, listener: ProgressListener?, cancel: \
         CancelToken?) throws -> Report",
        "func replica() -> Replica",
        "func watcher(power: PowerSource, pollMs: UInt64) -> Watcher",
        "public protocol ProgressListener",
        "public protocol PowerSource",
        "enum FieldsyncError: Swift.Error",
        "case NotPaired(message: String, exitCode: Int32",
    ] {
        assert!(swift.contains(api), "the Swift module lacks {api:?}");
    }
    assert!(
        header.contains("uniffi_fieldsync_ffi_fn_method_device_download"),
        "the header declares the library's functions"
    );
    let Some(swiftc) = which("swiftc") else {
        eprintln!("swiftc is not installed: the Swift module was generated, not compiled");
        return;
    };
    let out = Command::new(swiftc)
        .current_dir(&dir)
        .args([
            "-typecheck",
            "-Xcc",
            "-fmodule-map-file=fieldsync_ffiFFI.modulemap",
            "-I",
            ".",
            "fieldsync_ffi.swift",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "swiftc -typecheck: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The path of `program` when it is on PATH.
fn which(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|p| p.is_file())
}
