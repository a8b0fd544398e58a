//! The policy catalog: which source declares which policy, the last good version of each
//! policy, its revision, and its bundles compiled per distinct node facts.
//!
//! Rules:
//! * one policy per source; a source whose latest version is invalid keeps its last good
//!   version in force and carries the errors;
//! * a policy declared by a second source is an error of the second source that names the
//!   first; when the first goes away, the second is evaluated again and takes over;
//! * a global counter numbers revisions; a policy gets a new revision only when its compiled
//!   content (for unknown node facts) changes, and a removal takes a revision too.
//!
//! Evaluating (parse, validate, compile) is pure and may be slow; it runs outside the state
//! lock, and [`Catalog::apply`] records the outcome.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::SystemTime;

use serde::{Deserialize, Serialize};
use varmor_policy::api::PolicyMode;
use varmor_policy::enforcer::EnforcerSet;
use varmor_policy::proto::RevisedBundle;
use varmor_policy::{
    compile_with_model, parse_documents, FieldError, FieldErrors, PolicyDocument, PolicyIdentity,
};
use varmor_proto::v1;

use crate::state::FactsKey;
use crate::status::ConditionMemo;

/// A change nodes must hear about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// A new or changed bundle.
    Update {
        /// The profile.
        profile: String,
        /// Its new revision.
        revision: u64,
    },
    /// A removed bundle.
    Removal {
        /// The profile.
        profile: String,
        /// The revision of the removal.
        revision: u64,
    },
}

/// The outcome of evaluating one source text.
#[derive(Debug)]
pub enum Evaluated {
    /// The text cannot be used.
    Invalid(Box<Invalid>),
    /// The text is a valid policy, compiled.
    Valid(Box<Compiled>),
}

/// Why a text cannot be used.
#[derive(Debug)]
pub struct Invalid {
    /// The policy it declares, when that much could be read.
    pub identity: Option<PolicyIdentity>,
    /// `spec.policy.enforcer` as written.
    pub enforcer: String,
    /// `spec.policy.mode` as written.
    pub mode: String,
    /// Every problem.
    pub errors: FieldErrors,
}

/// A valid policy, compiled.
#[derive(Debug)]
pub struct Compiled {
    /// The policy.
    pub identity: PolicyIdentity,
    /// The parsed document.
    pub doc: Arc<PolicyDocument>,
    /// The source text.
    pub text: String,
    /// SHA-256 of the bundle compiled for unknown facts.
    pub hash: String,
    /// The bundle for unknown facts.
    pub default: varmor_policy::ProfileBundle,
    /// Bundles for specific node facts.
    pub per_facts: Vec<(FactsKey, varmor_policy::ProfileBundle)>,
}

/// Reads, validates and compiles one source text: for unknown facts, and for each of
/// `facts`.
pub fn evaluate(text: &str, varmor_namespace: &str, facts: &[FactsKey]) -> Evaluated {
    let invalid = |identity, enforcer: String, mode: String, errors| {
        Evaluated::Invalid(Box::new(Invalid {
            identity,
            enforcer,
            mode,
            errors,
        }))
    };
    let mut docs = parse_documents(text);
    if docs.len() != 1 {
        let mut errors = FieldErrors::new();
        if docs.is_empty() {
            errors.push(
                "document",
                "the file holds no policy; put one VarmorPolicy or VarmorClusterPolicy in it",
            );
        } else {
            errors.push(
                "document",
                format!(
                    "the file holds {} documents; put exactly one policy in each file",
                    docs.len()
                ),
            );
        }
        return invalid(None, String::new(), String::new(), errors);
    }
    let doc = match docs.remove(0) {
        Ok(d) => d,
        Err(errors) => return invalid(None, String::new(), String::new(), errors),
    };
    let identity = doc.identity(varmor_namespace);
    let spec = doc.spec();
    let enforcer = spec.policy.enforcer.clone();
    let mode = spec.policy.mode.as_str().to_string();
    let errors = varmor_policy::validate::validate_document(&doc);
    if !errors.is_empty() {
        return invalid(Some(identity), enforcer, mode, errors);
    }
    let default =
        match compile_with_model(&spec, &identity, &varmor_policy::NodeFacts::default(), None) {
            Ok(b) => b,
            Err(errors) => return invalid(Some(identity), enforcer, mode, errors),
        };
    let hash = match serde_json::to_vec(&default) {
        Ok(bytes) => sha256_hex(&bytes),
        Err(e) => {
            let mut errors = FieldErrors::new();
            errors.push(
                "spec",
                format!("the compiled bundle cannot be encoded: {e}"),
            );
            return invalid(Some(identity), enforcer, mode, errors);
        }
    };
    let mut per_facts = Vec::new();
    for key in facts.iter().filter(|k| **k != FactsKey::UNKNOWN) {
        match compile_with_model(&spec, &identity, &key.to_facts(), None) {
            Ok(b) => per_facts.push((key.clone(), b)),
            Err(e) => tracing::error!(
                profile = %identity.profile_name(),
                facts = ?key,
                error = %e,
                "cannot compile for these node facts; such nodes get the bundle for unknown facts"
            ),
        }
    }
    Evaluated::Valid(Box::new(Compiled {
        identity,
        doc: Arc::new(doc),
        text: text.to_string(),
        hash,
        default,
        per_facts,
    }))
}

fn sha256_hex(bytes: &[u8]) -> String {
    ring::digest::digest(&ring::digest::SHA256, bytes)
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A policy in force.
#[derive(Debug, Clone)]
pub struct Policy {
    /// The policy.
    pub identity: PolicyIdentity,
    /// Its profile name (the catalog key).
    pub profile: String,
    /// The source that declares it.
    pub source: String,
    /// The last good document.
    pub doc: Arc<PolicyDocument>,
    /// The last good text.
    pub text: String,
    /// The revision nodes receive.
    pub revision: u64,
    /// The content hash of the current revision.
    pub hash: String,
    /// The enforcers.
    pub enforcers: EnforcerSet,
    /// `spec.policy.enforcer` as written.
    pub enforcer_text: String,
    /// The mode.
    pub mode: PolicyMode,
    /// `modelingOptions.duration` while the mode is BehaviorModeling.
    pub modeling_minutes: Option<u64>,
    /// Compiler warnings.
    pub warnings: Vec<String>,
    /// When the manager first loaded it.
    pub first_seen: SystemTime,
    /// When its revision last changed.
    pub updated_at: SystemTime,
    /// Bundles per node facts.
    pub bundles: HashMap<FactsKey, Arc<v1::ProfileBundle>>,
    /// The Ready condition as last computed (for its transition time).
    pub ready: Option<ConditionMemo>,
}

/// What the catalog knows about one source.
#[derive(Debug, Clone, Default)]
pub struct SourceState {
    /// The latest text (kept to evaluate a duplicate again when the first declaration goes).
    pub text: Option<String>,
    /// The policy this source provides.
    pub policy: Option<String>,
    /// The problems of the latest version; empty when it is in force.
    pub errors: Vec<FieldError>,
    /// Since when the source has had errors.
    pub errors_at: Option<SystemTime>,
    /// The policy the latest version declares, when readable.
    pub identity: Option<PolicyIdentity>,
    /// `spec.policy.enforcer` and `mode` of the latest version, as written.
    pub enforcer: String,
    /// See `enforcer`.
    pub mode: String,
    /// The profile another source already declares.
    pub duplicate_of: Option<String>,
}

/// Every policy and source.
#[derive(Debug, Clone)]
pub struct Catalog {
    varmor_namespace: String,
    counter: u64,
    policies: BTreeMap<String, Policy>,
    sources: BTreeMap<String, SourceState>,
}

/// A bundle to compile for facts not seen before.
#[derive(Debug, Clone)]
pub struct CompileJob {
    /// The profile.
    pub profile: String,
    /// The revision it will carry.
    pub revision: u64,
    /// The document.
    pub doc: Arc<PolicyDocument>,
    /// The identity.
    pub identity: PolicyIdentity,
}

impl CompileJob {
    /// Compiles the bundle for `key`.
    pub fn compile(&self, key: &FactsKey) -> Result<v1::ProfileBundle, FieldErrors> {
        let bundle = compile_with_model(&self.doc.spec(), &self.identity, &key.to_facts(), None)?;
        Ok(to_proto(bundle, self.revision))
    }
}

fn to_proto(bundle: varmor_policy::ProfileBundle, revision: u64) -> v1::ProfileBundle {
    v1::ProfileBundle::from(&RevisedBundle { bundle, revision })
}

impl Catalog {
    /// An empty catalog; `varmor_namespace` names cluster profiles.
    pub fn new(varmor_namespace: &str) -> Self {
        Catalog {
            varmor_namespace: varmor_namespace.to_string(),
            counter: 0,
            policies: BTreeMap::new(),
            sources: BTreeMap::new(),
        }
    }

    /// The namespace vArmor runs in.
    pub fn varmor_namespace(&self) -> &str {
        &self.varmor_namespace
    }

    /// The highest revision handed out.
    pub fn counter(&self) -> u64 {
        self.counter
    }

    /// Every policy in force, by profile name.
    pub fn policies(&self) -> impl Iterator<Item = &Policy> {
        self.policies.values()
    }

    /// One policy.
    pub fn policy(&self, profile: &str) -> Option<&Policy> {
        self.policies.get(profile)
    }

    /// One policy, to update its memo.
    pub fn policy_mut(&mut self, profile: &str) -> Option<&mut Policy> {
        self.policies.get_mut(profile)
    }

    /// Every source.
    pub fn sources(&self) -> impl Iterator<Item = (&String, &SourceState)> {
        self.sources.iter()
    }

    /// One source.
    pub fn source(&self, name: &str) -> Option<&SourceState> {
        self.sources.get(name)
    }

    fn next_revision(&mut self) -> u64 {
        self.counter += 1;
        self.counter
    }

    /// Records the outcome of evaluating the latest text of `source`.
    pub fn apply(&mut self, source: &str, ev: Evaluated, now: SystemTime) -> Vec<Change> {
        match ev {
            Evaluated::Invalid(inv) => {
                let src = self.sources.entry(source.to_string()).or_default();
                if src.errors.is_empty() {
                    src.errors_at = Some(now);
                }
                src.errors = inv.errors.0;
                src.identity = inv.identity;
                src.enforcer = inv.enforcer;
                src.mode = inv.mode;
                src.duplicate_of = None;
                match &src.policy {
                    Some(p) => tracing::warn!(
                        source,
                        profile = %p,
                        errors = %render(&src.errors),
                        "invalid policy file; the previous version stays in force"
                    ),
                    None => tracing::warn!(
                        source,
                        errors = %render(&src.errors),
                        "invalid policy file; nothing is loaded from it"
                    ),
                }
                Vec::new()
            }
            Evaluated::Valid(c) => self.apply_valid(source, *c, now),
        }
    }

    fn apply_valid(&mut self, source: &str, c: Compiled, now: SystemTime) -> Vec<Change> {
        let profile = c.identity.profile_name();
        let spec = c.doc.spec();
        if let Some(owner) = self
            .policies
            .get(&profile)
            .filter(|p| p.source != source)
            .map(|p| p.source.clone())
        {
            let what = match c.identity.kind {
                varmor_policy::identity::PolicyKind::VarmorPolicy => {
                    format!("VarmorPolicy {}/{}", c.identity.namespace, c.identity.name)
                }
                varmor_policy::identity::PolicyKind::VarmorClusterPolicy => {
                    format!("VarmorClusterPolicy {}", c.identity.name)
                }
            };
            let src = self.sources.entry(source.to_string()).or_default();
            src.text = Some(c.text);
            if src.errors.is_empty() {
                src.errors_at = Some(now);
            }
            src.errors = vec![FieldError::new(
                "metadata.name",
                format!(
                    "{what} (profile {profile}) is already declared in {owner}; this file is ignored while that one declares it"
                ),
            )];
            src.identity = Some(c.identity);
            src.enforcer = spec.policy.enforcer.clone();
            src.mode = spec.policy.mode.as_str().to_string();
            src.duplicate_of = Some(profile.clone());
            tracing::warn!(source, profile = %profile, first = %owner, "policy declared twice; the later file is ignored");
            return Vec::new();
        }
        let mut changes = Vec::new();
        let previous = self.sources.get(source).and_then(|s| s.policy.clone());
        if let Some(old) = previous.filter(|old| *old != profile) {
            if let Some(ch) = self.remove_policy(&old) {
                tracing::info!(source, profile = %old, "policy renamed; the old profile is removed");
                changes.push(ch);
            }
        }
        let modeling_minutes = match (spec.policy.mode, &spec.policy.modeling_options) {
            (PolicyMode::BehaviorModeling, Some(m)) => u64::try_from(m.duration).ok(),
            _ => None,
        };
        let enforcers = c.default.enforcers;
        let warnings = c.default.warnings.clone();
        match self.policies.get(&profile).map(|p| p.hash == c.hash) {
            Some(true) => {
                let p = self.policies.get_mut(&profile).expect("present");
                p.doc = c.doc;
                p.text = c.text.clone();
                p.warnings = warnings;
                p.modeling_minutes = modeling_minutes;
                for (key, b) in c.per_facts {
                    p.bundles
                        .entry(key)
                        .or_insert_with(|| Arc::new(to_proto(b, p.revision)));
                }
                tracing::debug!(source, profile = %profile, revision = p.revision, "policy unchanged");
            }
            existing => {
                let revision = self.next_revision();
                let mut bundles = HashMap::new();
                bundles.insert(FactsKey::UNKNOWN, Arc::new(to_proto(c.default, revision)));
                for (key, b) in c.per_facts {
                    bundles.insert(key, Arc::new(to_proto(b, revision)));
                }
                let (first_seen, ready) = match self.policies.get(&profile) {
                    Some(p) => (p.first_seen, p.ready.clone()),
                    None => (now, None),
                };
                tracing::info!(
                    source,
                    profile = %profile,
                    policy = %c.identity.name,
                    revision,
                    "{}",
                    if existing.is_some() { "policy changed" } else { "policy loaded" }
                );
                self.policies.insert(
                    profile.clone(),
                    Policy {
                        identity: c.identity.clone(),
                        profile: profile.clone(),
                        source: source.to_string(),
                        doc: c.doc,
                        text: c.text.clone(),
                        revision,
                        hash: c.hash,
                        enforcers,
                        enforcer_text: spec.policy.enforcer.clone(),
                        mode: spec.policy.mode,
                        modeling_minutes,
                        warnings,
                        first_seen,
                        updated_at: now,
                        bundles,
                        ready,
                    },
                );
                changes.push(Change::Update {
                    profile: profile.clone(),
                    revision,
                });
            }
        }
        let src = self.sources.entry(source.to_string()).or_default();
        *src = SourceState {
            text: Some(c.text),
            policy: Some(profile),
            errors: Vec::new(),
            errors_at: None,
            identity: Some(c.identity),
            enforcer: spec.policy.enforcer.clone(),
            mode: spec.policy.mode.as_str().to_string(),
            duplicate_of: None,
        };
        changes
    }

    /// Records that a source cannot be read at all (I/O error, too large); like an invalid
    /// version, the last good version stays in force.
    pub fn unreadable(&mut self, source: &str, reason: &str, now: SystemTime) {
        let src = self.sources.entry(source.to_string()).or_default();
        if src.errors.is_empty() {
            src.errors_at = Some(now);
        }
        src.errors = vec![FieldError::new("document", reason)];
        src.duplicate_of = None;
        tracing::warn!(
            source,
            reason,
            "cannot read policy file; the previous version stays in force"
        );
    }

    fn remove_policy(&mut self, profile: &str) -> Option<Change> {
        self.policies.remove(profile)?;
        let revision = self.next_revision();
        Some(Change::Removal {
            profile: profile.to_string(),
            revision,
        })
    }

    /// Forgets a source; its policy is removed. Returns the changes and the sources (with
    /// their texts) that were duplicates of the removed policy, to evaluate again.
    pub fn delete(&mut self, source: &str) -> (Vec<Change>, Vec<(String, String)>) {
        let Some(src) = self.sources.remove(source) else {
            return (Vec::new(), Vec::new());
        };
        let mut changes = Vec::new();
        let mut retry = Vec::new();
        if let Some(profile) = src.policy {
            if let Some(ch) = self.remove_policy(&profile) {
                tracing::info!(source, profile = %profile, "policy file removed; the policy is removed");
                changes.push(ch);
            }
            retry = self
                .sources
                .iter()
                .filter(|(_, s)| s.duplicate_of.as_deref() == Some(profile.as_str()))
                .filter_map(|(name, s)| Some((name.clone(), s.text.clone()?)))
                .collect();
        } else {
            tracing::info!(source, "invalid policy file removed");
        }
        (changes, retry)
    }

    /// Sources the catalog knows that are not in `present` (used after the initial listing,
    /// for policies restored from the state directory whose file is gone).
    pub fn sources_missing_from(&self, present: &BTreeSet<String>) -> Vec<String> {
        self.sources
            .keys()
            .filter(|s| !present.contains(*s))
            .cloned()
            .collect()
    }

    /// Policies whose bundle for `key` is not compiled yet.
    pub fn missing_bundles(&self, key: &FactsKey) -> Vec<CompileJob> {
        self.policies
            .values()
            .filter(|p| !p.bundles.contains_key(key))
            .map(|p| CompileJob {
                profile: p.profile.clone(),
                revision: p.revision,
                doc: p.doc.clone(),
                identity: p.identity.clone(),
            })
            .collect()
    }

    /// Stores a bundle compiled by a [`CompileJob`], unless the policy moved on meanwhile.
    pub fn insert_bundle(&mut self, job: &CompileJob, key: FactsKey, bundle: v1::ProfileBundle) {
        if let Some(p) = self.policies.get_mut(&job.profile) {
            if p.revision == job.revision {
                p.bundles.entry(key).or_insert_with(|| Arc::new(bundle));
            }
        }
    }

    /// The bundle of `profile` for `key`, falling back to the one for unknown facts.
    pub fn bundle(&self, profile: &str, key: &FactsKey) -> Option<Arc<v1::ProfileBundle>> {
        let p = self.policies.get(profile)?;
        p.bundles
            .get(key)
            .or_else(|| p.bundles.get(&FactsKey::UNKNOWN))
            .cloned()
    }

    /// Drops bundles compiled for facts no node has any more.
    pub fn prune_facts(&mut self, keep: &BTreeSet<FactsKey>) {
        for p in self.policies.values_mut() {
            p.bundles
                .retain(|k, _| *k == FactsKey::UNKNOWN || keep.contains(k));
        }
    }

    /// Restores policies saved by an earlier run: each is evaluated again from its last good
    /// text; the revision is kept when the content is unchanged.
    pub fn restore(&mut self, file: PoliciesFile, facts: &[FactsKey]) {
        self.counter = self.counter.max(file.revision);
        for (profile, stored) in file.policies {
            self.counter = self.counter.max(stored.revision);
            let c = match evaluate(&stored.text, &self.varmor_namespace, facts) {
                Evaluated::Valid(c) => *c,
                Evaluated::Invalid(inv) => {
                    tracing::error!(
                        profile = %profile,
                        source = %stored.source,
                        errors = %render(&inv.errors.0),
                        "the saved version of this policy is no longer valid; it is dropped"
                    );
                    continue;
                }
            };
            if c.identity.profile_name() != profile {
                tracing::error!(profile = %profile, "saved policy names another profile; dropped");
                continue;
            }
            let same = c.hash == stored.hash;
            let revision = if same {
                stored.revision
            } else {
                self.next_revision()
            };
            let spec = c.doc.spec();
            let mut bundles = HashMap::new();
            bundles.insert(
                FactsKey::UNKNOWN,
                Arc::new(to_proto(c.default.clone(), revision)),
            );
            for (key, b) in c.per_facts {
                bundles.insert(key, Arc::new(to_proto(b, revision)));
            }
            let modeling_minutes = match (spec.policy.mode, &spec.policy.modeling_options) {
                (PolicyMode::BehaviorModeling, Some(m)) => u64::try_from(m.duration).ok(),
                _ => None,
            };
            tracing::info!(profile = %profile, revision, source = %stored.source, "policy restored from the state directory");
            self.sources.insert(
                stored.source.clone(),
                SourceState {
                    text: Some(c.text.clone()),
                    policy: Some(profile.clone()),
                    errors: Vec::new(),
                    errors_at: None,
                    identity: Some(c.identity.clone()),
                    enforcer: spec.policy.enforcer.clone(),
                    mode: spec.policy.mode.as_str().to_string(),
                    duplicate_of: None,
                },
            );
            self.policies.insert(
                profile.clone(),
                Policy {
                    identity: c.identity,
                    profile,
                    source: stored.source,
                    doc: c.doc,
                    text: c.text,
                    revision,
                    hash: c.hash,
                    enforcers: c.default.enforcers,
                    enforcer_text: spec.policy.enforcer.clone(),
                    mode: spec.policy.mode,
                    modeling_minutes,
                    warnings: c.default.warnings,
                    first_seen: stored.first_seen,
                    updated_at: if same {
                        stored.updated_at
                    } else {
                        SystemTime::now()
                    },
                    bundles,
                    ready: stored.ready,
                },
            );
        }
    }
}

/// Errors on one line, for logs.
pub fn render(errors: &[FieldError]) -> String {
    errors
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

/// `policies.json`.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct PoliciesFile {
    /// The highest revision handed out.
    pub revision: u64,
    /// Per profile.
    pub policies: BTreeMap<String, StoredPolicy>,
}

/// One policy in `policies.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StoredPolicy {
    /// The source that declares it.
    pub source: String,
    /// Its revision.
    pub revision: u64,
    /// The content hash of that revision.
    pub hash: String,
    /// When it was first loaded (modeling starts then).
    pub first_seen: SystemTime,
    /// When its revision last changed.
    pub updated_at: SystemTime,
    /// The last good text, so an invalid file at the next start does not lose it.
    pub text: String,
    /// The Ready condition as last computed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ready: Option<ConditionMemo>,
}

impl From<&Catalog> for PoliciesFile {
    fn from(c: &Catalog) -> Self {
        PoliciesFile {
            revision: c.counter,
            policies: c
                .policies
                .values()
                .map(|p| {
                    (
                        p.profile.clone(),
                        StoredPolicy {
                            source: p.source.clone(),
                            revision: p.revision,
                            hash: p.hash.clone(),
                            first_seen: p.first_seen,
                            updated_at: p.updated_at,
                            text: p.text.clone(),
                            ready: p.ready.clone(),
                        },
                    )
                })
                .collect(),
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A VarmorPolicy `demo/<name>` on AppArmor: RuntimeDefault without rules, else
    /// EnhanceProtect with these hardening rules.
    pub(crate) fn policy_text(name: &str, rules: &[&str]) -> String {
        let policy = if rules.is_empty() {
            "    mode: RuntimeDefault\n".to_string()
        } else {
            format!(
                "    mode: EnhanceProtect\n    enhanceProtect:\n      hardeningRules:\n{}",
                rules
                    .iter()
                    .map(|r| format!("      - {r}\n"))
                    .collect::<String>()
            )
        };
        format!(
            "apiVersion: crd.varmor.org/v1beta1\nkind: VarmorPolicy\nmetadata:\n  name: {name}\n  namespace: demo\nspec:\n  target:\n    kind: Deployment\n    name: {name}\n  policy:\n    enforcer: AppArmor\n{policy}"
        )
    }

    fn apply(c: &mut Catalog, source: &str, text: &str) -> Vec<Change> {
        let ev = evaluate(text, "varmor", &[]);
        c.apply(source, ev, SystemTime::now())
    }

    #[test]
    fn revisions_change_only_with_content() {
        let mut c = Catalog::new("varmor");
        let t1 = policy_text("web", &["disable-cap-net-raw"]);
        assert_eq!(
            apply(&mut c, "a.yaml", &t1),
            [Change::Update {
                profile: "varmor-demo-web".into(),
                revision: 1
            }]
        );
        // A comment changes the text, not the bundle.
        assert!(apply(&mut c, "a.yaml", &format!("# note\n{t1}")).is_empty());
        assert_eq!(c.policy("varmor-demo-web").expect("p").revision, 1);
        let t2 = policy_text("web", &["disable-cap-net-raw", "disallow-access-kallsyms"]);
        assert_eq!(
            apply(&mut c, "a.yaml", &t2),
            [Change::Update {
                profile: "varmor-demo-web".into(),
                revision: 2
            }]
        );
    }

    #[test]
    fn an_invalid_version_keeps_the_good_one() {
        let mut c = Catalog::new("varmor");
        apply(
            &mut c,
            "a.yaml",
            &policy_text("web", &["disable-cap-net-raw"]),
        );
        let bad = policy_text("web", &["disable-cap-net-rwa"]);
        assert!(apply(&mut c, "a.yaml", &bad).is_empty());
        let p = c.policy("varmor-demo-web").expect("still in force");
        assert_eq!(p.revision, 1);
        let src = c.source("a.yaml").expect("source");
        assert_eq!(src.policy.as_deref(), Some("varmor-demo-web"));
        assert_eq!(
            src.errors[0].path,
            "spec.policy.enhanceProtect.hardeningRules[0]"
        );
        // Broken YAML too.
        assert!(apply(&mut c, "a.yaml", "kind: [").is_empty());
        assert!(c.policy("varmor-demo-web").is_some());
    }

    #[test]
    fn one_policy_per_file() {
        let mut c = Catalog::new("varmor");
        let two = format!("{}\n---\n{}", policy_text("a", &[]), policy_text("b", &[]));
        assert!(apply(&mut c, "two.yaml", &two).is_empty());
        let src = c.source("two.yaml").expect("source");
        assert!(
            src.errors[0].reason.contains("2 documents"),
            "{:?}",
            src.errors
        );
        assert!(apply(&mut c, "empty.yaml", "# nothing\n").is_empty());
        assert!(c.source("empty.yaml").expect("source").errors[0]
            .reason
            .contains("no policy"));
    }

    #[test]
    fn a_second_declaration_is_an_error_naming_the_first_and_takes_over_later() {
        let mut c = Catalog::new("varmor");
        let t = policy_text("web", &[]);
        apply(&mut c, "a.yaml", &t);
        assert!(apply(&mut c, "b.yaml", &t).is_empty());
        let err = &c.source("b.yaml").expect("b").errors[0];
        assert_eq!(err.path, "metadata.name");
        assert!(err.reason.contains("a.yaml"), "{}", err.reason);
        let (changes, retry) = c.delete("a.yaml");
        assert_eq!(
            changes,
            [Change::Removal {
                profile: "varmor-demo-web".into(),
                revision: 2
            }]
        );
        assert_eq!(retry.len(), 1);
        let (source, text) = &retry[0];
        let ch = apply(&mut c, source, text);
        assert_eq!(
            ch,
            [Change::Update {
                profile: "varmor-demo-web".into(),
                revision: 3
            }]
        );
        assert_eq!(c.policy("varmor-demo-web").expect("p").source, "b.yaml");
    }

    #[test]
    fn renaming_a_policy_removes_the_old_profile() {
        let mut c = Catalog::new("varmor");
        apply(&mut c, "a.yaml", &policy_text("one", &[]));
        let ch = apply(&mut c, "a.yaml", &policy_text("two", &[]));
        assert_eq!(
            ch,
            [
                Change::Removal {
                    profile: "varmor-demo-one".into(),
                    revision: 2
                },
                Change::Update {
                    profile: "varmor-demo-two".into(),
                    revision: 3
                }
            ]
        );
    }

    #[test]
    fn restore_keeps_revisions_of_unchanged_content() {
        let mut c = Catalog::new("varmor");
        apply(&mut c, "a.yaml", &policy_text("web", &[]));
        apply(
            &mut c,
            "a.yaml",
            &policy_text("web", &["disable-cap-net-raw"]),
        );
        let file: PoliciesFile =
            serde_json::from_slice(&serde_json::to_vec(&PoliciesFile::from(&c)).expect("json"))
                .expect("parse");
        let mut back = Catalog::new("varmor");
        back.restore(file, &[]);
        assert_eq!(back.counter(), 2);
        let p = back.policy("varmor-demo-web").expect("restored");
        assert_eq!(p.revision, 2);
        assert_eq!(
            p.first_seen,
            c.policy("varmor-demo-web").expect("p").first_seen
        );
        // The file is read again: same content, no change.
        assert!(apply(
            &mut back,
            "a.yaml",
            &policy_text("web", &["disable-cap-net-raw"])
        )
        .is_empty());
    }

    #[test]
    fn bundles_are_compiled_per_facts() {
        let mut c = Catalog::new("varmor");
        let text = policy_text("web", &["disable-cap-net-raw"]);
        let key = FactsKey(Some(vec!["sda".into()]));
        let ev = evaluate(&text, "varmor", std::slice::from_ref(&key));
        c.apply("a.yaml", ev, SystemTime::now());
        let b = c.bundle("varmor-demo-web", &key).expect("bundle");
        assert_eq!(b.revision, 1);
        let other = FactsKey(Some(vec!["nvme0n1".into()]));
        let jobs = c.missing_bundles(&other);
        assert_eq!(jobs.len(), 1);
        let compiled = jobs[0].compile(&other).expect("compile");
        c.insert_bundle(&jobs[0], other.clone(), compiled);
        assert!(c.missing_bundles(&other).is_empty());
        c.prune_facts(&BTreeSet::from([key.clone()]));
        assert_eq!(c.missing_bundles(&other).len(), 1);
        assert!(c.missing_bundles(&key).is_empty());
    }
}
