//! YAML -> parse -> validate -> compile (every enforcer) -> reference matcher: must never
//! panic, whatever the input.
#![no_main]

use libfuzzer_sys::fuzz_target;
use varmor_policy::decide::{decide, Access};
use varmor_policy::{compile, parse_documents, validate, NodeFacts};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    for doc in parse_documents(text).into_iter().flatten() {
        if !validate::validate_document(&doc).is_empty() {
            continue;
        }
        let mut spec = doc.spec();
        // Exercise every back end regardless of what the document asks for.
        for enforcer in ["AppArmorBPFSeccomp", "AppArmorSeccomp", &spec.policy.enforcer.clone()] {
            spec.policy.enforcer = enforcer.to_string();
            let Ok(bundle) = compile(&spec, &doc.identity("varmor"), &NodeFacts::default()) else { continue };
            if let Some(bpf) = &bundle.bpf {
                for access in [
                    Access::File { path: "/etc/shadow".into(), permissions: 4 },
                    Access::Exec { path: "/bin/sh".into() },
                    Access::Capability(21),
                    Access::Mount { source: "/proc".into(), fstype: "proc".into(), flags: 0 },
                ] {
                    let _ = decide(bpf, &access);
                }
            }
        }
    }
});
