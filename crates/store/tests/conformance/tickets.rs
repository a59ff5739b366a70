//! Conformance of auto-sync tickets (`Tickets`): issued, renewed, redeemed once,
//! refused when unknown, another device's, used, expired or of a disabled user.

use fieldsync_store::{Redeemed, SessionScope, TicketRecord};

use super::*;

/// A ticket `secret` of `device` and `user` expiring `ttl_ms` after the database's now.
fn ticket(s: &dyn Store, secret: &str, device: &str, user: &str, ttl_ms: i64) -> TicketRecord {
    let now = Timestamp::from_unix_ms(s.clock_ms().expect("clock"));
    TicketRecord {
        hash: sha256_hex(secret),
        device: device.into(),
        user: user.into(),
        task: None,
        expires_at: now.plus_ms(ttl_ms),
        used_at: None,
        created_at: now,
    }
}

fn get(s: &dyn Store, secret: &str) -> Option<TicketRecord> {
    s.ticket_get(&sha256_hex(secret)).expect("ticket_get")
}

fn redeem(s: &dyn Store, secret: &str, device: &str, token: &str) -> Redeemed {
    s.ticket_redeem(&sha256_hex(secret), device, &sha256_hex(token), 3_600_000)
        .expect("ticket_redeem")
}

pub(crate) fn tickets_issue_renew_redeem(fx: &Fixture) {
    setup(fx);
    let s = fx.store();
    s.device_add(&device("dev2", "code-2")).expect("dev2");
    const HOUR: i64 = 3_600_000;

    // Issued: unused, no task; renewed: later expiry, the task recorded.
    let t1 = ticket(s, "t1", "dev1", "ana", HOUR);
    s.ticket_issue(&t1).expect("issue");
    assert_eq!(get(s, "t1"), Some(t1.clone()));
    s.ticket_renew("dev1", "ana", 2 * HOUR, None)
        .expect("renew");
    let renewed = get(s, "t1").expect("t1");
    assert!(
        renewed.expires_at >= t1.expires_at.plus_ms(HOUR - 60_000),
        "renewed to now + 2 h: {renewed:?} after {t1:?}"
    );
    assert_eq!(renewed.task, None);
    s.ticket_renew("dev1", "ana", 2 * HOUR, Some("north-inspections"))
        .expect("renew with task");
    s.ticket_renew("dev1", "ana", 2 * HOUR, None)
        .expect("renew keeps the task");
    assert_eq!(
        get(s, "t1").expect("t1").task.as_deref(),
        Some("north-inspections")
    );
    // Another pair's renewal touches nothing of it.
    s.ticket_renew("dev1", "ben", 10, Some("south-work-orders"))
        .expect("renew");
    s.ticket_renew("dev2", "ana", 10, Some("south-work-orders"))
        .expect("renew");
    assert_eq!(
        get(s, "t1").expect("t1").task.as_deref(),
        Some("north-inspections")
    );

    // Another device's redeem: unknown, and the ticket stays unused.
    assert_eq!(redeem(s, "t1", "dev2", "x"), Redeemed::Unknown);
    assert_eq!(redeem(s, "nothing", "dev1", "x"), Redeemed::Unknown);
    assert_eq!(get(s, "t1").expect("t1").used_at, None);

    // Redeemed once: an automatic session of its task, one hour long.
    let Redeemed::Session(session) = redeem(s, "t1", "dev1", "auto-token") else {
        panic!("t1 redeems")
    };
    assert_eq!(
        (session.device.as_str(), session.user.as_str()),
        ("dev1", "ana")
    );
    assert_eq!(
        session.scope,
        SessionScope::Auto {
            task: Some("north-inspections".into())
        }
    );
    assert_eq!(
        session.expires_at.unix_ms() - session.created_at.unix_ms(),
        HOUR
    );
    assert_eq!(
        s.session_get(&sha256_hex("auto-token"))
            .expect("session_get"),
        Some(session.clone())
    );
    let used = get(s, "t1").expect("t1");
    assert_eq!(used.used_at, Some(session.created_at));
    // Single use; a used ticket is not renewed.
    assert_eq!(redeem(s, "t1", "dev1", "y"), Redeemed::Unknown);
    s.ticket_renew("dev1", "ana", 3 * HOUR, Some("south-work-orders"))
        .expect("renew");
    assert_eq!(get(s, "t1"), Some(used.clone()));
    assert_eq!(s.session_get(&sha256_hex("y")).expect("get"), None);

    // Expired by the database's clock: refused, left unused.
    s.ticket_issue(&ticket(s, "t2", "dev1", "ana", -1000))
        .expect("issue");
    assert_eq!(redeem(s, "t2", "dev1", "z"), Redeemed::Expired);
    assert_eq!(get(s, "t2").expect("t2").used_at, None);
    assert_eq!(s.session_get(&sha256_hex("z")).expect("get"), None);

    // A new login's ticket replaces the pair's unused ones (the used, unexpired one
    // stays), not another pair's.
    s.ticket_issue(&ticket(s, "ben1", "dev1", "ben", HOUR))
        .expect("issue");
    s.ticket_issue(&ticket(s, "t3", "dev1", "ana", HOUR))
        .expect("issue");
    assert_eq!(get(s, "t2"), None, "the older unused ticket is gone");
    assert_eq!(get(s, "t1"), Some(used));
    assert!(get(s, "ben1").is_some(), "another pair's ticket stays");

    // A disabled user's ticket is refused and left; disabling and a new password
    // delete the user's tickets.
    s.user_set_disabled("ben", true).expect("disable");
    assert_eq!(get(s, "ben1"), None, "disabling deletes the user's tickets");
    s.ticket_issue(&ticket(s, "ben2", "dev1", "ben", HOUR))
        .expect("issue");
    assert_eq!(
        redeem(s, "ben2", "dev1", "w"),
        Redeemed::Disabled("ben".into())
    );
    assert_eq!(get(s, "ben2").expect("ben2").used_at, None);
    s.user_set_password("ana", "new-hash").expect("password");
    assert_eq!(
        get(s, "t3"),
        None,
        "a new password deletes the user's tickets"
    );
    assert!(get(s, "ben2").is_some());
}
