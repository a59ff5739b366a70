//! Mobile task files (TOML): parsing and the checks that need no database. The store
//! checks the rest (tables tracked, columns exist, filter types) against the schema.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::filter;

/// Longest identifier fieldsync accepts for tasks, tables, columns, users and devices.
pub const NAME_MAX_CHARS: usize = 64;

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum TaskError {
    #[error("task file: {0}")]
    Toml(String),
    #[error("task file: {0}")]
    Invalid(String),
}

fn invalid(msg: impl Into<String>) -> TaskError {
    TaskError::Invalid(msg.into())
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, PartialOrd, Ord)]
#[serde(rename_all = "lowercase")]
pub enum WriteOp {
    Insert,
    Update,
    Delete,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "kebab-case")]
pub enum ConflictPolicy {
    ServerWins,
    DeviceWins,
    #[default]
    FieldMerge,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ParentRef {
    pub table: String,
    pub key: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TaskTable {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filter: Option<String>,
    /// `None`: every column of the table.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub columns: Option<Vec<String>>,
    #[serde(default)]
    pub write: Vec<WriteOp>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<ParentRef>,
    #[serde(default)]
    pub conflict: ConflictPolicy,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields)]
pub struct FilesSpec {
    #[serde(default)]
    pub tables: Vec<String>,
}

/// A mobile task as the administrator wrote it (DESIGN.md "Mobile task file").
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TaskDef {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    pub tables: Vec<TaskTable>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub files: Option<FilesSpec>,
}

/// Checks a name for tasks, users and devices: 1 to 64 of `A-Z a-z 0-9 . _ -`,
/// not starting with `.` or `-`.
pub fn check_name(kind: &str, name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.chars().count() <= NAME_MAX_CHARS
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
        && !name.starts_with(['.', '-']);
    if ok {
        Ok(())
    } else {
        Err(format!(
            "bad {kind} name `{}`: use 1 to {NAME_MAX_CHARS} letters, digits, `.`, `_` or `-`",
            name.escape_debug()
        ))
    }
}

impl TaskDef {
    /// Parses and checks a task file. Errors name the line or field at fault.
    pub fn from_toml(text: &str) -> Result<TaskDef, TaskError> {
        let def: TaskDef = toml::from_str(text)
            .map_err(|e| TaskError::Toml(e.to_string().trim_end().to_string()))?;
        def.check()?;
        Ok(def)
    }

    /// The checks that need no database: names, duplicates, parents, cycles, filters.
    pub fn check(&self) -> Result<(), TaskError> {
        check_name("task", &self.name).map_err(invalid)?;
        if self.tables.is_empty() {
            return Err(invalid("a task needs at least one [[tables]] entry"));
        }
        let mut seen = BTreeSet::new();
        for (i, t) in self.tables.iter().enumerate() {
            let at = format!("tables[{i}] (`{}`)", t.name.escape_debug());
            if t.name.is_empty() || t.name.len() > 128 {
                return Err(invalid(format!("{at}: bad table name")));
            }
            if !seen.insert(t.name.as_str()) {
                return Err(invalid(format!("{at}: table listed twice")));
            }
            if let Some(cols) = &t.columns {
                if cols.is_empty() {
                    return Err(invalid(format!(
                        "{at}: `columns` is empty (leave it out for all columns)"
                    )));
                }
                let mut names = BTreeSet::new();
                for c in cols {
                    if !names.insert(c) {
                        return Err(invalid(format!(
                            "{at}: column `{}` listed twice",
                            c.escape_debug()
                        )));
                    }
                }
            }
            let mut ops = BTreeSet::new();
            for op in &t.write {
                if !ops.insert(op) {
                    return Err(invalid(format!("{at}: `write` lists {op:?} twice")));
                }
            }
            if let Some(f) = &t.filter {
                filter::parse(f).map_err(|e| invalid(format!("{at}: filter: {e}")))?;
            }
            if let Some(p) = &t.parent {
                if p.table == t.name {
                    return Err(invalid(format!("{at}: a table cannot be its own parent")));
                }
                if !self.tables.iter().any(|o| o.name == p.table) {
                    return Err(invalid(format!(
                        "{at}: parent table `{}` is not in the task",
                        p.table.escape_debug()
                    )));
                }
            }
        }
        if let Some(files) = &self.files {
            for f in &files.tables {
                if !seen.contains(f.as_str()) {
                    return Err(invalid(format!(
                        "files.tables: `{}` is not a table of the task",
                        f.escape_debug()
                    )));
                }
            }
        }
        self.check_cycles()
    }

    fn check_cycles(&self) -> Result<(), TaskError> {
        let parent: BTreeMap<&str, &str> = self
            .tables
            .iter()
            .filter_map(|t| {
                t.parent
                    .as_ref()
                    .map(|p| (t.name.as_str(), p.table.as_str()))
            })
            .collect();
        for start in parent.keys() {
            let mut at = *start;
            let mut path = vec![at];
            while let Some(&next) = parent.get(at) {
                if path.contains(&next) {
                    path.push(next);
                    return Err(invalid(format!("parent cycle: {}", path.join(" -> "))));
                }
                path.push(next);
                at = next;
            }
        }
        Ok(())
    }

    pub fn table(&self, name: &str) -> Option<&TaskTable> {
        self.tables.iter().find(|t| t.name == name)
    }

    /// Whether any filter of the task reads `$user` (the slice then depends on the user).
    pub fn uses_user(&self) -> bool {
        self.tables
            .iter()
            .any(|t| t.filter.as_deref().is_some_and(|f| f.contains("$user")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = r#"
name = "north-inspections"
description = "Assets of the north region and their inspections"
[[tables]]
name = "assets"
filter = "region = 'north' AND status <> 'retired'"
columns = ["id", "name", "category", "status", "region", "x", "y"]
write = ["update"]
[[tables]]
name = "inspections"
parent = { table = "assets", key = "asset_id" }
filter = "inspector = $user"
write = ["insert", "update"]
conflict = "field-merge"
[files]
tables = ["assets", "inspections"]
"#;

    #[test]
    fn design_example_parses() {
        let def = TaskDef::from_toml(EXAMPLE).unwrap();
        assert_eq!(def.tables.len(), 2);
        assert_eq!(def.tables[1].write, vec![WriteOp::Insert, WriteOp::Update]);
        assert!(def.uses_user());
    }

    #[test]
    fn errors_name_the_problem() {
        let e =
            TaskDef::from_toml("name = \"x\"\n[[tables]]\nname = \"a\"\nwrite = [\"upsert\"]\n")
                .unwrap_err();
        assert!(e.to_string().contains("line 4"), "{e}");
        let e = TaskDef::from_toml("name = \"x\"\n[[tables]]\nname = \"a\"\nfliter = \"x = 1\"\n")
            .unwrap_err();
        assert!(e.to_string().contains("fliter"), "{e}");
        let e = TaskDef::from_toml(
            "name = \"x\"\n[[tables]]\nname = \"a\"\nfilter = \"x = 1; DROP TABLE a\"\n",
        )
        .unwrap_err();
        assert!(
            e.to_string().contains("tables[0]") && e.to_string().contains("filter"),
            "{e}"
        );
        let e = TaskDef::from_toml("name = \"bad name!\"\n[[tables]]\nname = \"a\"\n").unwrap_err();
        assert!(e.to_string().contains("bad task name"), "{e}");
    }

    #[test]
    fn parent_cycles_are_refused() {
        let text = r#"
name = "c"
[[tables]]
name = "a"
parent = { table = "b", key = "b_id" }
[[tables]]
name = "b"
parent = { table = "a", key = "a_id" }
"#;
        let e = TaskDef::from_toml(text).unwrap_err();
        assert!(e.to_string().contains("parent cycle"), "{e}");
    }
}
