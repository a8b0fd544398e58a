//! Applying what the manager sends: bundles, removals and snapshots, through the enforcers,
//! into the held profiles; every step yields the `Ack` for the manager.
//!
//! Rules:
//! * a bundle identical to the held one is not applied again; its stored results are acked
//!   again (so a manager that lost its state learns them);
//! * a bundle that cannot be converted keeps the held revision and is acked `FAILED` for each
//!   of its enforcers, naming the field;
//! * an enforcer a changed bundle no longer uses is unloaded and reported `REMOVED`;
//! * a snapshot applies its bundles and removes the held profiles it does not list.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::SystemTime;

use varmor_policy::proto::RevisedBundle;
use varmor_proto::v1;

use crate::enforcer::{EnforcerKind, Enforcers, Outcome, ResultStatus};
use crate::profiles::{check_profile_name, HeldProfiles};

/// Applies bundles through the enforcers and keeps the held profiles.
#[derive(Debug)]
pub struct Applier {
    node: String,
    profiles: Arc<HeldProfiles>,
    enforcers: Enforcers,
    metrics: Option<crate::metrics::AgentMetrics>,
}

impl Applier {
    /// An applier for node `node`.
    pub fn new(node: impl Into<String>, profiles: Arc<HeldProfiles>, enforcers: Enforcers) -> Self {
        Applier {
            node: node.into(),
            profiles,
            enforcers,
            metrics: None,
        }
    }

    /// Counts every enforcer result in `metrics` (`varmor_agent_profile_loads_total`).
    pub fn with_metrics(mut self, metrics: crate::metrics::AgentMetrics) -> Self {
        self.metrics = Some(metrics);
        self
    }

    /// The held profiles.
    pub fn profiles(&self) -> &Arc<HeldProfiles> {
        &self.profiles
    }

    /// The enforcers.
    pub fn enforcers(&self) -> &Enforcers {
        &self.enforcers
    }

    /// Applies a new or changed bundle.
    pub async fn apply(&self, bundle: v1::ProfileBundle) -> v1::Ack {
        let profile = bundle.profile_name.clone();
        let revision = bundle.revision;
        let wanted: Vec<EnforcerKind> = EnforcerKind::ALL
            .into_iter()
            .filter(|k| k.is_in_proto(bundle.enforcers.as_ref()))
            .collect();
        let reject = |message: String| {
            tracing::warn!(node = %self.node, profile, revision, reason = %message, "bundle rejected");
            ack(
                &profile,
                revision,
                wanted
                    .iter()
                    .map(|k| Outcome::failed(message.clone()).to_proto(*k))
                    .collect(),
            )
        };
        if let Err(e) = check_profile_name(&profile) {
            return reject(e);
        }
        let held = self.profiles.get(&profile);
        if let Some(h) = &held {
            if h.bundle.as_ref() == Some(&bundle) {
                tracing::debug!(node = %self.node, profile, revision, "bundle unchanged");
                return ack(&profile, revision, h.results.clone());
            }
        }
        let revised = match RevisedBundle::try_from(bundle.clone()) {
            Ok(r) => r,
            Err(e) => {
                let kept = held.as_ref().and_then(|h| h.bundle.as_ref()).map_or_else(
                    || "nothing was held".to_string(),
                    |b| format!("revision {} stays in force", b.revision),
                );
                return reject(format!("the bundle cannot be used: {e}; {kept}"));
            }
        };
        let previously: BTreeSet<EnforcerKind> = held
            .as_ref()
            .and_then(|h| h.bundle.as_ref())
            .map(|b| {
                EnforcerKind::ALL
                    .into_iter()
                    .filter(|k| k.is_in_proto(b.enforcers.as_ref()))
                    .collect()
            })
            .unwrap_or_default();
        let mut results = Vec::new();
        for kind in EnforcerKind::ALL {
            let outcome = if wanted.contains(&kind) {
                match self.enforcers.get(kind) {
                    Some(e) => e.apply(&revised).await,
                    None => Outcome::unavailable(self.enforcers.capability(kind).reason),
                }
            } else if previously.contains(&kind) {
                match self.enforcers.get(kind) {
                    Some(e) => e.remove(&profile).await,
                    None => Outcome::removed(format!("this agent has no {kind} enforcer")),
                }
            } else {
                continue;
            };
            self.log(&profile, revision, kind, &outcome);
            results.push(outcome.to_proto(kind));
        }
        let held = v1::HeldBundle {
            bundle: Some(bundle),
            results: results.clone(),
            applied_at: Some(SystemTime::now().into()),
        };
        if let Err(e) = self.profiles.put(&profile, held) {
            tracing::error!(node = %self.node, profile, error = %e, "cannot persist the held bundle");
        }
        ack(&profile, revision, results)
    }

    /// Removes a profile (a `Removal` with its revision, or a profile missing from a snapshot).
    pub async fn remove(&self, profile: &str, revision: Option<u64>) -> v1::Ack {
        let Some(held) = self.profiles.get(profile) else {
            tracing::debug!(node = %self.node, profile, "removal of a profile that is not held");
            return ack(profile, revision.unwrap_or(0), Vec::new());
        };
        let held_bundle = held.bundle.unwrap_or_default();
        let revision = revision.unwrap_or(held_bundle.revision);
        let mut results = Vec::new();
        for kind in EnforcerKind::ALL {
            if !kind.is_in_proto(held_bundle.enforcers.as_ref()) {
                continue;
            }
            let outcome = match self.enforcers.get(kind) {
                Some(e) => e.remove(profile).await,
                None => Outcome::removed(format!("this agent has no {kind} enforcer")),
            };
            self.log(profile, revision, kind, &outcome);
            results.push(outcome.to_proto(kind));
        }
        if let Err(e) = self.profiles.remove(profile) {
            tracing::error!(node = %self.node, profile, error = %e, "cannot delete the held bundle");
        }
        ack(profile, revision, results)
    }

    /// Applies a snapshot: every bundle in it, and the removal of every held profile it does not
    /// list. Returns the acks in order.
    pub async fn snapshot(&self, bundles: Vec<v1::ProfileBundle>) -> Vec<v1::Ack> {
        let listed: BTreeSet<String> = bundles.iter().map(|b| b.profile_name.clone()).collect();
        let mut acks = Vec::new();
        for b in bundles {
            acks.push(self.apply(b).await);
        }
        for name in self.profiles.names() {
            if !listed.contains(&name) {
                acks.push(self.remove(&name, None).await);
            }
        }
        acks
    }

    /// Applies every held bundle again (at start): the kernel may have lost profiles (reboot),
    /// and the results show what holds now.
    pub async fn restore(&self) {
        for held in self.profiles.list() {
            let Some(bundle) = held.bundle else { continue };
            let profile = bundle.profile_name.clone();
            let revision = bundle.revision;
            let revised = match RevisedBundle::try_from(bundle.clone()) {
                Ok(r) => r,
                Err(e) => {
                    tracing::warn!(node = %self.node, profile, error = %e, "held bundle cannot be restored");
                    continue;
                }
            };
            let mut results = Vec::new();
            for kind in EnforcerKind::ALL {
                if !kind.is_in(&revised.bundle.enforcers) {
                    continue;
                }
                let outcome = match self.enforcers.get(kind) {
                    Some(e) => e.apply(&revised).await,
                    None => Outcome::unavailable(self.enforcers.capability(kind).reason),
                };
                self.log(&profile, revision, kind, &outcome);
                results.push(outcome.to_proto(kind));
            }
            let held = v1::HeldBundle {
                bundle: Some(bundle),
                results,
                applied_at: Some(SystemTime::now().into()),
            };
            if let Err(e) = self.profiles.put(&profile, held) {
                tracing::error!(node = %self.node, profile, error = %e, "cannot persist the held bundle");
            }
        }
    }

    fn log(&self, profile: &str, revision: u64, kind: EnforcerKind, outcome: &Outcome) {
        if let Some(m) = &self.metrics {
            m.profile_load(kind, outcome.status);
        }
        let node = self.node.as_str();
        let status = outcome.status.as_str();
        let message = outcome.message.as_str();
        let enforcer = kind.as_str();
        match outcome.status {
            ResultStatus::Failed => {
                tracing::warn!(
                    node,
                    profile,
                    revision,
                    enforcer,
                    status,
                    message,
                    "enforcer result"
                )
            }
            _ => tracing::info!(
                node,
                profile,
                revision,
                enforcer,
                status,
                message,
                "enforcer result"
            ),
        }
    }
}

fn ack(profile: &str, revision: u64, results: Vec<v1::EnforcerResult>) -> v1::Ack {
    v1::Ack {
        profile_name: profile.to_string(),
        revision,
        results,
    }
}
