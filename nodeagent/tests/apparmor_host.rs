//! Host tests of the AppArmor enforcer: a fake host root and a fake `apparmor_parser` (a shell
//! script that logs its arguments and keeps a fake kernel profile list) show what the enforcer
//! does with files and the parser; the real `apparmor_parser` in check-only mode
//! (`-Q -K -M /usr/share/apparmor-features/features`) shows that every profile it writes for
//! the built-in rules is accepted. The kernel behaviour is proven in `apparmor_kernel.rs`.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use varmor_agent::enforcer::{AppArmorEnforcer, AppArmorOptions, Enforcer, ResultStatus};
use varmor_agent::fsutil::is_temp_name;
use varmor_agent::HostFs;
use varmor_policy::bundle::{AppArmorProfile, ProfileBundle};
use varmor_policy::catalog::{self, Category};
use varmor_policy::proto::RevisedBundle;
use varmor_policy::{NodeFacts, PolicyIdentity};

/// The fake parser. It logs each call, fails (or hangs) when a control file says so, and keeps
/// `<subdomainfs>/profiles` like the kernel: `--replace FILE` lists the file's profile in
/// enforce or complain mode, `--remove FILE` drops it.
const FAKE_PARSER: &str = r#"#!/bin/sh
dir=$(dirname "$0")
echo "$*" >> "$dir/calls"
if [ -e "$dir/hang" ]; then sleep 30; fi
sfs=""; mode=enforce; op=""; file=""
while [ $# -gt 0 ]; do
  case "$1" in
    --subdomainfs) sfs=$2; shift ;;
    --complain) mode=complain ;;
    --replace) op=replace ;;
    --remove) op=remove ;;
    -*) ;;
    *) file=$1 ;;
  esac
  shift
done
if [ -e "$dir/fail" ]; then
  echo "AppArmor parser error for $file in profile $file at line 1: syntax error, unexpected TOK_ID" >&2
  exit 1
fi
name=$(sed -n 's/^profile \([^ ]*\) .*/\1/p' "$file" | head -n 1)
cp "$file" "$dir/last-loaded"
touch "$sfs/profiles"
grep -v "^$name (" "$sfs/profiles" > "$sfs/profiles.new"
mv "$sfs/profiles.new" "$sfs/profiles"
if [ "$op" = replace ]; then echo "$name ($mode)" >> "$sfs/profiles"; fi
exit 0
"#;

/// A fake host with AppArmor enabled, and the fake parser in its own directory.
struct Fake {
    dir: tempfile::TempDir,
}

impl Fake {
    fn new() -> Fake {
        let dir = tempfile::tempdir().expect("tempdir");
        let f = Fake { dir };
        let enabled = f.root().join("sys/module/apparmor/parameters/enabled");
        std::fs::create_dir_all(enabled.parent().unwrap()).unwrap();
        std::fs::write(enabled, "Y\n").unwrap();
        std::fs::create_dir_all(f.securityfs()).unwrap();
        std::fs::create_dir_all(f.bin()).unwrap();
        write_script(&f.parser(), FAKE_PARSER);
        f
    }

    fn root(&self) -> PathBuf {
        self.dir.path().join("host")
    }
    fn securityfs(&self) -> PathBuf {
        self.root().join("sys/kernel/security/apparmor")
    }
    fn bin(&self) -> PathBuf {
        self.dir.path().join("bin")
    }
    fn parser(&self) -> PathBuf {
        self.bin().join("apparmor_parser")
    }
    fn profile_dir(&self) -> PathBuf {
        self.root().join("var/lib/varmor/apparmor")
    }

    fn enforcer(&self) -> AppArmorEnforcer {
        self.enforcer_with(Duration::from_secs(30))
    }

    fn enforcer_with(&self, timeout: Duration) -> AppArmorEnforcer {
        AppArmorEnforcer::for_host(
            &HostFs::new(self.root()),
            AppArmorOptions {
                parser: Some(self.parser()),
                timeout,
                ..AppArmorOptions::default()
            },
        )
    }

    /// The parser's calls so far, one argument list per line.
    fn calls(&self) -> Vec<String> {
        std::fs::read_to_string(self.bin().join("calls"))
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect()
    }

    /// The fake kernel's profile list.
    fn kernel(&self) -> String {
        std::fs::read_to_string(self.securityfs().join("profiles")).unwrap_or_default()
    }

    fn control(&self, name: &str, on: bool) {
        let p = self.bin().join(name);
        if on {
            std::fs::write(p, "").unwrap();
        } else {
            let _ = std::fs::remove_file(p);
        }
    }

    fn temp_files(&self) -> Vec<String> {
        std::fs::read_dir(self.profile_dir())
            .map(|d| {
                d.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|n| is_temp_name(n))
                    .collect()
            })
            .unwrap_or_default()
    }
}

fn write_script(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

fn text(name: &str, variant: &str, complain: bool) -> String {
    let flags = if complain {
        "attach_disconnected,mediate_deleted,complain"
    } else {
        "attach_disconnected,mediate_deleted"
    };
    format!("abi <abi/3.0>,\n# {variant}\nprofile {name} flags=({flags}) {{\n  file,\n}}\n")
}

/// A bundle with only an AppArmor profile.
fn bundle(name: &str, revision: u64, variant: &str, complain: bool) -> RevisedBundle {
    let yaml = "apiVersion: crd.varmor.org/v1beta1\nkind: VarmorPolicy\nmetadata:\n  name: x\n  \
         namespace: demo\nspec:\n  target:\n    kind: Deployment\n    name: x\n  policy:\n    \
         enforcer: AppArmor\n    mode: AlwaysAllow\n";
    let mut b = compile(yaml);
    b.profile_name = name.to_string();
    b.apparmor = Some(AppArmorProfile {
        name: name.to_string(),
        text: text(name, variant, complain),
        complain,
    });
    RevisedBundle {
        bundle: b,
        revision,
    }
}

fn compile(yaml: &str) -> ProfileBundle {
    let doc = varmor_policy::parse_documents(yaml)
        .into_iter()
        .next()
        .expect("one document")
        .unwrap_or_else(|e| panic!("invalid policy:\n{e}\n{yaml}"));
    varmor_policy::compile(
        &doc.spec(),
        &PolicyIdentity::namespaced("demo", doc.name()),
        &NodeFacts {
            disk_devices: Some(vec!["vda".into(), "vda1".into()]),
        },
    )
    .unwrap_or_else(|e| panic!("compile failed:\n{e}\n{yaml}"))
}

#[tokio::test]
async fn without_apparmor_or_parser_it_is_unavailable_and_says_why() {
    let empty = tempfile::tempdir().unwrap();
    let e = AppArmorEnforcer::for_host(&HostFs::new(empty.path()), AppArmorOptions::default());
    let c = e.capability();
    assert!(!c.available);
    assert!(
        c.reason.contains("/sys/module/apparmor/parameters/enabled"),
        "{c:?}"
    );
    let o = e.apply(&bundle("varmor-demo-x", 1, "v1", false)).await;
    assert_eq!(o.status, ResultStatus::Unavailable, "{o:?}");
    assert!(!e.file_of("varmor-demo-x").exists());
    let o = e.remove("varmor-demo-x").await;
    assert_eq!(o.status, ResultStatus::Removed, "{o:?}");

    let f = Fake::new();
    let missing = f.bin().join("no-such-parser");
    let e = AppArmorEnforcer::for_host(
        &HostFs::new(f.root()),
        AppArmorOptions {
            parser: Some(missing.clone()),
            ..AppArmorOptions::default()
        },
    );
    let c = e.capability();
    assert!(!c.available);
    assert!(
        c.reason.contains(&missing.display().to_string()) && c.reason.contains("not an executable"),
        "{c:?}"
    );
    let o = e.apply(&bundle("varmor-demo-x", 1, "v1", false)).await;
    assert_eq!(o.status, ResultStatus::Unavailable, "{o:?}");
    assert!(f.calls().is_empty());

    let e = f.enforcer();
    let c = e.capability();
    assert!(c.available, "{c:?}");
    assert!(
        c.reason.contains("apparmor_parser at") && c.reason.contains("var/lib/varmor/apparmor"),
        "{c:?}"
    );
}

#[tokio::test]
async fn apply_loads_a_temporary_file_then_renames_and_failures_keep_the_old_profile() {
    let f = Fake::new();
    let e = f.enforcer();
    let file = e.file_of("varmor-demo-web");
    assert_eq!(file, f.profile_dir().join("varmor-demo-web"));
    let sfs = f.securityfs().display().to_string();

    let o = e.apply(&bundle("varmor-demo-web", 1, "v1", false)).await;
    assert_eq!(o.status, ResultStatus::Applied, "{o:?}");
    assert!(
        o.message.contains("loaded varmor-demo-web (enforce)"),
        "{o:?}"
    );
    assert_eq!(
        std::fs::read_to_string(&file).unwrap(),
        text("varmor-demo-web", "v1", false)
    );
    let calls = f.calls();
    assert_eq!(calls.len(), 1, "{calls:?}");
    let prefix = format!("--replace --skip-cache --subdomainfs {sfs} ");
    let loaded = calls[0].strip_prefix(&prefix).expect(&calls[0]);
    let loaded = Path::new(loaded);
    assert_eq!(loaded.parent(), Some(f.profile_dir().as_path()));
    assert!(
        is_temp_name(&loaded.file_name().unwrap().to_string_lossy()),
        "loaded from a temporary file first: {loaded:?}"
    );
    assert_eq!(f.kernel(), "varmor-demo-web (enforce)\n");
    assert!(f.temp_files().is_empty());

    // Unchanged and loaded: the parser is not run again.
    let o = e.apply(&bundle("varmor-demo-web", 2, "v1", false)).await;
    assert_eq!(o.status, ResultStatus::Applied, "{o:?}");
    assert!(o.message.contains("up to date"), "{o:?}");
    assert_eq!(f.calls().len(), 1);

    // Changed: replaced in place, which running confined tasks follow (APPLIED).
    let o = e.apply(&bundle("varmor-demo-web", 3, "v2", false)).await;
    assert_eq!(o.status, ResultStatus::Applied, "{o:?}");
    assert!(o.message.contains("replaced"), "{o:?}");
    assert!(std::fs::read_to_string(&file).unwrap().contains("# v2"));

    // Rejected: the parser's stderr is reported; the file and the loaded profile stay.
    f.control("fail", true);
    let o = e.apply(&bundle("varmor-demo-web", 4, "v3", false)).await;
    assert_eq!(o.status, ResultStatus::Failed, "{o:?}");
    assert!(
        o.message.contains("syntax error, unexpected TOK_ID"),
        "{o:?}"
    );
    assert!(o.message.contains("stay in force"), "{o:?}");
    assert!(std::fs::read_to_string(&file).unwrap().contains("# v2"));
    assert_eq!(f.kernel(), "varmor-demo-web (enforce)\n");
    assert!(f.temp_files().is_empty(), "{:?}", f.temp_files());
    f.control("fail", false);

    // The kernel lost the profile (reboot): the same text is loaded again.
    std::fs::write(f.securityfs().join("profiles"), "").unwrap();
    let o = e.apply(&bundle("varmor-demo-web", 5, "v2", false)).await;
    assert_eq!(o.status, ResultStatus::Applied, "{o:?}");
    assert!(o.message.contains("loaded varmor-demo-web"), "{o:?}");
    assert_eq!(f.kernel(), "varmor-demo-web (enforce)\n");

    // Complain mode where the bundle says so.
    let o = e.apply(&bundle("varmor-demo-web", 6, "v4", true)).await;
    assert_eq!(o.status, ResultStatus::Applied, "{o:?}");
    assert!(o.message.contains("(complain)"), "{o:?}");
    assert!(
        f.calls().last().unwrap().contains(" --complain "),
        "{:?}",
        f.calls()
    );
    assert_eq!(f.kernel(), "varmor-demo-web (complain)\n");

    // Remove: the parser unloads the stored file, then the file goes.
    let before = f.calls().len();
    let o = e.remove("varmor-demo-web").await;
    assert_eq!(o.status, ResultStatus::Removed, "{o:?}");
    assert!(o.message.contains("unloaded varmor-demo-web"), "{o:?}");
    assert_eq!(
        f.calls()[before..],
        [format!(
            "--remove --skip-cache --subdomainfs {sfs} {}",
            file.display()
        )]
    );
    assert!(!file.exists());
    assert_eq!(f.kernel(), "");
    let o = e.remove("varmor-demo-web").await;
    assert_eq!(o.status, ResultStatus::Removed, "{o:?}");
    assert!(o.message.contains("was not loaded"), "{o:?}");
    assert_eq!(f.calls().len(), before + 1, "nothing to unload");
}

#[tokio::test]
async fn a_failed_first_load_stores_nothing_and_bad_bundles_are_refused() {
    let f = Fake::new();
    let e = f.enforcer();
    f.control("fail", true);
    let o = e.apply(&bundle("varmor-demo-new", 1, "v1", false)).await;
    assert_eq!(o.status, ResultStatus::Failed, "{o:?}");
    assert!(o.message.contains("nothing was loaded"), "{o:?}");
    assert!(o.message.contains("apparmor_parser"), "{o:?}");
    assert!(!e.file_of("varmor-demo-new").exists());
    assert!(f.temp_files().is_empty());
    f.control("fail", false);

    let mut b = bundle("varmor-demo-new", 2, "v1", false);
    b.bundle.apparmor.as_mut().unwrap().name = "varmor-other".into();
    let o = e.apply(&b).await;
    assert_eq!(o.status, ResultStatus::Failed, "{o:?}");
    assert!(o.message.contains("\"varmor-other\""), "{o:?}");
    let mut b = bundle("varmor-demo-new", 3, "v1", false);
    b.bundle.apparmor = None;
    let o = e.apply(&b).await;
    assert_eq!(o.status, ResultStatus::Failed, "{o:?}");
    assert!(o.message.contains("no AppArmor profile"), "{o:?}");
    for name in ["", "..", "../escape", "a/b", ".x.tmp-1-2", "a b"] {
        let o = e.apply(&bundle(name, 1, "v1", false)).await;
        assert_eq!(o.status, ResultStatus::Failed, "{name:?}: {o:?}");
        assert!(o.message.contains("cannot name a file"), "{name:?}: {o:?}");
        let o = e.remove(name).await;
        assert_eq!(o.status, ResultStatus::Failed, "{name:?}: {o:?}");
    }
    assert_eq!(
        f.calls().len(),
        1,
        "only the first load ran: {:?}",
        f.calls()
    );
}

#[tokio::test]
async fn a_parser_that_hangs_is_killed_and_the_request_fails() {
    let f = Fake::new();
    let e = f.enforcer_with(Duration::from_millis(300));
    f.control("hang", true);
    let start = Instant::now();
    let o = e.apply(&bundle("varmor-demo-slow", 1, "v1", false)).await;
    assert!(
        start.elapsed() < Duration::from_secs(10),
        "{:?}",
        start.elapsed()
    );
    assert_eq!(o.status, ResultStatus::Failed, "{o:?}");
    assert!(o.message.contains("did not finish within"), "{o:?}");
    assert!(!e.file_of("varmor-demo-slow").exists());
}

#[tokio::test]
async fn profiles_of_earlier_runs_that_no_held_bundle_uses_are_unloaded() {
    let f = Fake::new();
    std::fs::create_dir_all(f.profile_dir()).unwrap();
    for name in ["varmor-demo-kept", "varmor-demo-gone"] {
        std::fs::write(f.profile_dir().join(name), text(name, "old", false)).unwrap();
    }
    let leftover = f.profile_dir().join(".varmor-demo-kept.tmp-1-1");
    std::fs::write(&leftover, "partial").unwrap();
    std::fs::write(
        f.securityfs().join("profiles"),
        "varmor-demo-kept (enforce)\nvarmor-demo-gone (enforce)\nunrelated (enforce)\n",
    )
    .unwrap();

    let e = f.enforcer();
    // The agent re-applies what it holds, then sweeps.
    let o = e.apply(&bundle("varmor-demo-kept", 1, "new", false)).await;
    assert_eq!(o.status, ResultStatus::Applied, "{o:?}");
    let swept = e.remove_orphans().await;
    assert_eq!(swept.len(), 1, "{swept:?}");
    assert_eq!(swept[0].0, "varmor-demo-gone");
    assert_eq!(swept[0].1.status, ResultStatus::Removed, "{swept:?}");
    assert!(!f.profile_dir().join("varmor-demo-gone").exists());
    assert!(f.profile_dir().join("varmor-demo-kept").exists());
    assert!(!leftover.exists(), "a crash's temporary file is deleted");
    let kernel = f.kernel();
    assert!(kernel.contains("varmor-demo-kept (enforce)"), "{kernel}");
    assert!(!kernel.contains("varmor-demo-gone"), "{kernel}");
    assert!(kernel.contains("unrelated"), "{kernel}");
    assert!(e.remove_orphans().await.is_empty(), "only once");
}

// ---- the real parser, check-only ------------------------------------------------------------

const FEATURES: &str = "/usr/share/apparmor-features/features";

/// A parser that runs the real one in check-only mode on the file the enforcer hands it.
fn checking_parser(dir: &Path, real: &Path) -> PathBuf {
    let p = dir.join("check_parser");
    write_script(
        &p,
        &format!(
            "#!/bin/sh\nfor a; do file=$a; done\ncomplain=\ncase \" $* \" in *\" --complain \"*) complain=--complain ;; esac\n\
             cp \"$file\" \"{}/last\"\nexec {} -Q -K -M {FEATURES} $complain \"$file\"\n",
            dir.display(),
            real.display()
        ),
    );
    p
}

fn policy_yaml(name: &str, rule: &str, category: Category, extra: &str) -> String {
    let list = match category {
        Category::Hardening => format!("      hardeningRules: [{rule}]\n"),
        Category::AttackProtection => {
            format!("      attackProtectionRules:\n      - rules: [{rule}]\n")
        }
        Category::VulMitigation => format!("      vulMitigationRules: [{rule}]\n"),
    };
    format!(
        "apiVersion: crd.varmor.org/v1beta1\nkind: VarmorPolicy\nmetadata:\n  name: {name}\n  \
         namespace: demo\nspec:\n  target:\n    kind: Deployment\n    name: x\n  policy:\n    \
         enforcer: AppArmor\n    mode: EnhanceProtect\n    enhanceProtect:\n{extra}{list}"
    )
}

/// Skips with the reason; with `VARMOR_REQUIRE_KERNEL_TESTS=1` a skip is a failure.
fn skip(reason: &str) {
    assert!(
        std::env::var("VARMOR_REQUIRE_KERNEL_TESTS").as_deref() != Ok("1"),
        "cannot run (VARMOR_REQUIRE_KERNEL_TESTS=1): {reason}"
    );
    eprintln!("skipped: {reason}");
}

#[tokio::test]
async fn the_real_parser_accepts_every_profile_written_for_the_builtin_rules() {
    let Some(real) = ["/usr/sbin/apparmor_parser", "/sbin/apparmor_parser"]
        .into_iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
    else {
        return skip("apparmor_parser is not installed (apt-get install apparmor)");
    };
    if !Path::new(FEATURES).exists() {
        return skip(&format!("{FEATURES} is missing (apt-get install apparmor)"));
    }
    let f = Fake::new();
    let parser = checking_parser(&f.bin(), &real);
    let e = AppArmorEnforcer::for_host(
        &HostFs::new(f.root()),
        AppArmorOptions {
            parser: Some(parser),
            ..AppArmorOptions::default()
        },
    );
    // One profile per rule through the enforcer; the policy crate's own tests check every
    // switch combination with the parser, this checks what the enforcer stores and loads.
    let variants = [("      auditViolations: true\n", "audit-deny")];
    let mut checked = 0;
    for rule in catalog::all().iter().filter(|r| r.supports_apparmor()) {
        for (extra, variant) in variants {
            let yaml = policy_yaml(&format!("r{checked}"), rule.name, rule.category, extra);
            let bundle = RevisedBundle {
                bundle: compile(&yaml),
                revision: 1,
            };
            let o = e.apply(&bundle).await;
            assert_eq!(
                o.status,
                ResultStatus::Applied,
                "{} ({variant}): {}",
                rule.name,
                o.message
            );
            let written = std::fs::read_to_string(e.file_of(&bundle.bundle.profile_name)).unwrap();
            assert_eq!(
                written,
                bundle.bundle.apparmor.as_ref().unwrap().text,
                "{}",
                rule.name
            );
            assert_eq!(
                std::fs::read_to_string(f.bin().join("last")).unwrap(),
                written,
                "the parser checked what was stored"
            );
            checked += 1;
        }
    }
    // Targets (child profiles) and complain-mode profiles go through the same path.
    let targets =
        "apiVersion: crd.varmor.org/v1beta1\nkind: VarmorPolicy\nmetadata:\n  name: t\n  \
         namespace: demo\nspec:\n  target:\n    kind: Deployment\n    name: x\n  policy:\n    \
         enforcer: AppArmor\n    mode: EnhanceProtect\n    enhanceProtect:\n      \
         attackProtectionRules:\n      - rules: [disable-write-etc, disable-network]\n        \
         targets: [/bin/sh, /usr/bin/busybox]\n";
    let modeling =
        "apiVersion: crd.varmor.org/v1beta1\nkind: VarmorPolicy\nmetadata:\n  name: m\n  \
         namespace: demo\nspec:\n  target:\n    kind: Deployment\n    name: x\n  policy:\n    \
         enforcer: AppArmor\n    mode: BehaviorModeling\n    modelingOptions:\n      duration: 3\n";
    for yaml in [targets, modeling] {
        let bundle = RevisedBundle {
            bundle: compile(yaml),
            revision: 1,
        };
        let o = e.apply(&bundle).await;
        assert_eq!(o.status, ResultStatus::Applied, "{yaml}: {}", o.message);
    }
    let calls = f.calls();
    assert!(calls.is_empty(), "the fake parser was not used: {calls:?}");
    assert!(checked > 60, "{checked} profiles checked");
    println!(
        "{checked} built-in rule profiles accepted by {}",
        real.display()
    );

    // The check is real: a broken profile is refused with the parser's message.
    let mut broken = RevisedBundle {
        bundle: compile(targets),
        revision: 2,
    };
    let aa = broken.bundle.apparmor.as_mut().unwrap();
    aa.text = aa.text.replace("deny /etc/** wl,", "deny /etc/** wz,");
    let o = e.apply(&broken).await;
    assert_eq!(o.status, ResultStatus::Failed, "{o:?}");
    assert!(o.message.contains("was left as it was"), "{o:?}");
}
