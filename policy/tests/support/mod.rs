//! Helpers shared by the integration tests of `varmor-policy`.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

/// The crate directory.
pub fn crate_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The repository root.
pub fn repo_dir() -> PathBuf {
    crate_dir().parent().expect("workspace root").to_path_buf()
}

/// Compares `actual` with the golden file `tests/golden/<rel>`; with `UPDATE_GOLDEN=1` writes
/// it instead. Returns a description of the difference instead of panicking, so a test can
/// report every stale file at once.
pub fn check_golden(rel: &str, actual: &str) -> Result<(), String> {
    let path = crate_dir().join("tests/golden").join(rel);
    if std::env::var_os("UPDATE_GOLDEN").is_some_and(|v| v == "1") {
        std::fs::create_dir_all(path.parent().expect("parent")).expect("create golden dir");
        std::fs::write(&path, actual).expect("write golden");
        return Ok(());
    }
    let expected = std::fs::read_to_string(&path).map_err(|e| {
        format!(
            "{}: {e} (run with UPDATE_GOLDEN=1 to create it)",
            path.display()
        )
    })?;
    if expected == actual {
        return Ok(());
    }
    let first = expected
        .lines()
        .zip(actual.lines())
        .position(|(a, b)| a != b)
        .unwrap_or_else(|| expected.lines().count().min(actual.lines().count()));
    Err(format!(
        "{} differs from the generated output at line {} (run with UPDATE_GOLDEN=1 to refresh after checking the change)\n  golden:    {:?}\n  generated: {:?}",
        path.display(),
        first + 1,
        expected.lines().nth(first).unwrap_or("<end of file>"),
        actual.lines().nth(first).unwrap_or("<end of file>"),
    ))
}

/// [`check_golden`] that panics on a difference.
pub fn assert_golden(rel: &str, actual: &str) {
    if let Err(e) = check_golden(rel, actual) {
        panic!("{e}");
    }
}

/// Whether `VARMOR_REQUIRE_KERNEL_TESTS=1` (set by CI): a test that cannot run must then fail
/// instead of skipping.
pub fn require_system_tests() -> bool {
    std::env::var_os("VARMOR_REQUIRE_KERNEL_TESTS").is_some_and(|v| v == "1")
}

/// Skips (returns true) when a prerequisite is missing, saying why; fails instead when CI
/// requires the test.
pub fn skip_unless(available: bool, what: &str) -> bool {
    if available {
        return false;
    }
    if require_system_tests() {
        panic!("{what} is required (VARMOR_REQUIRE_KERNEL_TESTS=1) but not available");
    }
    eprintln!("SKIP: {what} is not available");
    true
}

/// All YAML files under a directory, sorted.
pub fn yaml_files(dir: &Path) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "yaml" || x == "yml"))
        .collect();
    out.sort();
    out
}
pub mod apparmor;
pub mod seccomp;
