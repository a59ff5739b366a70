//! Conformance of the audit log (`Audits`): entries at the database's clock, newest
//! first, an address or none, and only the newest `keep` kept.

use fieldsync_store::{AuditRecord, NewAudit};

use super::*;

fn record(s: &dyn Store, subject: &str, address: Option<&str>, keep: i64) {
    let entry = NewAudit {
        kind: "auth.login-failed",
        actor: "dev1",
        subject,
        address,
        detail: "wrong password",
    };
    s.audit_record(&entry, keep).expect("audit_record");
}

fn subjects(list: &[AuditRecord]) -> Vec<&str> {
    list.iter().map(|e| e.subject.as_str()).collect()
}

pub(crate) fn audit_newest_first_and_bounded(fx: &Fixture) {
    setup(fx);
    let s = fx.store();
    let before = s.clock_ms().expect("clock");
    record(s, "a", Some("192.0.2.7"), 10);
    record(s, "b", None, 10);
    record(s, "c", Some("2001:db8::1"), 10);
    let after = s.clock_ms().expect("clock");
    let all = s.audit_list(100).expect("audit_list");
    assert_eq!(subjects(&all), ["c", "b", "a"]);
    let a = &all[2];
    assert_eq!(
        (a.kind.as_str(), a.actor.as_str(), a.detail.as_str()),
        ("auth.login-failed", "dev1", "wrong password")
    );
    assert_eq!(a.address.as_deref(), Some("192.0.2.7"));
    assert_eq!(all[1].address, None);
    for e in &all {
        assert!((before..=after).contains(&e.at.unix_ms()), "{e:?}");
    }
    assert!(all[0].at >= all[2].at);
    assert_eq!(subjects(&s.audit_list(2).expect("audit_list")), ["c", "b"]);
    // A smaller bound drops the oldest at the next write.
    record(s, "d", None, 2);
    assert_eq!(
        subjects(&s.audit_list(100).expect("audit_list")),
        ["d", "c"]
    );
    for i in 0..20 {
        record(s, &format!("e{i}"), None, 5);
    }
    let kept = s.audit_list(100).expect("audit_list");
    assert_eq!(subjects(&kept), ["e19", "e18", "e17", "e16", "e15"]);
}
