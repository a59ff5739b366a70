//! The transport seam: an app's HTTP stack carries every call, and its failures are
//! judged and retried as the default transport's are.

use super::*;
use crate::fake::Scripted;
use fieldsync_client::ClientError;

fn busy() -> Scripted {
    Scripted::Status(
        503,
        vec![("Retry-After".into(), "0".into())],
        r#"{"code":"busy","message":"try later"}"#.into(),
    )
}

#[test]
fn every_call_goes_through_the_apps_transport() {
    let fake = Fake::new(&[(1, "one")]);
    let (_tmp, dev) = device(&fake);
    download(&dev).unwrap();
    let log = fake.log.lock().unwrap().clone();
    let paths: Vec<&str> = log.iter().map(|(_, p)| p.as_str()).collect();
    assert_eq!(
        paths,
        [
            "/api/v1/pair",
            "/api/v1/login",
            "/api/v1/tasks/work/download"
        ]
    );
    assert_eq!(
        dev.status().unwrap().server.as_deref(),
        Some("fake://office")
    );
}

#[test]
fn a_busy_server_is_asked_again_until_the_attempts_run_out() {
    let fake = Fake::new(&[(1, "one")]);
    let (_tmp, dev) = device(&fake);
    fake.then(busy());
    fake.then(busy());
    download(&dev).unwrap();
    assert_eq!(fake.count("/download"), 3);
    for _ in 0..3 {
        fake.then(busy());
    }
    let e = download(&dev).unwrap_err();
    assert!(matches!(e, ClientError::ServerBusy { .. }), "{e:?}");
    assert_eq!(fake.count("/download"), 6);
}

/// Within its patience a device asks a busy server again past its attempts (a fleet
/// docking at once waits its turn); past it, busy answers use up the attempts.
#[test]
fn a_busy_server_is_waited_for_past_the_attempts_within_the_patience() {
    let fake = Fake::new(&[(1, "one")]);
    let config = quick_config(Duration::from_secs(60));
    let (_tmp, dev) = device_with(&fake, tempfile::tempdir().unwrap(), config);
    for _ in 0..6 {
        fake.then(busy());
    }
    download(&dev).unwrap();
    assert_eq!(fake.count("/download"), 7);
    // No patience: the attempts alone.
    let (_tmp, dev) = device_with(
        &fake,
        tempfile::tempdir().unwrap(),
        quick_config(Duration::ZERO),
    );
    let before = fake.count("/download");
    for _ in 0..6 {
        fake.then(busy());
    }
    let e = download(&dev).unwrap_err();
    assert!(matches!(e, ClientError::ServerBusy { .. }), "{e:?}");
    assert_eq!(fake.count("/download") - before, 3);
}

#[test]
fn a_broken_exchange_is_unreachable_and_retried_a_refusal_is_not() {
    let fake = Fake::new(&[(1, "one")]);
    let (_tmp, dev) = device(&fake);
    for _ in 0..3 {
        fake.then(Scripted::Broken("connection reset".into()));
    }
    match download(&dev).unwrap_err() {
        ClientError::Unreachable { url, detail } => {
            assert_eq!(url, "fake://office");
            assert_eq!(detail, "connection reset");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(fake.count("/download"), 3);
    fake.then(Scripted::Status(
        403,
        vec![],
        r#"{"code":"forbidden","message":"task not assigned"}"#.into(),
    ));
    let e = download(&dev).unwrap_err();
    assert!(
        matches!(&e, ClientError::Refused(m) if m == "task not assigned"),
        "{e:?}"
    );
    assert_eq!(fake.count("/download"), 4);
    // A body that is no error of ours still says its status.
    fake.then(Scripted::Status(418, vec![], "teapot".into()));
    fake.then(Scripted::Status(418, vec![], "teapot".into()));
    fake.then(Scripted::Status(418, vec![], "teapot".into()));
    let e = download(&dev).unwrap_err();
    assert!(e.to_string().contains("HTTP 418: teapot"), "{e}");
}

#[test]
fn the_default_transport_refuses_what_it_cannot_call() {
    let tmp = tempfile::tempdir().unwrap();
    let dev = Device::new(tmp.path().join("dev"));
    let e = dev.pair("ftp://office", "tab1", "CODE").unwrap_err();
    assert!(matches!(e, ClientError::Invalid(_)), "{e:?}");
    assert!(e.to_string().contains("must start with https://"), "{e}");
}
