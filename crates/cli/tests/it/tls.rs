//! TLS (issue [security] point 1): `server run --tls-cert --tls-key` serves https; a
//! device trusts the system's authorities plus `device pair --ca-cert`, refuses a
//! certificate it cannot trust or that names another host, and is warned when it
//! pairs over plain http with another machine. Certificates are made by `openssl`.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::harness::*;

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("openssl runs");
    assert!(out.status.success(), "openssl {args:?}: {out:?}");
}

const EC: [&str; 4] = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"];

/// A certificate authority (ca.pem, ca.key) in `dir` and a server certificate it
/// signed for `names`: (ca.pem, server.pem, server.key).
fn certificates(dir: &Path, names: &str) -> (PathBuf, PathBuf, PathBuf) {
    openssl(
        dir,
        &[
            &["req", "-x509", "-nodes", "-days", "2"][..],
            &EC,
            &[
                "-keyout",
                "ca.key",
                "-out",
                "ca.pem",
                "-subj",
                "/CN=test CA",
            ],
            &["-addext", "basicConstraints=critical,CA:TRUE"],
            &["-addext", "keyUsage=critical,keyCertSign"],
        ]
        .concat(),
    );
    let (cert, key) = signed(dir, "server", names);
    (dir.join("ca.pem"), cert, key)
}

/// A certificate `NAME.pem` (key `NAME.key`) for `names` (subjectAltName entries such
/// as `DNS:localhost,IP:127.0.0.1`), signed by the authority in `dir`.
fn signed(dir: &Path, name: &str, names: &str) -> (PathBuf, PathBuf) {
    let (key, csr, cert, ext) = (
        format!("{name}.key"),
        format!("{name}.csr"),
        format!("{name}.pem"),
        format!("{name}.cnf"),
    );
    openssl(
        dir,
        &[
            &["req", "-nodes"][..],
            &EC,
            &["-keyout", &key, "-out", &csr, "-subj", "/CN=server"],
        ]
        .concat(),
    );
    std::fs::write(
        dir.join(&ext),
        format!("subjectAltName={names}\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n"),
    )
    .unwrap();
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "2",
            "-out",
            &cert,
            "-extfile",
            &ext,
        ],
    );
    (dir.join(cert), dir.join(key))
}

/// The office's server again, over TLS with `cert` and `key`.
fn https_server(office: &Office, cert: &Path, key: &Path) -> Server {
    let server = Server::start_with(
        &office.db_url,
        &[
            "--tls-cert",
            cert.to_str().unwrap(),
            "--tls-key",
            key.to_str().unwrap(),
        ],
    );
    assert!(
        server.url.starts_with("https://127.0.0.1:"),
        "{}",
        server.url
    );
    server
}

/// Registers `id` for north-inspections and pairs a new folder with `url`, giving
/// `extra` flags (`--ca-cert PEM`).
fn pair(office: &Office, id: &str, url: &str, extra: &[&str]) -> (DeviceDir, Run) {
    let code = office.admin(&["device", "add", id], "").ok().stdout;
    office
        .admin(&["task", "assign", "north-inspections", "--device", id], "")
        .ok();
    let dev = DeviceDir {
        dir: TempDir::new(id),
    };
    let mut args = vec![
        "pair",
        "--server",
        url,
        "--device-id",
        id,
        "--code",
        code.trim(),
    ];
    args.extend_from_slice(extra);
    // One attempt: a refused certificate is not worth retrying here.
    let run = dev.run_env(&args, &[("FIELDSYNC_RETRIES", "1")]);
    (dev, run)
}

fn curl(args: &[&str]) -> (bool, String) {
    let out = Command::new("curl")
        .args(["-s", "--max-time", "5"])
        .args(args)
        .output()
        .expect("curl runs");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

#[test]
fn a_device_paired_with_the_ca_syncs_over_https() {
    let office = Office::new(20);
    let (ca, cert, key) = certificates(&office.dir.0, "DNS:localhost,IP:127.0.0.1");
    let server = https_server(&office, &cert, &key);
    let (dev, run) = pair(
        &office,
        "tab1",
        &server.url,
        &["--ca-cert", ca.to_str().unwrap()],
    );
    run.ok();
    dev.login("ana").ok();
    dev.run(&["download", "north-inspections"], "").ok();
    dev.replica()
        .execute(
            "UPDATE assets SET name = 'sent over tls' WHERE id = (SELECT min(id) FROM assets)",
            [],
        )
        .unwrap();
    dev.run(&["sync"], "").ok();
    assert_eq!(
        office.value("SELECT count(*) FROM assets WHERE name = 'sent over tls'"),
        "1"
    );
    // The folder keeps the authority: later commands need no flag.
    assert_eq!(dev.status()["server"], server.url.as_str());

    // Another client sees the same certificate; plain http on the TLS port gets no
    // answer, and the server keeps serving.
    let ca = ca.to_str().unwrap();
    assert_eq!(
        curl(&["--cacert", ca, &format!("{}/health", server.url)]),
        (true, "ok".into())
    );
    let plain = server.url.replacen("https://", "http://", 1);
    assert!(!curl(&[&format!("{plain}/health")]).0);
    assert!(
        !curl(&[&format!("{}/health", server.url)]).0,
        "trusted without the CA"
    );
    assert_eq!(
        curl(&["--cacert", ca, &format!("{}/health", server.url)]),
        (true, "ok".into())
    );
}

#[test]
fn a_device_refuses_a_certificate_it_cannot_trust() {
    let office = Office::new(5);
    let (ca, cert, key) = certificates(&office.dir.0, "DNS:localhost,IP:127.0.0.1");
    let server = https_server(&office, &cert, &key);

    // No --ca-cert: the system's authorities did not sign it.
    let (dev, run) = pair(&office, "tab1", &server.url, &[]);
    assert_eq!(run.code, 1, "{run:?}");
    assert!(
        run.stderr.contains("certificate is not trusted here") && run.stderr.contains("--ca-cert"),
        "{run:?}"
    );
    assert!(dev.status()["device_id"].is_null(), "paired after all");

    // A certificate of the right authority for another host name.
    let (other_cert, other_key) = signed(&office.dir.0, "other", "DNS:fieldsync.example");
    let impostor = https_server(&office, &other_cert, &other_key);
    let (dev, run) = pair(
        &office,
        "tab2",
        &impostor.url,
        &["--ca-cert", ca.to_str().unwrap()],
    );
    assert_eq!(run.code, 1, "{run:?}");
    assert!(run.stderr.contains("certificate"), "{run:?}");
    assert!(
        dev.status()["device_id"].is_null(),
        "paired with an impostor"
    );

    // A file that holds no certificate is refused before any network call.
    let (dev, run) = pair(
        &office,
        "tab3",
        &server.url,
        &["--ca-cert", key.to_str().unwrap()],
    );
    assert_eq!(run.code, 1, "{run:?}");
    assert!(run.stderr.contains("no certificate"), "{run:?}");
    assert!(dev.status()["device_id"].is_null());
}

#[test]
fn server_run_refuses_tls_files_that_cannot_serve() {
    let office = Office::new(1);
    let (ca, cert, key) = certificates(&office.dir.0, "DNS:localhost");
    let run_with = |c: &Path, k: &Path| {
        fieldsync(
            &[
                "server",
                "run",
                "--listen",
                "127.0.0.1:0",
                "--db",
                &office.db_url,
                "--tls-cert",
                c.to_str().unwrap(),
                "--tls-key",
                k.to_str().unwrap(),
            ],
            "",
        )
    };
    for (c, k, says) in [
        (&ca, &key, "do not make a certificate"),
        (&key, &key, "no certificate in it"),
        (&cert, &cert, "no private key"),
        (&office.dir.0.join("missing.pem"), &key, "missing.pem"),
    ] {
        let run = run_with(c, k);
        assert_eq!(run.code, 1, "{run:?}");
        assert!(
            run.stderr.starts_with("error: ") && run.stderr.contains(says),
            "{run:?}"
        );
        assert!(!run.stdout.contains("listening"), "{run:?}");
    }
    let half = fieldsync(
        &[
            "server",
            "run",
            "--db",
            &office.db_url,
            "--tls-cert",
            cert.to_str().unwrap(),
        ],
        "",
    );
    assert_eq!(half.code, 2, "{half:?}");
}

#[test]
fn pairing_over_plain_http_with_another_machine_warns() {
    let office = Office::new(1);
    let warning = "plain http to another machine";
    // Loopback: no warning.
    let (_dev, run) = pair(&office, "tab1", &office.server.url, &[]);
    assert!(!run.ok().stderr.contains(warning));
    // An address off this machine (TEST-NET-1): warned before the attempt, which fails.
    let code = office.admin(&["device", "add", "tab2"], "").ok().stdout;
    let dev = DeviceDir {
        dir: TempDir::new("tab2"),
    };
    let run = dev.run_env(
        &[
            "pair",
            "--server",
            "http://192.0.2.1:9",
            "--device-id",
            "tab2",
            "--code",
            code.trim(),
        ],
        &[
            ("FIELDSYNC_RETRIES", "1"),
            ("FIELDSYNC_CONNECT_TIMEOUT_MS", "300"),
        ],
    );
    assert_eq!(run.code, 1, "{run:?}");
    assert!(
        run.stderr
            .starts_with("warning: http://192.0.2.1:9 is plain http"),
        "{run:?}"
    );
}
