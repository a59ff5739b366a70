//! What `replica.sqlite` is in the device folder (a link, a plain file, a dangling
//! link, missing) and which file holds the current replica in each case.

use super::*;

/// What `replica.sqlite` is in the folder. fieldsync makes it a symbolic link to the
/// current generation; ordinary tools turn it into other shapes: `cp -rL`, `rsync -L`,
/// `adb pull`, a FAT card or an app that renames a copy into place leave a plain file
/// (a copy of the generation, which may also lie beside it as a plain file); a copy
/// that skipped the target leaves a dangling link; a tool that cannot make links
/// leaves none.
#[derive(Debug, Clone, PartialEq)]
pub enum Shape {
    /// A link to an existing file (its path).
    Link(PathBuf),
    /// A plain file: it is the replica apps open, so it is the current one.
    Plain,
    /// A link whose target is gone.
    Dangling,
    Missing,
}

pub fn shape(dir: &DeviceDir) -> Shape {
    let stable = dir.replica_path();
    match fs::symlink_metadata(&stable) {
        Ok(m) if m.file_type().is_symlink() => match fs::read_link(&stable) {
            Ok(target) => {
                let path = dir.root.join(target);
                if path.is_file() {
                    Shape::Link(path)
                } else {
                    Shape::Dangling
                }
            }
            Err(_) => Shape::Dangling,
        },
        Ok(m) if m.is_file() => Shape::Plain,
        _ => Shape::Missing,
    }
}

/// The file holding the current replica, whatever shape the folder is in: the link's
/// target, the plain `replica.sqlite`, or (link gone or dangling) the generation the
/// next locked command links again (see [`recover`]). Read-only commands see the same
/// replica as the commands that change it.
pub fn current_file(dir: &DeviceDir) -> Option<PathBuf> {
    match shape(dir) {
        Shape::Link(path) => Some(path),
        Shape::Plain => {
            let plain = dir.replica_path();
            Some(ahead_of_plain(dir, &plain).ok().flatten().unwrap_or(plain))
        }
        Shape::Dangling | Shape::Missing => adoptable(dir).ok().flatten(),
    }
}

/// The file `replica.sqlite` opens (the link's target, or the plain file), as the
/// commands holding the folder lock see it after [`recover`]; never a generation a
/// download is building.
pub fn installed_file(dir: &DeviceDir) -> Option<PathBuf> {
    match shape(dir) {
        Shape::Link(path) => Some(path),
        Shape::Plain => Some(dir.replica_path()),
        Shape::Dangling | Shape::Missing => None,
    }
}
