//! `describe_capabilities`: what the server offers, before any authentication.

use cipherinfer_protocol::ErrorCode;
use cipherinfer_protocol::params::check_security_at_least;
use cipherinfer_protocol::remote::{
    Capabilities, DescribeCapabilitiesArgs, ModelInfo, PROTOCOL_PROFILE,
};

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
        let security = |m: &ModelInfo| m.parameters.security_level.unwrap_or(128);
        let models = match args.security_level {
            None => models,
            Some(_) => {
                let mut served: Vec<u32> = models.iter().map(security).collect();
                let kept: Vec<ModelInfo> = models
                    .into_iter()
                    .filter(|m| check_security_at_least(args.security_level, security(m)).is_ok())
                    .collect();
                if kept.is_empty() {
                    served.sort_unstable();
                    served.dedup();
                    let best = served.last().copied().unwrap_or(0);
                    return Err(check_security_at_least(args.security_level, best)
                        .err()
                        .unwrap_or_else(|| err(ErrorCode::WeakParameters, "no model"))
                        .with_details(serde_json::json!({
                            "requested": args.security_level,
                            "served": served,
                        })));
                }
                kept
            }
        };
        let algorithm_ids = self.registry.algorithm_ids();
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
