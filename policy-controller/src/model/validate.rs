//! NetworkPolicy validation as the API server does it (`ValidateNetworkPolicy` in
//! kubernetes/pkg/apis/networking/validation): used by the API stand-in (422), by the agent
//! (an invalid object is reported and skipped) and by palisadectl.

use super::api::NetworkPolicy;

/// One validation failure: the field path (`spec.ingress[0].ports[1].endPort`) and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    pub field: String,
    pub message: String,
}

/// All validation errors of a policy (empty: valid).
pub fn validate_network_policy(_policy: &NetworkPolicy) -> Vec<FieldError> {
    Vec::new() // TODO(validation helper): implement
}
