//! The CRDs committed under `deploy/crds/` are the ones the Rust types generate.

mod support;

#[test]
fn committed_crds_match_the_types() {
    let dir = support::repo_dir().join("deploy/crds");
    let rendered = varmor_policy::crd::render().expect("render CRDs");
    let update = std::env::var_os("UPDATE_GOLDEN").is_some_and(|v| v == "1");
    let mut stale = Vec::new();
    for crd in &rendered {
        let path = dir.join(&crd.file_name);
        if update {
            std::fs::create_dir_all(&dir).expect("create deploy/crds");
            std::fs::write(&path, &crd.yaml).expect("write CRD");
            continue;
        }
        match std::fs::read_to_string(&path) {
            Ok(committed) if committed == crd.yaml => {}
            Ok(_) => stale.push(format!("{} differs from the types", path.display())),
            Err(e) => stale.push(format!("{}: {e}", path.display())),
        }
    }
    let expected: Vec<&str> = rendered.iter().map(|c| c.file_name.as_str()).collect();
    if let Ok(entries) = std::fs::read_dir(&dir) {
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().to_string();
            if !expected.contains(&name.as_str()) {
                stale.push(format!(
                    "{} is not generated from the types; remove it",
                    e.path().display()
                ));
            }
        }
    }
    assert!(
        stale.is_empty(),
        "run `make generate` (or UPDATE_GOLDEN=1 cargo test -p varmor-policy --test crd):\n{}",
        stale.join("\n")
    );
}

#[test]
fn crds_name_the_kinds_and_short_names() {
    let rendered = varmor_policy::crd::render().expect("render CRDs");
    let all: String = rendered.iter().map(|c| c.yaml.as_str()).collect();
    for needle in [
        "kind: VarmorPolicy",
        "kind: VarmorClusterPolicy",
        "kind: ArmorProfile",
        "kind: ArmorProfileModel",
        "- vpol",
        "- vcpol",
        "scope: Cluster",
        "group: crd.varmor.org",
        "name: v1beta1",
    ] {
        assert!(all.contains(needle), "missing {needle:?}");
    }
}
