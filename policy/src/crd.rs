//! CustomResourceDefinition generation for the kinds of [`crate::api`].

use kube::core::CustomResourceExt;

use crate::api::{ArmorProfile, ArmorProfileModel, VarmorClusterPolicy, VarmorPolicy};

/// One generated CRD: the file it is committed as under `deploy/crds/`, and its YAML.
#[derive(Debug, Clone)]
pub struct GeneratedCrd {
    /// File name under `deploy/crds/`.
    pub file_name: String,
    /// The CRD as YAML.
    pub yaml: String,
}

/// Every CRD of the API, in a stable order.
pub fn all(
) -> Vec<k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition>
{
    vec![
        VarmorPolicy::crd(),
        VarmorClusterPolicy::crd(),
        ArmorProfile::crd(),
        ArmorProfileModel::crd(),
    ]
}

/// Every CRD rendered as YAML, one file per CRD.
pub fn render() -> Result<Vec<GeneratedCrd>, serde_yaml::Error> {
    all()
        .into_iter()
        .map(|crd| {
            let file_name = format!("{}.yaml", crd.metadata.name.clone().unwrap_or_default());
            let yaml = format!(
                "# Generated from the Rust types in policy/src/api by `make generate`; do not edit.\n{}",
                serde_yaml::to_string(&crd)?
            );
            Ok(GeneratedCrd { file_name, yaml })
        })
        .collect()
}
