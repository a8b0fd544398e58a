//! `varmorctl`: work with vArmor policies offline — validate them, show what each enforcer
//! loads, and explain what a policy does to an access.
//!
//! Commands write to the given writers and return the process exit code, so tests can run
//! them in process.

mod remote;

use std::io::Write;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context as _, Result};
use clap::{Args, Parser, Subcommand, ValueEnum};
use varmor_policy::api::{ArmorProfileModel, ModelProfiles, PolicyMode, ProfileType};
use varmor_policy::bundle::{ProfileBundle, SeccompProfile};
use varmor_policy::catalog::{self, Category};
use varmor_policy::decide::{decide, Access, Decision};
use varmor_policy::document::{PolicyDocument, DEFAULT_VARMOR_NAMESPACE};
use varmor_policy::enforcer::EnforcerSet;
use varmor_policy::names;
use varmor_policy::{compile_with_model, parse_documents, validate, FieldErrors, NodeFacts};

/// Command line of `varmorctl`.
#[derive(Debug, Parser)]
#[command(
    name = "varmorctl",
    version,
    about = "Validate, compile and explain vArmor policies"
)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Work with policy files (VarmorPolicy / VarmorClusterPolicy YAML).
    #[command(subcommand)]
    Policy(PolicyCommand),
    /// List the built-in rules and the enforcers that implement each.
    Rules,
    /// The nodes a running manager knows, with their connection and kernel capabilities.
    Nodes {
        #[command(flatten)]
        conn: remote::Connection,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// The policies a running manager serves, with their status.
    Policies {
        #[command(flatten)]
        conn: remote::Connection,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Violation events from every node, one JSON object per line.
    Events {
        #[command(flatten)]
        conn: remote::Connection,
        #[command(flatten)]
        args: remote::EventArgs,
    },
    /// Print the CustomResourceDefinitions, or write one file per CRD into a directory.
    Crd {
        /// Directory to write the CRD files into (default: print to stdout).
        #[arg(long)]
        out: Option<PathBuf>,
    },
}

#[derive(Debug, Subcommand)]
enum PolicyCommand {
    /// Check policy files: schema, semantics, and that every enforcer's profile compiles.
    /// Exits 1 and lists every error with its field path when a file is invalid.
    Validate {
        /// Policy files (YAML; several documents per file are allowed).
        #[arg(required = true)]
        files: Vec<PathBuf>,
        #[command(flatten)]
        compile: CompileOptions,
    },
    /// Print what one enforcer loads for a policy: the AppArmor profile, the OCI seccomp
    /// profile, the BPF rule set, or the whole bundle.
    Compile {
        /// Policy file.
        file: PathBuf,
        /// Which output.
        #[arg(long, value_enum)]
        enforcer: Target,
        /// Output format of the seccomp, BPF and bundle outputs.
        #[arg(long, value_enum, default_value = "json")]
        output: Format,
        /// Which policy of a multi-document file (metadata.name).
        #[arg(long)]
        name: Option<String>,
        #[command(flatten)]
        compile: CompileOptions,
    },
    /// Explain what a policy's BPF rules do to one access, and which rule decides.
    Explain(Box<ExplainArgs>),
}

#[derive(Debug, Args, Clone)]
struct CompileOptions {
    /// Namespace vArmor runs in (names the profiles of cluster policies).
    #[arg(long, default_value = DEFAULT_VARMOR_NAMESPACE)]
    varmor_namespace: String,
    /// Disk devices of the node, e.g. `sda,sda1` (default: patterns covering the usual names).
    #[arg(long, value_delimiter = ',')]
    disk_devices: Option<Vec<String>>,
    /// An ArmorProfileModel (YAML or JSON, e.g. `kubectl get armorprofilemodel -o yaml`)
    /// whose profiles DefenseInDepth policies with `profileType: BehaviorModel` use.
    #[arg(long)]
    model: Option<PathBuf>,
}

impl CompileOptions {
    fn facts(&self) -> NodeFacts {
        NodeFacts {
            disk_devices: self.disk_devices.clone(),
        }
    }

    fn model(&self) -> Result<Option<ModelProfiles>> {
        let Some(path) = &self.model else {
            return Ok(None);
        };
        let text = read(path)?;
        let model: ArmorProfileModel = serde_yaml::from_str(&text)
            .with_context(|| format!("{} is not an ArmorProfileModel", path.display()))?;
        Ok(Some(model.spec.data.profile))
    }
}

/// Whether a policy takes a profile from its behaviour model.
fn uses_behavior_model(doc: &PolicyDocument) -> bool {
    let spec = doc.spec();
    spec.policy.mode == PolicyMode::DefenseInDepth
        && spec.policy.defense_in_depth.as_ref().is_some_and(|d| {
            d.app_armor
                .as_ref()
                .is_some_and(|a| a.profile_type == ProfileType::BehaviorModel)
                || d.seccomp
                    .as_ref()
                    .is_some_and(|s| s.profile_type == ProfileType::BehaviorModel)
        })
}

/// Stand-in model profiles, so that everything else of a BehaviorModel policy can be checked
/// before its model exists.
fn placeholder_model(profile_name: &str) -> ModelProfiles {
    ModelProfiles {
        app_armor: Some(format!(
            "abi <abi/3.0>,\n#include <tunables/global>\nprofile {profile_name} flags=(attach_disconnected,mediate_deleted) {{\n  #include <abstractions/base>\n}}\n"
        )),
        seccomp: Some(r#"{"defaultAction":"SCMP_ACT_ERRNO"}"#.to_string()),
    }
}

/// Outputs of `policy compile`.
#[derive(Debug, Clone, Copy, ValueEnum)]
enum Target {
    /// The AppArmor profile text.
    Apparmor,
    /// The OCI seccomp profile.
    Seccomp,
    /// The BPF rule set with its tables.
    Bpf,
    /// The whole profile bundle.
    Bundle,
}

/// Structured output formats.
#[derive(Debug, Clone, Copy, ValueEnum, PartialEq, Eq)]
enum Format {
    /// JSON.
    Json,
    /// YAML.
    Yaml,
}

#[derive(Debug, Args)]
struct ExplainArgs {
    /// Policy file.
    file: PathBuf,
    /// Which policy of a multi-document file (metadata.name).
    #[arg(long)]
    name: Option<String>,
    /// A file path to check (with --perm).
    #[arg(long, group = "access")]
    path: Option<String>,
    /// Permissions requested on --path: read, write, append, exec, create, rename, link
    /// (comma-separated).
    #[arg(long, value_delimiter = ',', default_value = "read", requires = "path")]
    perm: Vec<String>,
    /// A program to execute.
    #[arg(long, group = "access")]
    exec: Option<String>,
    /// A capability, e.g. sys_admin.
    #[arg(long, group = "access")]
    capability: Option<String>,
    /// A socket: DOMAIN[,TYPE[,PROTOCOL]], e.g. inet,stream,tcp or inet6,raw,icmp.
    #[arg(long, group = "access")]
    socket: Option<String>,
    /// A connect(2) destination IP:PORT (IPv6 as [ADDR]:PORT).
    #[arg(long, group = "access")]
    connect: Option<String>,
    /// The pod's own addresses, for pod-self rules (comma-separated).
    #[arg(long, value_delimiter = ',', requires = "connect")]
    pod_ip: Vec<IpAddr>,
    /// A ptrace permission: trace, read (this container acts) or traceby, readby (it is the
    /// target).
    #[arg(long, group = "access")]
    ptrace: Option<String>,
    /// With --ptrace: the peer is in the same container.
    #[arg(long, requires = "ptrace")]
    same_container: bool,
    /// With --ptrace: the peer is a host process.
    #[arg(long, requires = "ptrace")]
    peer_is_host: bool,
    /// A mount(2) source (with --fstype and --flags).
    #[arg(long, group = "access")]
    mount: Option<String>,
    /// Filesystem type of --mount.
    #[arg(long, default_value = "", requires = "mount")]
    fstype: String,
    /// Mount flags of --mount (names as in mount rules, comma-separated).
    #[arg(long, value_delimiter = ',', requires = "mount")]
    flags: Vec<String>,
    /// A mount point to umount.
    #[arg(long, group = "access")]
    umount: Option<String>,
    /// Output format (text by default).
    #[arg(long, value_enum)]
    output: Option<Format>,
    #[command(flatten)]
    compile: CompileOptions,
}

/// Runs a command line; returns the exit code. Errors are printed to `err`.
pub fn run(cli: Cli, out: &mut dyn Write, err: &mut dyn Write) -> i32 {
    let result = match cli.command {
        Command::Policy(PolicyCommand::Validate { files, compile }) => {
            validate_files(&files, &compile, out, err)
        }
        Command::Policy(PolicyCommand::Compile {
            file,
            enforcer,
            output,
            name,
            compile,
        }) => compile_file(&file, enforcer, output, name.as_deref(), &compile, out),
        Command::Policy(PolicyCommand::Explain(args)) => explain(&args, out),
        Command::Rules => list_rules(out),
        Command::Crd { out: dir } => crds(dir.as_deref(), out),
        Command::Nodes { conn, json } => remote::nodes(&conn, json, out),
        Command::Policies { conn, json } => remote::policies(&conn, json, out),
        Command::Events { conn, args } => remote::events(&conn, &args, out),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            let _ = writeln!(err, "error: {e:#}");
            1
        }
    }
}

fn read(file: &Path) -> Result<String> {
    std::fs::read_to_string(file).with_context(|| format!("cannot read {}", file.display()))
}

/// Every problem of one document: schema, semantics, and compilation for every enforcer of
/// the policy. With `placeholder`, a missing behaviour model is replaced by a stand-in (and
/// a warning) instead of being an error.
fn check_document(
    doc: &PolicyDocument,
    opts: &CompileOptions,
    model: Option<&ModelProfiles>,
    placeholder: bool,
) -> Result<(ProfileBundle, Vec<String>), FieldErrors> {
    let errors = validate::validate_document(doc);
    if !errors.is_empty() {
        return Err(errors);
    }
    let identity = doc.identity(&opts.varmor_namespace);
    let mut warnings = Vec::new();
    let stand_in;
    let model = match model {
        Some(m) => Some(m),
        None if placeholder && uses_behavior_model(doc) => {
            warnings.push(
                "profileType BehaviorModel: checked with a placeholder for the behaviour model's profile (give --model to check the real one)"
                    .to_string(),
            );
            stand_in = placeholder_model(&identity.profile_name());
            Some(&stand_in)
        }
        None => None,
    };
    let bundle = compile_with_model(&doc.spec(), &identity, &opts.facts(), model)?;
    warnings.extend(bundle.warnings.iter().cloned());
    Ok((bundle, warnings))
}

fn validate_files(
    files: &[PathBuf],
    opts: &CompileOptions,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> Result<i32> {
    let model = opts.model()?;
    let mut failed = false;
    for file in files {
        let text = match read(file) {
            Ok(t) => t,
            Err(e) => {
                writeln!(err, "{}: {e:#}", file.display())?;
                failed = true;
                continue;
            }
        };
        let docs = parse_documents(&text);
        if docs.is_empty() {
            writeln!(err, "{}: no policy document found", file.display())?;
            failed = true;
        }
        for doc in docs {
            let checked = doc.and_then(|d| {
                check_document(&d, opts, model.as_ref(), true).map(|(b, w)| (d, b, w))
            });
            match checked {
                Ok((doc, bundle, warnings)) => {
                    let scope = doc
                        .namespace()
                        .map(|ns| format!("{ns}/"))
                        .unwrap_or_default();
                    writeln!(
                        out,
                        "{}: {} {scope}{} is valid (profile {}, enforcer {}, mode {})",
                        file.display(),
                        doc.kind(),
                        doc.name(),
                        bundle.profile_name,
                        bundle.enforcers,
                        bundle.mode
                    )?;
                    for w in warnings {
                        writeln!(out, "{}: warning: {w}", file.display())?;
                    }
                }
                Err(errors) => {
                    failed = true;
                    for e in errors.iter() {
                        writeln!(err, "{}: {}: {}", file.display(), e.path, e.reason)?;
                    }
                }
            }
        }
    }
    Ok(if failed { 1 } else { 0 })
}

/// The one document of `file` (or the one named `name`), checked and compiled.
fn load_one(
    file: &Path,
    name: Option<&str>,
    opts: &CompileOptions,
) -> Result<(PolicyDocument, ProfileBundle)> {
    let text = read(file)?;
    let mut docs = Vec::new();
    for d in parse_documents(&text) {
        match d {
            Ok(d) => docs.push(d),
            Err(e) => bail!("{} is not a valid policy:\n{e}", file.display()),
        }
    }
    let doc = match name {
        Some(n) => docs
            .into_iter()
            .find(|d| d.name() == n)
            .ok_or_else(|| anyhow!("{} has no policy named {n:?}", file.display()))?,
        None if docs.len() == 1 => docs.remove(0),
        None if docs.is_empty() => bail!("{} holds no policy", file.display()),
        None => bail!(
            "{} holds {} policies; choose one with --name",
            file.display(),
            docs.len()
        ),
    };
    let model = opts.model()?;
    let (bundle, _) = check_document(&doc, opts, model.as_ref(), false)
        .map_err(|e| anyhow!("{} cannot be compiled:\n{e}", file.display()))?;
    Ok((doc, bundle))
}

fn structured<T: serde::Serialize>(value: &T, format: Format, out: &mut dyn Write) -> Result<()> {
    match format {
        Format::Json => writeln!(out, "{}", serde_json::to_string_pretty(value)?)?,
        Format::Yaml => write!(out, "{}", serde_yaml::to_string(value)?)?,
    }
    Ok(())
}

fn compile_file(
    file: &Path,
    target: Target,
    format: Format,
    name: Option<&str>,
    opts: &CompileOptions,
    out: &mut dyn Write,
) -> Result<i32> {
    let (doc, bundle) = load_one(file, name, opts)?;
    let missing = |e: &str| {
        anyhow!(
            "policy {:?} does not use the {e} enforcer (enforcer: {})",
            doc.name(),
            bundle.enforcers
        )
    };
    match target {
        Target::Apparmor => {
            let aa = bundle
                .apparmor
                .as_ref()
                .ok_or_else(|| missing("AppArmor"))?;
            write!(out, "{}", aa.text)?;
        }
        Target::Seccomp => match bundle.seccomp.as_ref().ok_or_else(|| missing("Seccomp"))? {
            SeccompProfile::RuntimeDefault => {
                bail!("policy {:?} uses the container runtime's default seccomp profile (mode RuntimeDefault); there is no profile file", doc.name())
            }
            SeccompProfile::Localhost { json } => {
                let value: serde_json::Value = serde_json::from_str(json)?;
                structured(&value, format, out)?;
            }
        },
        Target::Bpf => structured(
            bundle.bpf.as_ref().ok_or_else(|| missing("BPF"))?,
            format,
            out,
        )?,
        Target::Bundle => structured(&bundle, format, out)?,
    }
    Ok(0)
}

fn parse_access(a: &ExplainArgs) -> Result<Access> {
    if let Some(path) = &a.path {
        let mut permissions = 0;
        for p in &a.perm {
            permissions |= match p.to_ascii_lowercase().as_str() {
                "read" | "r" => names::perm::READ,
                "write" | "w" => names::perm::WRITE,
                "append" | "a" => names::perm::APPEND,
                "exec" | "x" => names::perm::EXEC,
                "create" => names::perm::CREATE,
                "rename" => names::perm::RENAME,
                "link" => names::perm::LINK,
                other => bail!("unknown permission {other:?}; use read, write, append, exec, create, rename or link"),
            };
        }
        return Ok(Access::File {
            path: path.clone(),
            permissions,
        });
    }
    if let Some(path) = &a.exec {
        return Ok(Access::Exec { path: path.clone() });
    }
    if let Some(cap) = &a.capability {
        let n =
            names::capability_number(cap).ok_or_else(|| anyhow!("unknown capability {cap:?}"))?;
        return Ok(Access::Capability(n));
    }
    if let Some(sock) = &a.socket {
        let mut parts = sock.split(',');
        let domain = parts.next().unwrap_or_default();
        let domain = names::socket_domain(domain)
            .ok_or_else(|| anyhow!("unknown socket domain {domain:?}"))?;
        let type_ = match parts.next() {
            Some(t) => names::socket_type(t).ok_or_else(|| anyhow!("unknown socket type {t:?}"))?,
            None => 1,
        };
        let protocol = match parts.next() {
            Some(p) => names::socket_protocol(p)
                .and_then(|v| v.first().copied())
                .ok_or_else(|| anyhow!("unknown protocol {p:?}"))?,
            None => 0,
        };
        return Ok(Access::Socket {
            domain,
            type_,
            protocol,
        });
    }
    if let Some(dest) = &a.connect {
        let addr: SocketAddr = dest
            .parse()
            .with_context(|| format!("--connect {dest:?}: expected IP:PORT or [IPv6]:PORT"))?;
        return Ok(Access::Connect {
            address: addr.ip(),
            port: addr.port(),
            pod_addresses: a.pod_ip.clone(),
        });
    }
    if let Some(p) = &a.ptrace {
        let permission = match p.as_str() {
            "trace" => names::ptrace::TRACE,
            "read" => names::ptrace::READ,
            "traceby" => names::ptrace::TRACEBY,
            "readby" => names::ptrace::READBY,
            other => {
                bail!("unknown ptrace permission {other:?}; use trace, read, traceby or readby")
            }
        };
        return Ok(Access::Ptrace {
            permission,
            external: !a.same_container,
            peer_is_host: a.peer_is_host,
        });
    }
    if let Some(source) = &a.mount {
        let mut flags = 0;
        for f in &a.flags {
            let (fwd, _) =
                names::mount_flag(f).ok_or_else(|| anyhow!("unknown mount flag {f:?}"))?;
            flags |= fwd;
        }
        return Ok(Access::Mount {
            source: source.clone(),
            fstype: a.fstype.clone(),
            flags,
        });
    }
    if let Some(path) = &a.umount {
        return Ok(Access::Umount { path: path.clone() });
    }
    bail!("say which access to explain: --path, --exec, --capability, --socket, --connect, --ptrace, --mount or --umount")
}

fn explain(a: &ExplainArgs, out: &mut dyn Write) -> Result<i32> {
    let access = parse_access(a)?;
    let (doc, bundle) = load_one(&a.file, a.name.as_deref(), &a.compile)?;
    // The verdict comes from the BPF rules; a policy without the BPF enforcer is explained by
    // compiling the same rules for BPF (the built-in rules mean the same on every enforcer
    // that implements them).
    let (bpf, note) = match bundle.bpf {
        Some(b) => (b, None),
        None => {
            let mut spec = doc.spec();
            let mut set = bundle.enforcers;
            set.bpf = true;
            if set == EnforcerSet::default() || spec.policy.mode == PolicyMode::DefenseInDepth {
                bail!(
                    "policy {:?} (mode {}) has no BPF rules to explain",
                    doc.name(),
                    spec.policy.mode
                );
            }
            spec.policy.enforcer = "BPF".to_string();
            let b = compile_with_model(
                &spec,
                &doc.identity(&a.compile.varmor_namespace),
                &a.compile.facts(),
                None,
            )
            .map_err(|e| anyhow!("{e}"))?
            .bpf
            .ok_or_else(|| anyhow!("no BPF rules"))?;
            (
                b,
                Some(format!(
                    "note: policy {:?} uses enforcer {}, not BPF; this is what its rules do under the BPF enforcer",
                    doc.name(),
                    bundle.enforcers
                )),
            )
        }
    };
    let verdict = decide(&bpf, &access);
    if a.output.is_some() {
        structured(&verdict, a.output.unwrap_or(Format::Json), out)?;
        return Ok(0);
    }
    let decision = match verdict.decision {
        Decision::Allow => "ALLOW",
        Decision::Deny => "DENY",
    };
    let event = verdict
        .event
        .map(|e| format!(" ({} event)", e.as_str()))
        .unwrap_or_default();
    writeln!(out, "{decision}{event}")?;
    match &verdict.rule {
        Some(rule) => writeln!(out, "decided by: {rule}")?,
        None if bpf.mode == varmor_policy::bundle::BpfMode::Complain => writeln!(
            out,
            "the profile is in complain mode (BehaviorModeling): nothing is blocked"
        )?,
        None => writeln!(out, "no rule matches")?,
    }
    if verdict.matched.len() > 1 {
        writeln!(out, "matching rules:")?;
        for m in &verdict.matched {
            writeln!(out, "  {m}")?;
        }
    }
    if let Some(n) = note {
        writeln!(out, "{n}")?;
    }
    Ok(0)
}

fn list_rules(out: &mut dyn Write) -> Result<i32> {
    writeln!(
        out,
        "{:<44} {:<24} {:<8} {:<4} {:<8} DESCRIPTION",
        "RULE", "LIST", "APPARMOR", "BPF", "SECCOMP"
    )?;
    let mark = |b: bool| if b { "yes" } else { "-" };
    for category in [
        Category::Hardening,
        Category::AttackProtection,
        Category::VulMitigation,
    ] {
        for r in catalog::all().iter().filter(|r| r.category == category) {
            let name = if r.aliases.is_empty() {
                r.name.to_string()
            } else {
                format!("{} ({})", r.name, r.aliases.join(", "))
            };
            writeln!(
                out,
                "{:<44} {:<24} {:<8} {:<4} {:<8} {}",
                name,
                category.field(),
                mark(r.supports_apparmor()),
                mark(r.supports_bpf()),
                mark(r.supports_seccomp()),
                r.summary
            )?;
        }
    }
    Ok(0)
}

fn crds(dir: Option<&Path>, out: &mut dyn Write) -> Result<i32> {
    let rendered = varmor_policy::crd::render()?;
    match dir {
        None => {
            for (i, c) in rendered.iter().enumerate() {
                if i > 0 {
                    writeln!(out, "---")?;
                }
                write!(out, "{}", c.yaml)?;
            }
        }
        Some(dir) => {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
            for c in rendered {
                let path = dir.join(&c.file_name);
                std::fs::write(&path, c.yaml)
                    .with_context(|| format!("cannot write {}", path.display()))?;
                writeln!(out, "wrote {}", path.display())?;
            }
        }
    }
    Ok(0)
}
