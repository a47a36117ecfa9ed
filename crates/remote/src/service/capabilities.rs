//! `describe_capabilities`: what the server offers, before any authentication.

use cipherinfer_protocol::remote::{Capabilities, DescribeCapabilitiesArgs, PROTOCOL_PROFILE};
use cipherinfer_protocol::{AlgorithmId, ErrorCode};

use super::{Result, Service, err, millis};

impl Service {
    /// Capabilities and served models.
    pub fn describe_capabilities(&self, args: &DescribeCapabilitiesArgs) -> Result<Capabilities> {
        let models: Vec<_> = match &args.model {
            Some(name) => vec![
                self.registry
                    .get(name)
                    .ok_or_else(|| err(ErrorCode::UnknownModel, format!("no model {name:?}")))?
                    .info
                    .clone(),
            ],
            None => self.registry.all().map(|m| m.info.clone()).collect(),
        };
        let mut algorithm_ids: Vec<AlgorithmId> =
            self.registry.all().map(|m| m.info.algorithm_id).collect();
        algorithm_ids.sort_by_key(ToString::to_string);
        algorithm_ids.dedup();
        Ok(Capabilities {
            ok: true,
            protocol: PROTOCOL_PROFILE.to_string(),
            server: format!("cipherinfer-remote {}", env!("CARGO_PKG_VERSION")),
            algorithm_ids,
            limits: self.config.limits.clone(),
            session_ttl_s: self.config.session_ttl.as_secs(),
            result_ttl_s: self.config.session_ttl.as_secs(),
            enrollment_required: self.config.enrollment_token_hash.is_some(),
            server_identity: self.identity.public(),
            signatures_required: self.config.require_signatures,
            identity_registration_required: self.config.require_registered_identity,
            max_clock_skew_ms: millis(self.config.max_clock_skew),
            default_model: self.registry.default_model().to_string(),
            models,
        })
    }
}
