//! Reading policy documents: YAML (or JSON) text to typed `VarmorPolicy` /
//! `VarmorClusterPolicy` objects.
//!
//! Structure is checked against the generated CRD schema first, the way the Kubernetes API
//! server would, so every structural problem of a document (unknown field, wrong type, value
//! outside an enum or range, missing required field) is reported at once with its JSON path.
//! Unlike the API server, unknown fields are errors rather than silently pruned: a misspelled
//! field would otherwise drop protection without a word.

use std::sync::OnceLock;

use kube::core::CustomResourceExt;
use serde_json::{Map, Value};

use crate::api::{VarmorClusterPolicy, VarmorPolicy, VarmorPolicySpec, API_VERSION};
use crate::error::FieldErrors;
use crate::identity::{PolicyIdentity, MAX_PROFILE_NAME_LEN};
use crate::names::suggest;

/// A parsed policy of either kind.
#[derive(Clone, Debug, PartialEq)]
pub enum PolicyDocument {
    /// A `VarmorPolicy`.
    Namespaced(Box<VarmorPolicy>),
    /// A `VarmorClusterPolicy`.
    Cluster(Box<VarmorClusterPolicy>),
}

/// The namespace a `VarmorPolicy` without `metadata.namespace` belongs to.
pub const DEFAULT_NAMESPACE: &str = "default";
/// The namespace vArmor runs in unless configured otherwise (used in cluster profile names).
pub const DEFAULT_VARMOR_NAMESPACE: &str = "varmor";

impl PolicyDocument {
    /// The kind name.
    pub fn kind(&self) -> &'static str {
        match self {
            PolicyDocument::Namespaced(_) => "VarmorPolicy",
            PolicyDocument::Cluster(_) => "VarmorClusterPolicy",
        }
    }

    /// `metadata.name`.
    pub fn name(&self) -> &str {
        let meta = match self {
            PolicyDocument::Namespaced(p) => &p.metadata,
            PolicyDocument::Cluster(p) => &p.metadata,
        };
        meta.name.as_deref().unwrap_or_default()
    }

    /// `metadata.namespace` of a VarmorPolicy (default `default`); `None` for cluster policies.
    pub fn namespace(&self) -> Option<&str> {
        match self {
            PolicyDocument::Namespaced(p) => {
                Some(p.metadata.namespace.as_deref().unwrap_or(DEFAULT_NAMESPACE))
            }
            PolicyDocument::Cluster(_) => None,
        }
    }

    /// The spec (both kinds share it).
    pub fn spec(&self) -> VarmorPolicySpec {
        match self {
            PolicyDocument::Namespaced(p) => p.spec.clone(),
            PolicyDocument::Cluster(p) => p.spec.clone().into(),
        }
    }

    /// The policy identity; `varmor_namespace` names cluster profiles.
    pub fn identity(&self, varmor_namespace: &str) -> PolicyIdentity {
        match self.namespace() {
            Some(ns) => PolicyIdentity::namespaced(ns, self.name()),
            None => PolicyIdentity::cluster(varmor_namespace, self.name()),
        }
    }
}

/// Parses every document of a YAML (or JSON) stream. Empty documents are skipped; each other
/// document yields its policy or all of its errors. Paths of errors in the second and later
/// documents are prefixed with `document[N]`.
pub fn parse_documents(text: &str) -> Vec<Result<PolicyDocument, FieldErrors>> {
    let mut out = Vec::new();
    for (index, de) in serde_yaml::Deserializer::from_str(text).enumerate() {
        let value = match <Value as serde::Deserialize>::deserialize(de) {
            Ok(v) => v,
            Err(e) => {
                let mut errs = FieldErrors::new();
                errs.push(doc_path(index, ""), format!("invalid YAML: {e}"));
                out.push(Err(errs));
                // A syntax error ends the stream: the parser cannot resynchronise.
                break;
            }
        };
        let this = index;
        if value.is_null() {
            continue;
        }
        out.push(parse_value(value).map_err(|errs| {
            if this == 0 {
                errs
            } else {
                FieldErrors(
                    errs.into_iter()
                        .map(|mut e| {
                            e.path = doc_path(this, &e.path);
                            e
                        })
                        .collect(),
                )
            }
        }));
    }
    out
}

fn doc_path(index: usize, path: &str) -> String {
    match (index, path.is_empty()) {
        (0, true) => "document".to_string(),
        (0, false) => path.to_string(),
        (i, true) => format!("document[{i}]"),
        (i, false) => format!("document[{i}].{path}"),
    }
}

/// Parses one document that is already a JSON value.
pub fn parse_value(value: Value) -> Result<PolicyDocument, FieldErrors> {
    let mut errs = FieldErrors::new();
    let Some(obj) = value.as_object() else {
        errs.push(
            "document",
            format!("expected a mapping, found {}", kind_of(&value)),
        );
        return Err(errs);
    };
    match obj.get("apiVersion").and_then(Value::as_str) {
        Some(API_VERSION) => {}
        Some(other) => errs.push(
            "apiVersion",
            format!("unsupported value {other:?}; must be {API_VERSION:?}"),
        ),
        None => errs.push("apiVersion", "required field is missing"),
    }
    let kinds = ["VarmorPolicy", "VarmorClusterPolicy"];
    let kind = match obj.get("kind").and_then(Value::as_str) {
        Some(k) if kinds.contains(&k) => k,
        Some(other) => {
            let hint = suggest(other, kinds)
                .map(|s| format!("; did you mean {s:?}?"))
                .unwrap_or_default();
            errs.push(
                "kind",
                format!(
                    "unsupported kind {other:?}; must be VarmorPolicy or VarmorClusterPolicy{hint}"
                ),
            );
            return Err(errs);
        }
        None => {
            errs.push("kind", "required field is missing");
            return Err(errs);
        }
    };
    let schema = if kind == "VarmorPolicy" {
        policy_schema()
    } else {
        cluster_policy_schema()
    };
    check_root(obj, schema, &mut errs);
    check_metadata(obj, kind, &mut errs);
    if !errs.is_empty() {
        return Err(errs);
    }
    let typed = if kind == "VarmorPolicy" {
        serde_path_to_error::deserialize::<_, VarmorPolicy>(value)
            .map(|p| PolicyDocument::Namespaced(Box::new(p)))
    } else {
        serde_path_to_error::deserialize::<_, VarmorClusterPolicy>(value)
            .map(|p| PolicyDocument::Cluster(Box::new(p)))
    };
    typed.map_err(|e| {
        let mut errs = FieldErrors::new();
        errs.push(e.path().to_string(), e.inner().to_string());
        errs
    })
}

fn check_metadata(obj: &Map<String, Value>, kind: &str, errs: &mut FieldErrors) {
    let Some(meta) = obj.get("metadata") else {
        errs.push("metadata", "required field is missing");
        return;
    };
    let Some(meta) = meta.as_object() else {
        errs.push(
            "metadata",
            format!("expected a mapping, found {}", kind_of(meta)),
        );
        return;
    };
    match meta.get("name").and_then(Value::as_str) {
        None | Some("") => errs.push("metadata.name", "required field is missing"),
        Some(name) => {
            if let Err(why) = check_dns_subdomain(name) {
                errs.push("metadata.name", why);
            }
        }
    }
    if let Some(ns) = meta.get("namespace") {
        match ns.as_str() {
            Some(ns) if kind == "VarmorPolicy" => {
                if let Err(why) = check_dns_label(ns) {
                    errs.push("metadata.namespace", why);
                }
            }
            Some(_) => {}
            None => errs.push(
                "metadata.namespace",
                format!("expected a string, found {}", kind_of(ns)),
            ),
        }
    }
    // Profile name length (vArmor's limit): varmor-{ns}-{name} / varmor-cluster-{ns}-{name}.
    if let Some(name) = meta.get("name").and_then(Value::as_str) {
        let identity = if kind == "VarmorPolicy" {
            let ns = meta
                .get("namespace")
                .and_then(Value::as_str)
                .unwrap_or(DEFAULT_NAMESPACE);
            PolicyIdentity::namespaced(ns, name)
        } else {
            PolicyIdentity::cluster(DEFAULT_VARMOR_NAMESPACE, name)
        };
        let profile = identity.profile_name();
        if profile.len() > MAX_PROFILE_NAME_LEN {
            errs.push(
                "metadata.name",
                format!(
                    "the profile name {profile:?} is {} characters long; the limit is {MAX_PROFILE_NAME_LEN} (shorten the policy name or namespace)",
                    profile.len()
                ),
            );
        }
    }
}

/// Kubernetes DNS subdomain (RFC 1123): object names.
pub fn check_dns_subdomain(s: &str) -> Result<(), String> {
    if s.len() > 253 {
        return Err(format!("must be at most 253 characters, found {}", s.len()));
    }
    let ok = s.split('.').all(|label| {
        !label.is_empty()
            && label
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !label.starts_with('-')
            && !label.ends_with('-')
    });
    if ok {
        Ok(())
    } else {
        Err(format!("{s:?} is not a valid name: use lower-case letters, digits, '-' and '.', starting and ending with a letter or digit"))
    }
}

/// Kubernetes DNS label (RFC 1123): namespaces.
pub fn check_dns_label(s: &str) -> Result<(), String> {
    if s.is_empty() || s.len() > 63 || s.contains('.') || check_dns_subdomain(s).is_err() {
        return Err(format!("{s:?} is not a valid namespace: use at most 63 lower-case letters, digits and '-', starting and ending with a letter or digit"));
    }
    Ok(())
}

fn policy_schema() -> &'static Value {
    static S: OnceLock<Value> = OnceLock::new();
    S.get_or_init(|| crd_schema(&VarmorPolicy::crd()))
}

fn cluster_policy_schema() -> &'static Value {
    static S: OnceLock<Value> = OnceLock::new();
    S.get_or_init(|| crd_schema(&VarmorClusterPolicy::crd()))
}

fn crd_schema(
    crd: &k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition,
) -> Value {
    crd.spec
        .versions
        .first()
        .and_then(|v| v.schema.as_ref())
        .and_then(|s| s.open_api_v3_schema.as_ref())
        .and_then(|s| serde_json::to_value(s).ok())
        .unwrap_or(Value::Null)
}

fn check_root(obj: &Map<String, Value>, schema: &Value, errs: &mut FieldErrors) {
    let props = schema.get("properties").and_then(Value::as_object);
    for (key, value) in obj {
        if matches!(key.as_str(), "apiVersion" | "kind" | "metadata") {
            continue;
        }
        match props.and_then(|p| p.get(key)) {
            Some(sub) => check_value(value, sub, key, errs),
            None => unknown_field(key, key, props, errs),
        }
    }
    check_required(obj, schema, "", errs);
}

/// Appends a field or map key to a JSON path: `a.b` for plain keys, `a["app.k8s.io/name"]`
/// for keys that are not identifiers.
pub fn join(path: &str, key: &str) -> String {
    let plain = !key.is_empty()
        && key.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
        && !key.as_bytes()[0].is_ascii_digit();
    match (path.is_empty(), plain) {
        (true, true) => key.to_string(),
        (true, false) => format!("[{key:?}]"),
        (false, true) => format!("{path}.{key}"),
        (false, false) => format!("{path}[{key:?}]"),
    }
}

fn unknown_field(
    path: &str,
    key: &str,
    props: Option<&Map<String, Value>>,
    errs: &mut FieldErrors,
) {
    let hint = props
        .and_then(|p| suggest(key, p.keys().map(String::as_str)))
        .map(|s| format!("; did you mean {s:?}?"))
        .unwrap_or_default();
    errs.push(path, format!("unknown field {key:?}{hint}"));
}

fn check_required(obj: &Map<String, Value>, schema: &Value, path: &str, errs: &mut FieldErrors) {
    if let Some(req) = schema.get("required").and_then(Value::as_array) {
        for r in req.iter().filter_map(Value::as_str) {
            if !obj.contains_key(r) {
                errs.push(join(path, r), "required field is missing");
            }
        }
    }
}

fn kind_of(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(n) if n.is_i64() || n.is_u64() => "an integer",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "a mapping",
    }
}

fn check_value(value: &Value, schema: &Value, path: &str, errs: &mut FieldErrors) {
    if value.is_null() {
        if schema.get("nullable").and_then(Value::as_bool) != Some(true) {
            errs.push(path, "must not be null");
        }
        return;
    }
    if schema
        .get("x-kubernetes-int-or-string")
        .and_then(Value::as_bool)
        == Some(true)
    {
        if !(value.is_string() || value.is_i64() || value.is_u64()) {
            errs.push(
                path,
                format!("expected an integer or a string, found {}", kind_of(value)),
            );
        }
        return;
    }
    let ty = schema.get("type").and_then(Value::as_str);
    match ty {
        Some("object") => {
            let Some(obj) = value.as_object() else {
                errs.push(
                    path,
                    format!("expected a mapping, found {}", kind_of(value)),
                );
                return;
            };
            if schema
                .get("x-kubernetes-preserve-unknown-fields")
                .and_then(Value::as_bool)
                == Some(true)
                && schema.get("properties").is_none()
            {
                return;
            }
            let props = schema.get("properties").and_then(Value::as_object);
            let additional = schema.get("additionalProperties");
            for (key, v) in obj {
                let sub_path = join(path, key);
                match (props.and_then(|p| p.get(key)), additional) {
                    (Some(sub), _) => check_value(v, sub, &sub_path, errs),
                    (None, Some(add)) if add.is_object() => check_value(v, add, &sub_path, errs),
                    (None, Some(Value::Bool(true))) => {}
                    _ if props.is_none() && additional.is_none() => {}
                    _ => unknown_field(&sub_path, key, props, errs),
                }
            }
            check_required(obj, schema, path, errs);
        }
        Some("array") => {
            let Some(items) = value.as_array() else {
                errs.push(path, format!("expected a list, found {}", kind_of(value)));
                return;
            };
            if let Some(item_schema) = schema.get("items") {
                for (i, item) in items.iter().enumerate() {
                    check_value(item, item_schema, &format!("{path}[{i}]"), errs);
                }
            }
        }
        Some("string") => {
            let Some(s) = value.as_str() else {
                errs.push(path, format!("expected a string, found {}", kind_of(value)));
                return;
            };
            if let Some(allowed) = schema.get("enum").and_then(Value::as_array) {
                let allowed: Vec<&str> = allowed.iter().filter_map(Value::as_str).collect();
                if !allowed.contains(&s) {
                    let hint = suggest(s, allowed.iter().copied())
                        .map(|x| format!("; did you mean {x:?}?"))
                        .unwrap_or_default();
                    errs.push(
                        path,
                        format!(
                            "unsupported value {s:?}; must be one of {}{hint}",
                            allowed.join(", ")
                        ),
                    );
                }
            }
        }
        Some("boolean") if !value.is_boolean() => {
            errs.push(
                path,
                format!("expected a boolean, found {}", kind_of(value)),
            );
        }
        Some("integer") => {
            let n = value
                .as_i64()
                .map(i128::from)
                .or_else(|| value.as_u64().map(i128::from));
            let Some(n) = n else {
                errs.push(
                    path,
                    format!("expected an integer, found {}", kind_of(value)),
                );
                return;
            };
            let min = schema
                .get("minimum")
                .and_then(Value::as_f64)
                .map(|f| f as i128);
            let max = schema
                .get("maximum")
                .and_then(Value::as_f64)
                .map(|f| f as i128);
            let out = min.is_some_and(|m| n < m) || max.is_some_and(|m| n > m);
            if out {
                let range = match (min, max) {
                    (Some(a), Some(b)) => format!("between {a} and {b}"),
                    (Some(a), None) => format!("at least {a}"),
                    (None, Some(b)) => format!("at most {b}"),
                    (None, None) => unreachable!("out of range needs a bound"),
                };
                errs.push(path, format!("must be {range}, found {n}"));
            }
        }
        Some("number") if !value.is_number() => {
            errs.push(path, format!("expected a number, found {}", kind_of(value)));
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
apiVersion: crd.varmor.org/v1beta1
kind: VarmorPolicy
metadata:
  name: demo
  namespace: demo
spec:
  target:
    kind: Deployment
    selector:
      matchLabels:
        app: demo
  policy:
    enforcer: BPF
    mode: EnhanceProtect
    enhanceProtect:
      hardeningRules: ["disable-cap-all"]
      bpfRawRules:
        network:
          egress:
            toDestinations:
            - ip: 10.0.0.1
              ports:
              - port: 80
"#;

    #[test]
    fn parses_a_policy() {
        let docs = parse_documents(GOOD);
        assert_eq!(docs.len(), 1);
        let doc = docs.into_iter().next().expect("one").expect("valid");
        assert_eq!(doc.kind(), "VarmorPolicy");
        assert_eq!(doc.identity("varmor").profile_name(), "varmor-demo-demo");
    }

    #[test]
    fn reports_every_structural_error_with_paths() {
        let bad = GOOD
            .replace("kind: Deployment", "kind: Deploymnt")
            .replace("hardeningRules", "hardeningRule")
            .replace("port: 80", "port: 70000")
            .replace(
                "mode: EnhanceProtect",
                "mode: EnhanceProtect\n    privileged: yes",
            );
        let errs = parse_documents(&bad)
            .into_iter()
            .next()
            .expect("one")
            .expect_err("invalid");
        let text = errs.to_string();
        assert!(
            text.contains("spec.target.kind: unsupported value \"Deploymnt\""),
            "{text}"
        );
        assert!(text.contains("did you mean \"Deployment\""), "{text}");
        assert!(
            text.contains("spec.policy.enhanceProtect.hardeningRule: unknown field"),
            "{text}"
        );
        assert!(text.contains("did you mean \"hardeningRules\""), "{text}");
        assert!(
            text.contains("spec.policy.enhanceProtect.bpfRawRules.network.egress.toDestinations[0].ports[0].port: must be between 1 and 65535"),
            "{text}"
        );
        assert!(
            text.contains("spec.policy.privileged: unknown field"),
            "{text}"
        );
        assert_eq!(errs.len(), 4, "{text}");
    }

    #[test]
    fn multi_document_paths_name_the_document() {
        let text = format!(
            "{GOOD}\n---\n{}",
            GOOD.replace("name: demo\n", "name: Bad_Name\n")
        );
        let docs = parse_documents(&text);
        assert_eq!(docs.len(), 2);
        let errs = docs[1].clone().expect_err("second is invalid");
        assert_eq!(errs.0[0].path, "document[1].metadata.name");
    }

    #[test]
    fn long_profile_names_are_rejected() {
        let text = GOOD.replace("name: demo\n", &format!("name: {}\n", "a".repeat(60)));
        let errs = parse_documents(&text).remove(0).expect_err("too long");
        assert!(errs.to_string().contains("the limit is 63"), "{errs}");
    }
}
