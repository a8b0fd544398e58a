//! Running generated AppArmor profiles through the real `apparmor_parser`.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The kernel feature set the parser compiles against, so the check does not depend on the
/// kernel (or container) the tests run on. Debian's `apparmor` package ships it.
pub const FEATURES: &str = "/usr/share/apparmor-features/features";

/// Where `apparmor_parser` is, if installed (it lives in `/sbin`, often not on a user's PATH).
pub fn parser_path() -> Option<PathBuf> {
    let from_path = std::env::var_os("PATH")
        .map(|p| {
            std::env::split_paths(&p)
                .map(|d| d.join("apparmor_parser"))
                .collect::<Vec<_>>()
        })
        .unwrap_or_default();
    from_path
        .into_iter()
        .chain(["/usr/sbin/apparmor_parser", "/sbin/apparmor_parser"].map(PathBuf::from))
        .find(|p| p.is_file())
}

/// Whether profiles can be checked here: the parser and the feature file are both present.
pub fn parser_available() -> bool {
    parser_path().is_some() && Path::new(FEATURES).exists()
}

/// Compiles `text` with `apparmor_parser -Q -K -M FEATURES` (parse and compile, load nothing,
/// no cache). Returns the parser's stderr when it rejects the profile.
pub fn check_profile(text: &str) -> Result<(), String> {
    let parser = parser_path().ok_or("apparmor_parser is not installed")?;
    let mut file = tempfile::Builder::new()
        .prefix("varmor-profile-")
        .tempfile()
        .map_err(|e| format!("temporary file: {e}"))?;
    file.write_all(text.as_bytes())
        .map_err(|e| format!("write temporary file: {e}"))?;
    file.flush()
        .map_err(|e| format!("write temporary file: {e}"))?;
    let out = Command::new(&parser)
        .args(["-Q", "-K", "-M", FEATURES])
        .arg(file.path())
        .output()
        .map_err(|e| format!("run {}: {e}", parser.display()))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "apparmor_parser failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}
