//! Validation of whole policy documents: the invalid corpus (`tests/fixtures/invalid`, one
//! mistake per file, each announcing the errors it must produce), the valid corpora
//! (`tests/fixtures/valid` and the user-facing examples in `deploy/examples`), and the update
//! rules.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use kube::core::CustomResourceExt;
use serde_json::Value;
use varmor_policy::api::{
    PolicyMode, PolicyPhase, VarmorPolicy, VarmorPolicySpec, VarmorPolicyStatus,
};
use varmor_policy::catalog::{self, Category};
use varmor_policy::enforcer::ENFORCER_VALUES;
use varmor_policy::validate::{
    validate_document, validate_spec, validate_update, MAX_RULES_PER_TYPE,
};
use varmor_policy::{parse_documents, FieldError, PolicyDocument};

/// Parses every document of `text` and validates each one; all errors of all documents.
fn check_text(text: &str) -> (Vec<PolicyDocument>, Vec<FieldError>) {
    let mut docs = Vec::new();
    let mut errors = Vec::new();
    for result in parse_documents(text) {
        match result {
            Ok(doc) => {
                errors.extend(validate_document(&doc));
                docs.push(doc);
            }
            Err(errs) => errors.extend(errs),
        }
    }
    (docs, errors)
}

fn fixtures(dir: &str) -> Vec<std::path::PathBuf> {
    support::yaml_files(&support::crate_dir().join("tests/fixtures").join(dir))
}

fn examples() -> Vec<std::path::PathBuf> {
    support::yaml_files(&support::repo_dir().join("deploy/examples"))
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The `# expect: <path>: <reason substring>` lines of the leading comment block.
fn expectations(text: &str) -> Vec<(String, String)> {
    text.lines()
        .take_while(|l| l.starts_with('#'))
        .filter_map(|l| l.strip_prefix("# expect:"))
        .map(|rest| {
            let (path, reason) = rest.trim().split_once(": ").unwrap_or((rest.trim(), ""));
            (path.trim().to_string(), reason.trim().to_string())
        })
        .collect()
}

#[test]
fn every_invalid_fixture_reports_exactly_its_errors() {
    let files = fixtures("invalid");
    assert!(files.len() >= 40, "only {} invalid fixtures", files.len());
    let mut failures = Vec::new();
    for file in &files {
        let name = file
            .file_name()
            .expect("name")
            .to_string_lossy()
            .into_owned();
        let text = read(file);
        if !text.starts_with("# expect:") {
            failures.push(format!(
                "{name}: the first line must be a `# expect:` comment"
            ));
            continue;
        }
        let expected = expectations(&text);
        let (_, errors) = check_text(&text);
        for (path, substring) in &expected {
            let found = errors
                .iter()
                .any(|e| e.path == *path && e.reason.contains(substring.as_str()));
            if !found {
                failures.push(format!("{name}: expected `{path}: …{substring}…`"));
            }
        }
        let expected_paths: BTreeSet<&str> = expected.iter().map(|(p, _)| p.as_str()).collect();
        for e in &errors {
            if !expected_paths.contains(e.path.as_str()) {
                failures.push(format!("{name}: unexpected error `{e}`"));
            }
        }
        if errors.is_empty() {
            failures.push(format!("{name}: no error reported"));
        }
    }
    assert!(
        failures.is_empty(),
        "{} problem(s):\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn every_example_and_valid_fixture_validates_cleanly() {
    let files: Vec<_> = examples().into_iter().chain(fixtures("valid")).collect();
    assert!(files.len() >= 20, "only {} valid files", files.len());
    let mut failures = Vec::new();
    for file in &files {
        let (docs, errors) = check_text(&read(file));
        if docs.is_empty() {
            failures.push(format!("{}: no policy in the file", file.display()));
        }
        for e in errors {
            failures.push(format!("{}: {e}", file.display()));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// Every documented field (of the CRD schema under `spec`) as a path with `[]` for list items.
fn schema_paths(schema: &Value, path: &str, out: &mut BTreeSet<String>) {
    if let Some(props) = schema.get("properties").and_then(Value::as_object) {
        for (key, sub) in props {
            let p = format!("{path}.{key}");
            out.insert(p.clone());
            schema_paths(sub, &p, out);
        }
    }
    if let Some(items) = schema.get("items") {
        schema_paths(items, &format!("{path}[]"), out);
    }
}

/// The paths used by a document, in the same notation (map keys of free-form maps such as
/// `matchLabels` are not followed).
fn value_paths(value: &Value, schema: &Value, path: &str, out: &mut BTreeSet<String>) {
    match value {
        Value::Object(obj) => {
            let Some(props) = schema.get("properties").and_then(Value::as_object) else {
                return;
            };
            for (key, v) in obj {
                if let Some(sub) = props.get(key) {
                    let p = format!("{path}.{key}");
                    out.insert(p.clone());
                    value_paths(v, sub, &p, out);
                }
            }
        }
        Value::Array(items) => {
            if let Some(item_schema) = schema.get("items") {
                for v in items {
                    value_paths(v, item_schema, &format!("{path}[]"), out);
                }
            }
        }
        _ => {}
    }
}

fn spec_schema() -> Value {
    let crd = VarmorPolicy::crd();
    let schema = crd.spec.versions[0]
        .schema
        .as_ref()
        .and_then(|s| s.open_api_v3_schema.as_ref());
    let schema = serde_json::to_value(schema.expect("schema")).expect("json");
    schema["properties"]["spec"].clone()
}

fn example_values() -> Vec<(String, Value)> {
    let mut out = Vec::new();
    for file in examples() {
        let text = read(&file);
        for de in serde_yaml::Deserializer::from_str(&text) {
            let v: Value = serde::Deserialize::deserialize(de).expect("yaml");
            if !v.is_null() {
                out.push((
                    file.file_name()
                        .expect("name")
                        .to_string_lossy()
                        .into_owned(),
                    v,
                ));
            }
        }
    }
    out
}

#[test]
fn examples_use_every_field_of_the_interface() {
    let schema = spec_schema();
    let mut all = BTreeSet::new();
    schema_paths(&schema, "spec", &mut all);
    let mut used = BTreeSet::new();
    for (_, v) in example_values() {
        value_paths(&v["spec"], &schema, "spec", &mut used);
    }
    let missing: Vec<_> = all.difference(&used).collect();
    assert!(
        missing.is_empty(),
        "fields no example in deploy/examples uses: {missing:#?}"
    );
}

#[test]
fn examples_use_every_kind_mode_enforcer_and_category() {
    let mut seen: BTreeMap<&str, BTreeSet<String>> = BTreeMap::new();
    let mut note = |what: &'static str, v: &Value| {
        if let Some(s) = v.as_str() {
            seen.entry(what).or_default().insert(s.to_string());
        }
    };
    let docs = example_values();
    for (_, v) in &docs {
        note("kind", &v["kind"]);
        note("target.kind", &v["spec"]["target"]["kind"]);
        note("mode", &v["spec"]["policy"]["mode"]);
        note("enforcer", &v["spec"]["policy"]["enforcer"]);
        let did = &v["spec"]["policy"]["defenseInDepth"];
        note("profileType", &did["appArmor"]["profileType"]);
        note("profileType", &did["seccomp"]["profileType"]);
        let egress = &v["spec"]["policy"]["enhanceProtect"]["bpfRawRules"]["network"]["egress"];
        for d in egress["toDestinations"].as_array().into_iter().flatten() {
            note("ip", &d["ip"]);
        }
    }
    let want: [(&str, Vec<&str>); 6] = [
        ("kind", vec!["VarmorPolicy", "VarmorClusterPolicy"]),
        (
            "target.kind",
            vec!["Deployment", "StatefulSet", "DaemonSet", "Pod"],
        ),
        ("mode", PolicyMode::ALL.iter().map(|m| m.as_str()).collect()),
        ("enforcer", ENFORCER_VALUES.to_vec()),
        ("profileType", vec!["BehaviorModel", "Custom"]),
        ("ip", vec!["pod-self", "unspecified", "localhost"]),
    ];
    let mut missing = Vec::new();
    for (what, values) in want {
        for v in values {
            if !seen.get(what).is_some_and(|s| s.contains(v)) {
                missing.push(format!("{what} = {v}"));
            }
        }
    }
    // Every category of built-in rules, and literal IPv4, IPv6 and CIDR destinations.
    let mut categories = BTreeSet::new();
    let mut v4 = false;
    let mut v6 = false;
    for (_, v) in &docs {
        let ep = &v["spec"]["policy"]["enhanceProtect"];
        let mut names: Vec<&Value> = Vec::new();
        names.extend(ep["hardeningRules"].as_array().into_iter().flatten());
        names.extend(ep["vulMitigationRules"].as_array().into_iter().flatten());
        for entry in ep["attackProtectionRules"].as_array().into_iter().flatten() {
            names.extend(entry["rules"].as_array().into_iter().flatten());
        }
        for n in names.into_iter().filter_map(Value::as_str) {
            if let Some(rule) = catalog::lookup(n) {
                categories.insert(format!("{:?}", rule.category));
            }
        }
        let egress = &ep["bpfRawRules"]["network"]["egress"];
        for d in egress["toDestinations"].as_array().into_iter().flatten() {
            match d["ip"].as_str().map(str::parse::<std::net::IpAddr>) {
                Some(Ok(std::net::IpAddr::V4(_))) => v4 = true,
                Some(Ok(std::net::IpAddr::V6(_))) => v6 = true,
                _ => {}
            }
        }
    }
    for c in [
        Category::Hardening,
        Category::AttackProtection,
        Category::VulMitigation,
    ] {
        if !categories.contains(&format!("{c:?}")) {
            missing.push(format!("a built-in rule of {c:?}"));
        }
    }
    if !v4 || !v6 {
        missing.push("literal IPv4 and IPv6 destinations".to_string());
    }
    assert!(
        missing.is_empty(),
        "deploy/examples never uses: {missing:#?}"
    );
}

#[test]
fn example_file_names_follow_the_convention() {
    for file in examples() {
        let name = file
            .file_name()
            .expect("name")
            .to_string_lossy()
            .into_owned();
        assert!(
            name.starts_with("vpol-") || name.starts_with("vcpol-"),
            "{name}: examples are named vpol-… (VarmorPolicy) or vcpol-… (VarmorClusterPolicy)"
        );
        let (docs, _) = check_text(&read(&file));
        let want = if name.starts_with("vpol-") {
            "VarmorPolicy"
        } else {
            "VarmorClusterPolicy"
        };
        assert!(
            docs.iter().all(|d| d.kind() == want),
            "{name} holds a policy of another kind"
        );
    }
}

// ---------------------------------------------------------------------------------------
// Specs built in code.

const BASE: &str = r#"
apiVersion: crd.varmor.org/v1beta1
kind: VarmorPolicy
metadata:
  name: demo
  namespace: demo
spec:
  target:
    kind: Deployment
    name: web
  policy:
    enforcer: AppArmorBPFSeccomp
    mode: EnhanceProtect
    enhanceProtect: {}
"#;

fn base_value() -> Value {
    serde_yaml::from_str(BASE).expect("base yaml")
}

fn spec_of(value: Value) -> VarmorPolicySpec {
    let text = serde_json::to_string(&value).expect("json");
    match parse_documents(&text).remove(0) {
        Ok(doc) => doc.spec(),
        Err(e) => panic!("test policy does not parse: {e}"),
    }
}

fn paths(errs: &varmor_policy::FieldErrors) -> BTreeSet<String> {
    errs.iter().map(|e| e.path.clone()).collect()
}

#[test]
fn all_errors_of_a_document_are_reported_together() {
    let text = r#"
apiVersion: crd.varmor.org/v1beta1
kind: VarmorPolicy
metadata:
  name: many-mistakes
  namespace: demo
spec:
  target:
    kind: Deployment
    name: web
    selector:
      matchLabels:
        app: web
  policy:
    enforcer: AppArmorBPF
    mode: EnhanceProtect
    enhanceProtect:
      hardeningRules:
      - disable-cap-al
      - disable-shell
      attackProtectionRules:
      - rules: []
        targets: [bash]
      appArmorRawRules:
      - rules: "deny /etc/shadow r,\n}\n"
      bpfRawRules:
        files:
        - pattern: /etc/{passwd,shadow
          permissions: [raed]
        network:
          sockets:
          - {}
          egress:
            toDestinations:
            - ip: 10.0.0.256
            - cidr: 10.0.0.0/8
              ports:
              - port: 8080
                endPort: 80
        ptrace:
          permissions: []
        mounts:
        - sourcePattern: /proc/**
          fstype: proc
          flags: [b]
      syscallRawRules:
      - names: [unshar]
        action: SCMP_ACT_DENY
"#;
    let (_, errors) = check_text(text);
    let got: BTreeSet<&str> = errors.iter().map(|e| e.path.as_str()).collect();
    let ep = "spec.policy.enhanceProtect";
    let want = [
        "spec.target".to_string(),
        format!("{ep}.hardeningRules[0]"),
        format!("{ep}.hardeningRules[1]"),
        format!("{ep}.attackProtectionRules[0].rules"),
        format!("{ep}.attackProtectionRules[0].targets[0]"),
        format!("{ep}.appArmorRawRules[0].rules"),
        format!("{ep}.bpfRawRules.files[0].pattern"),
        format!("{ep}.bpfRawRules.files[0].permissions[0]"),
        format!("{ep}.bpfRawRules.network.sockets[0]"),
        format!("{ep}.bpfRawRules.network.egress.toDestinations[0].ip"),
        format!("{ep}.bpfRawRules.network.egress.toDestinations[1].ports[0].endPort"),
        format!("{ep}.bpfRawRules.ptrace.permissions"),
        format!("{ep}.bpfRawRules.mounts[0].flags[0]"),
        format!("{ep}.syscallRawRules[0].names[0]"),
        format!("{ep}.syscallRawRules[0].action"),
    ];
    let want: BTreeSet<&str> = want.iter().map(String::as_str).collect();
    assert_eq!(got, want, "{errors:#?}");
    assert_eq!(
        errors.len(),
        want.len(),
        "one error per mistake: {errors:#?}"
    );
}

#[test]
fn every_builtin_rule_is_accepted_in_its_list_under_every_spelling() {
    let mut v = base_value();
    let mut hardening = Vec::new();
    let mut attack = Vec::new();
    let mut vul = Vec::new();
    for rule in catalog::all() {
        let mut spellings = vec![
            rule.name.to_string(),
            rule.name.replace('-', "_").to_uppercase(),
        ];
        spellings.extend(rule.aliases.iter().map(|a| a.to_string()));
        match rule.category {
            Category::Hardening => hardening.extend(spellings),
            Category::AttackProtection => attack.extend(spellings),
            Category::VulMitigation => vul.extend(spellings),
        }
    }
    v["spec"]["policy"]["enhanceProtect"] = serde_json::json!({
        "hardeningRules": hardening,
        "attackProtectionRules": [{"rules": attack}, {"rules": ["disable-shell"], "targets": ["/bin/bash"]}],
        "vulMitigationRules": vul,
    });
    let errs = validate_spec(&spec_of(v));
    assert!(errs.is_empty(), "{errs}");
}

#[test]
fn rule_limits_per_type() {
    let ep = "spec.policy.enhanceProtect.bpfRawRules";
    let build = |n: usize| {
        let mut v = base_value();
        let files: Vec<Value> = (0..n)
            .map(|i| serde_json::json!({"pattern": format!("/data/f{i}"), "permissions": ["w"]}))
            .collect();
        let sockets: Vec<Value> = (0..n)
            .map(|_| serde_json::json!({"domains": ["packet"]}))
            .collect();
        let dests: Vec<Value> = (0..n)
            .map(|i| serde_json::json!({"ip": format!("10.{}.{}.1", i / 256, i % 256)}))
            .collect();
        let mounts: Vec<Value> = (0..n)
            .map(|i| serde_json::json!({"sourcePattern": format!("/m{i}"), "fstype": "*", "flags": ["all"]}))
            .collect();
        v["spec"]["policy"]["enhanceProtect"] = serde_json::json!({"bpfRawRules": {
            "files": files,
            "processes": [{"pattern": "/usr/bin/nc", "permissions": ["exec"]}],
            "network": {"sockets": sockets, "egress": {"toDestinations": dests}},
            "mounts": mounts,
        }});
        validate_spec(&spec_of(v))
    };
    let at_limit = build(MAX_RULES_PER_TYPE - 1);
    assert!(at_limit.is_empty(), "{at_limit}");
    let over = build(MAX_RULES_PER_TYPE + 1);
    let want: BTreeSet<String> = [
        ep.to_string(),
        format!("{ep}.network.sockets"),
        format!("{ep}.network.egress.toDestinations"),
        format!("{ep}.mounts"),
    ]
    .into_iter()
    .collect();
    assert_eq!(paths(&over), want, "{over}");
    assert!(
        over.iter().all(|e| e.reason.contains("the limit is 4096")),
        "{over}"
    );
}

// ---------------------------------------------------------------------------------------
// validate_update

fn spec_with(enforcer: &str, mode: &str) -> VarmorPolicySpec {
    let mut v = base_value();
    v["spec"]["policy"]["enforcer"] = Value::from(enforcer);
    v["spec"]["policy"]["mode"] = Value::from(mode);
    v["spec"]["policy"]["modelingOptions"] = serde_json::json!({"duration": 30});
    spec_of(v)
}

fn status(phase: PolicyPhase) -> VarmorPolicyStatus {
    VarmorPolicyStatus {
        phase: Some(phase),
        ..Default::default()
    }
}

#[test]
fn update_target_is_immutable() {
    let old = spec_with("BPF", "EnhanceProtect");
    let mut new = old.clone();
    assert!(validate_update(&old, &new, None).is_empty());
    new.target.name = Some("other".into());
    let errs = validate_update(&old, &new, None);
    assert_eq!(paths(&errs), BTreeSet::from(["spec.target".to_string()]));
    assert!(errs.0[0].reason.contains("immutable"), "{errs}");
    // Changing anything else is fine.
    let mut new = old.clone();
    new.policy.mode = PolicyMode::AlwaysAllow;
    new.update_existing_workloads = true;
    assert!(validate_update(&old, &new, None).is_empty());
}

#[test]
fn update_cannot_leave_modeling_while_modeling() {
    let old = spec_with("AppArmorSeccomp", "BehaviorModeling");
    let new = spec_with("AppArmorSeccomp", "DefenseInDepth");
    let errs = validate_update(&old, &new, Some(&status(PolicyPhase::Modeling)));
    assert_eq!(
        paths(&errs),
        BTreeSet::from(["spec.policy.mode".to_string()])
    );
    assert!(errs.0[0].reason.contains("while modeling"), "{errs}");
    for done in [
        PolicyPhase::Completed,
        PolicyPhase::Protecting,
        PolicyPhase::Error,
    ] {
        assert!(
            validate_update(&old, &new, Some(&status(done))).is_empty(),
            "{done:?}"
        );
    }
    assert!(validate_update(&old, &new, None).is_empty());
    // Staying in BehaviorModeling (e.g. changing the duration) is fine while modeling.
    let mut longer = old.clone();
    longer.policy.modeling_options = Some(varmor_policy::api::ModelingOptions { duration: 60 });
    assert!(validate_update(&old, &longer, Some(&status(PolicyPhase::Modeling))).is_empty());
}

#[test]
fn update_cannot_change_the_enforcer_while_modeling() {
    let old = spec_with("AppArmor", "BehaviorModeling");
    let added = spec_with("AppArmorSeccomp", "BehaviorModeling");
    let errs = validate_update(&old, &added, Some(&status(PolicyPhase::Modeling)));
    assert_eq!(
        paths(&errs),
        BTreeSet::from(["spec.policy.enforcer".to_string()])
    );
    assert!(errs.0[0].reason.contains("while modeling"), "{errs}");
    // Adding is allowed once modeling is over.
    assert!(validate_update(&old, &added, Some(&status(PolicyPhase::Completed))).is_empty());
    // A different spelling of the same set is not a change.
    let same = spec_with("apparmor", "BehaviorModeling");
    assert!(validate_update(&old, &same, Some(&status(PolicyPhase::Modeling))).is_empty());
}

#[test]
fn update_enforcer_removal_follows_varmor() {
    let allowed = [
        ("AppArmor", "AppArmorBPF"),
        ("BPF", "AppArmorBPFSeccomp"),
        ("AppArmorBPF", "AppArmor"),
        ("BPFSeccomp", "Seccomp"),
        ("AppArmorBPFSeccomp", "AppArmorSeccomp"),
        ("AppArmorSeccomp", "AppArmorSeccomp"),
    ];
    for (o, n) in allowed {
        let errs = validate_update(
            &spec_with(o, "EnhanceProtect"),
            &spec_with(n, "EnhanceProtect"),
            None,
        );
        assert!(errs.is_empty(), "{o} -> {n}: {errs}");
    }
    let rejected = [
        ("AppArmor", "BPF", "AppArmor enforcer"),
        ("AppArmorSeccomp", "AppArmor", "Seccomp enforcer"),
        (
            "AppArmorBPFSeccomp",
            "BPF",
            "AppArmor and Seccomp enforcers",
        ),
        ("Seccomp", "AppArmorBPF", "Seccomp enforcer"),
        // Removing BPF is only allowed on its own.
        (
            "BPF",
            "AppArmor",
            "first change the enforcer to AppArmorBPF",
        ),
        (
            "AppArmorBPF",
            "AppArmorSeccomp",
            "first change the enforcer to AppArmorBPFSeccomp",
        ),
    ];
    for (o, n, why) in rejected {
        let errs = validate_update(
            &spec_with(o, "EnhanceProtect"),
            &spec_with(n, "EnhanceProtect"),
            None,
        );
        assert_eq!(
            paths(&errs),
            BTreeSet::from(["spec.policy.enforcer".to_string()]),
            "{o} -> {n}"
        );
        assert!(errs.0[0].reason.contains(why), "{o} -> {n}: {errs}");
    }
    let errs = validate_update(
        &spec_with("AppArmor", "EnhanceProtect"),
        &spec_with("BPF", "EnhanceProtect"),
        None,
    );
    assert!(
        errs.0[0]
            .reason
            .contains("cannot be removed from it by the container runtime"),
        "{errs}"
    );
}

#[test]
fn custom_apparmor_profile_name_must_match_the_policy() {
    let text = |kind: &str, ns: &str, profile: &str| {
        format!(
            r#"
apiVersion: crd.varmor.org/v1beta1
kind: {kind}
metadata:
  name: web
{ns}
spec:
  target:
    kind: Deployment
    name: web
  policy:
    enforcer: AppArmor
    mode: DefenseInDepth
    defenseInDepth:
      appArmor:
        profileType: Custom
        customProfile: |
          abi <abi/3.0>,
          #include <tunables/global>
          profile {profile} flags=(attach_disconnected,mediate_deleted) {{
            #include <abstractions/base>
            file,
          }}
"#
        )
    };
    let ok = [
        text("VarmorPolicy", "  namespace: shop", "varmor-shop-web"),
        text("VarmorPolicy", "", "varmor-default-web"),
        text("VarmorClusterPolicy", "", "varmor-cluster-varmor-web"),
        text("VarmorClusterPolicy", "", "varmor-cluster-security-web"),
    ];
    for t in ok {
        let (docs, errs) = check_text(&t);
        assert_eq!(docs.len(), 1);
        assert!(errs.is_empty(), "{t}\n{errs:#?}");
    }
    let bad = [
        text("VarmorPolicy", "  namespace: shop", "varmor-demo-web"),
        text("VarmorClusterPolicy", "", "varmor-varmor-web"),
    ];
    for t in bad {
        let (_, errs) = check_text(&t);
        assert_eq!(errs.len(), 1, "{errs:#?}");
        assert_eq!(
            errs[0].path,
            "spec.policy.defenseInDepth.appArmor.customProfile"
        );
        assert!(errs[0].reason.contains("must be named"), "{errs:#?}");
    }
}

#[test]
fn ignored_blocks_of_other_modes_are_not_errors() {
    let mut v = base_value();
    v["spec"]["policy"]["mode"] = Value::from("AlwaysAllow");
    v["spec"]["policy"]["enhanceProtect"] =
        serde_json::json!({"hardeningRules": ["disable-cap-all"]});
    v["spec"]["policy"]["modelingOptions"] = serde_json::json!({"duration": 0});
    v["spec"]["policy"]["defenseInDepth"] =
        serde_json::json!({"appArmor": {"profileType": "BehaviorModel"}});
    let errs = validate_spec(&spec_of(v));
    assert!(errs.is_empty(), "{errs}");
}
