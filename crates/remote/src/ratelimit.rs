//! Who is calling, and how often they failed to authenticate: failed attempts are counted per
//! `client_id` *and address* and per address alone, in one-minute windows, so guessing tokens is
//! slow whether the guesser sticks to one client id or sprays many from one address, and a caller
//! who only knows a `client_id` cannot lock its owner out from another address.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use cipherinfer_protocol::{ErrorCode, ToolError};

/// The length of a rate-limit window.
const WINDOW: Duration = Duration::from_secs(60);

/// Windows kept before stale ones are swept on the next failure.
const SWEEP_ABOVE: usize = 10_000;

/// What the transport knows about the caller of a tool.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Caller {
    /// The peer's address as rate limits see it: IPv4 as is (also when mapped into IPv6), IPv6
    /// reduced to its /64 (one host usually holds a whole /64). `None` when unknown.
    pub peer: Option<IpAddr>,
    /// The call's `request_signature` and the digest of what it claims to cover, if signed.
    pub signed: Option<cipherinfer_protocol::integrity::SignedCall>,
}

impl Caller {
    /// A caller at `addr`.
    pub fn from_ip(addr: IpAddr) -> Self {
        Self {
            peer: Some(cipherinfer_transport::peer_key(addr)),
            signed: None,
        }
    }

    /// A caller the transport cannot place (per-address limits do not apply).
    pub fn unknown() -> Self {
        Self::default()
    }

    /// The same caller, for a call that carried `signed`.
    pub fn with_signature(
        mut self,
        signed: Option<cipherinfer_protocol::integrity::SignedCall>,
    ) -> Self {
        self.signed = signed;
        self
    }
}

/// What a failure window counts.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) enum FailureKey {
    /// Failed authentications naming this client id from this address (`None`: a caller the
    /// transport cannot place).
    Client(String, Option<IpAddr>),
    /// Failed authentications (and enrollment attempts) from this address.
    Peer(IpAddr),
}

/// Failed authentications per key in fixed one-minute windows.
#[derive(Debug, Default)]
pub(crate) struct AuthFailures {
    windows: Mutex<HashMap<FailureKey, (Instant, u32)>>,
}

impl AuthFailures {
    fn lock(&self) -> MutexGuard<'_, HashMap<FailureKey, (Instant, u32)>> {
        // Counters stay meaningful whatever a panicking holder did.
        self.windows.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// `ERROR_RATE_LIMITED` with the time left in the window once `limit` failures were counted
    /// for `key` in it; `limit` 0 disables the check.
    pub(crate) fn check(&self, key: &FailureKey, limit: u32) -> Result<(), ToolError> {
        if limit == 0 {
            return Ok(());
        }
        let windows = self.lock();
        let Some((start, count)) = windows.get(key) else {
            return Ok(());
        };
        let elapsed = start.elapsed();
        if elapsed >= WINDOW || *count < limit {
            return Ok(());
        }
        let wait = WINDOW.saturating_sub(elapsed);
        let what = match key {
            FailureKey::Client(..) => "this client_id from this address",
            FailureKey::Peer(_) => "this address",
        };
        Err(ToolError::new(
            ErrorCode::RateLimited,
            format!("too many failed authentications for {what}; retry later"),
        )
        .with_retry_after_ms(u64::try_from(wait.as_millis()).unwrap_or(60_000).max(1)))
    }

    /// Counts one failure for `key`.
    pub(crate) fn record(&self, key: FailureKey) {
        let mut windows = self.lock();
        if windows.len() > SWEEP_ABOVE {
            windows.retain(|_, (start, _)| start.elapsed() < WINDOW);
        }
        let window = windows.entry(key).or_insert((Instant::now(), 0));
        if window.0.elapsed() >= WINDOW {
            *window = (Instant::now(), 0);
        }
        window.1 = window.1.saturating_add(1);
    }

    /// Drops windows that ended.
    pub(crate) fn sweep(&self) {
        self.lock().retain(|_, (start, _)| start.elapsed() < WINDOW);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv6_peers_are_counted_per_64_and_mapped_ipv4_as_ipv4() {
        let a: IpAddr = "2001:db8:1:2:aaaa::1"
            .parse()
            .unwrap_or(IpAddr::V4([0; 4].into()));
        let b: IpAddr = "2001:db8:1:2:bbbb::9"
            .parse()
            .unwrap_or(IpAddr::V4([0; 4].into()));
        assert_eq!(Caller::from_ip(a), Caller::from_ip(b));
        let mapped: IpAddr = "::ffff:10.0.0.1"
            .parse()
            .unwrap_or(IpAddr::V4([0; 4].into()));
        assert_eq!(
            Caller::from_ip(mapped).peer,
            Some(IpAddr::V4([10, 0, 0, 1].into()))
        );
    }

    #[test]
    fn limits_count_per_key() {
        let f = AuthFailures::default();
        let peer = FailureKey::Peer(IpAddr::V4([127, 0, 0, 1].into()));
        for _ in 0..3 {
            assert!(f.check(&peer, 3).is_ok());
            f.record(peer.clone());
        }
        let e = f.check(&peer, 3).err();
        assert_eq!(
            e.as_ref().map(|e| e.error_code),
            Some(ErrorCode::RateLimited)
        );
        assert!(
            e.and_then(|e| e.retry_after_ms)
                .is_some_and(|ms| ms <= 60_000)
        );
        assert!(f.check(&peer, 0).is_ok());
        assert!(f.check(&FailureKey::Client("x".into(), None), 3).is_ok());
    }
}
