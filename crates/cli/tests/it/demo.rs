//! `fieldsync demo`, the README's first command: it runs to the end, and the commands
//! it prints are real ones that work on the folder it leaves.

use std::collections::HashMap;

use crate::harness::*;

#[test]
fn the_demo_runs_and_the_commands_it_prints_work_on_its_folder() {
    let dir = TempDir::new("demo");
    let root = dir.0.join("demo");
    let out = fieldsync(
        &["demo", "--dir", root.to_str().unwrap(), "--assets", "200"],
        "",
    )
    .ok();
    assert!(out.stdout.contains("demo finished"), "{}", out.stdout);
    let commands: Vec<&str> = out
        .stdout
        .lines()
        .filter_map(|l| l.trim_start().strip_prefix("$ "))
        .collect();
    let env: HashMap<&str, &str> = commands
        .iter()
        .filter_map(|c| c.strip_prefix("export ")?.split_once('='))
        .collect();
    assert_eq!(
        env["FIELDSYNC_DB"],
        format!("sqlite:{}", root.join("main.sqlite").display())
    );
    for expected in [
        "fieldsync server init",
        "fieldsync admin table track assets",
        "fieldsync device download north-inspections",
        "fieldsync device send",
        "fieldsync device sync",
        "fieldsync admin conflicts list",
    ] {
        assert!(
            commands.contains(&expected),
            "{expected} not shown: {commands:?}"
        );
    }

    // The shown commands, typed afterwards with the shown environment.
    let run = |args: &[&str]| -> Run {
        std::process::Command::new(BIN)
            .args(args)
            .envs(env.iter().map(|(k, v)| (*k, *v)))
            .output()
            .unwrap()
            .into()
    };
    let conflicts: serde_json::Value =
        serde_json::from_str(&run(&["admin", "conflicts", "list", "--json"]).ok().stdout).unwrap();
    assert_eq!(conflicts.as_array().unwrap().len(), 1, "{conflicts}");
    let status: serde_json::Value =
        serde_json::from_str(&run(&["device", "status", "--json"]).ok().stdout).unwrap();
    assert_eq!(status["user"], "ana");
    assert_eq!(status["pending"], 0);
    assert_eq!(status["task"], "north-inspections");
    let apply = commands
        .iter()
        .find(|c| c.starts_with("fieldsync admin task apply "))
        .unwrap();
    let file = apply.trim_start_matches("fieldsync admin task apply ");
    run(&["admin", "task", "apply", file]).ok();
}
