//! Whether the device has external power (it sits in its docking station): what
//! `device watch` polls. Behind [`PowerSource`] so other platforms add theirs; Linux's
//! `/sys/class/power_supply` layout is the one built in.

use std::path::{Path, PathBuf};

/// Tells whether external power is present.
pub trait PowerSource {
    fn external(&self) -> std::io::Result<bool>;
}

/// The Linux layout: one subfolder per supply, with a `type` file (`Mains`, `USB`,
/// `Battery`, …) and an `online` file (`1` when connected). A `Mains` or `USB` supply
/// that is online is external power.
#[derive(Debug, Clone)]
pub struct SysfsPower {
    dir: PathBuf,
}

/// Where Linux shows the power supplies.
pub const SYSFS_POWER_SUPPLY: &str = "/sys/class/power_supply";

impl SysfsPower {
    pub fn new(dir: impl Into<PathBuf>) -> SysfsPower {
        SysfsPower { dir: dir.into() }
    }
}

impl Default for SysfsPower {
    fn default() -> SysfsPower {
        SysfsPower::new(SYSFS_POWER_SUPPLY)
    }
}

impl PowerSource for SysfsPower {
    fn external(&self) -> std::io::Result<bool> {
        for entry in std::fs::read_dir(&self.dir)? {
            // A supply that vanishes while we look (unplugged USB) is no power.
            let Ok(entry) = entry else { continue };
            if supply_is_external(&entry.path()) {
                return Ok(true);
            }
        }
        Ok(false)
    }
}

/// A `Mains` or `USB` supply reporting `online` = 1; unreadable files mean no.
fn supply_is_external(supply: &Path) -> bool {
    let read = |name: &str| std::fs::read_to_string(supply.join(name)).unwrap_or_default();
    matches!(read("type").trim(), "Mains" | "USB") && read("online").trim() == "1"
}

#[cfg(test)]
mod tests {
    use super::*;

    fn supply(root: &Path, name: &str, kind: &str, online: &str) {
        let dir = root.join(name);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("type"), format!("{kind}\n")).unwrap();
        std::fs::write(dir.join("online"), format!("{online}\n")).unwrap();
    }

    #[test]
    fn a_mains_or_usb_supply_online_is_external_power() {
        let root = tempfile::tempdir().unwrap();
        let power = SysfsPower::new(root.path());
        assert!(!power.external().unwrap(), "no supplies");
        supply(root.path(), "BAT0", "Battery", "1");
        assert!(
            !power.external().unwrap(),
            "a battery is not external power"
        );
        supply(root.path(), "AC", "Mains", "0");
        assert!(!power.external().unwrap(), "mains unplugged");
        supply(root.path(), "usb", "USB", "1");
        assert!(power.external().unwrap());
        supply(root.path(), "usb", "USB", "0");
        supply(root.path(), "AC", "Mains", "1");
        assert!(power.external().unwrap());
    }

    #[test]
    fn a_missing_folder_is_an_error_and_odd_supplies_are_no_power() {
        let root = tempfile::tempdir().unwrap();
        assert!(
            SysfsPower::new(root.path().join("none"))
                .external()
                .is_err()
        );
        std::fs::create_dir(root.path().join("empty")).unwrap();
        std::fs::write(root.path().join("stray-file"), "x").unwrap();
        assert!(!SysfsPower::new(root.path()).external().unwrap());
    }
}
