//! Conformance of files attached to rows (`Files`): attach, list, detach, and a
//! slice's files judged by the slice's own conditions, for integer and text keys.

use fieldsync_store::{FileRecord, NewFile};

use super::*;

fn new_file(table: &str, key: &str, name: &str, sha: char) -> NewFile {
    NewFile {
        table: table.into(),
        key: key.into(),
        name: name.into(),
        size: 10,
        sha256: sha.to_string().repeat(64),
        content_type: "application/pdf".into(),
        added_by: "admin".into(),
        added_at: now(),
    }
}

fn slice_files(fx: &Fixture, user: &str, sha: Option<&str>) -> Vec<FileRecord> {
    let s = fx.store();
    let task = s.task_get("north-inspections").unwrap().unwrap();
    let params = Params {
        user: user.into(),
        device: "dev1".into(),
    };
    let plan = fieldsync_store::plan_slice(s, &task.def, &params).expect("plan_slice");
    s.slice_files(&plan, &strings(&["assets", "inspections"]), sha)
        .expect("slice_files")
}

fn id_of(v: &Value) -> String {
    match v {
        Value::Integer(i) => i.to_string(),
        Value::Text(t) => t.clone(),
        v => panic!("key {v:?}"),
    }
}

pub(super) fn files_attach_list_detach_and_slice(fx: &Fixture) {
    setup(fx);
    let s = fx.store();
    task_apply(
        s,
        &format!(
            "{}[files]\ntables = [\"assets\", \"inspections\"]\n",
            sample::TASK_NORTH
        ),
    )
    .expect("task with files");
    let north = north_ids(fx)[0].to_string();
    let south = id_of(
        &fx.office()
            .rows("SELECT min(id) FROM assets WHERE region = 'south'")[0][0],
    );
    let inspection = id_of(
        &fx.office().rows(
            "SELECT min(i.id) FROM inspections i JOIN assets a ON a.id = i.asset_id
             WHERE a.region = 'north' AND a.status <> 'retired' AND i.inspector = 'ana'",
        )[0][0],
    );
    let a = s
        .file_attach(&new_file("assets", &north, "a.pdf", 'a'))
        .expect("attach a");
    assert_eq!(
        (a.table.as_str(), a.key.as_str(), a.size),
        ("assets", north.as_str(), 10)
    );
    s.file_attach(&new_file("assets", &south, "b.pdf", 'b'))
        .expect("attach b");
    s.file_attach(&new_file("inspections", &inspection, "c.jpg", 'c'))
        .expect("attach c");

    let names = |v: Vec<FileRecord>| v.into_iter().map(|f| f.name).collect::<Vec<_>>();
    assert_eq!(names(slice_files(fx, "ana", None)), ["a.pdf", "c.jpg"]);
    // Ben sees the assets but not ana's inspections.
    assert_eq!(names(slice_files(fx, "ben", None)), ["a.pdf"]);
    let b = "b".repeat(64);
    assert!(slice_files(fx, "ana", Some(&b)).is_empty());
    assert_eq!(
        names(slice_files(fx, "ana", Some(&"c".repeat(64)))),
        ["c.jpg"]
    );
    assert!(matches!(
        s.slice_files(
            &fieldsync_store::plan_slice(
                s,
                &s.task_get("north-inspections").unwrap().unwrap().def,
                &Params {
                    user: "ana".into(),
                    device: "dev1".into()
                },
            )
            .unwrap(),
            &strings(&["assets"]),
            Some("not-a-hash"),
        ),
        Err(StoreError::Invalid(_))
    ));

    // Refusals: the same name again, a missing row, a key the type cannot hold, an
    // unknown table, a bad hash, a name with a folder.
    let refused = |f: NewFile| s.file_attach(&f).expect_err("refused");
    assert!(matches!(
        refused(new_file("assets", &north, "a.pdf", 'd')),
        StoreError::AlreadyExists(_)
    ));
    assert!(matches!(
        refused(new_file("assets", "999999", "x.pdf", 'd')),
        StoreError::NotFound(_)
    ));
    assert!(matches!(
        refused(new_file("assets", "x1", "x.pdf", 'd')),
        StoreError::Invalid(_)
    ));
    assert!(matches!(
        refused(new_file("nope", "1", "x.pdf", 'd')),
        StoreError::NotFound(_)
    ));
    assert!(matches!(
        refused(new_file("assets", &north, "x.pdf", 'Z')),
        StoreError::Invalid(_)
    ));
    assert!(matches!(
        refused(new_file("assets", &north, "../x.pdf", 'd')),
        StoreError::Invalid(_)
    ));

    assert_eq!(s.file_list().unwrap().len(), 3);
    let gone = s.file_detach(a.id).expect("detach");
    assert_eq!(gone, a);
    assert!(matches!(s.file_detach(a.id), Err(StoreError::NotFound(_))));
    assert_eq!(names(slice_files(fx, "ana", None)), ["c.jpg"]);
}
