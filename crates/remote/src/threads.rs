//! Evaluation thread pools, one per thread count, so the draft's `omp_threads` hint bounds the
//! parallelism of one inference without rebuilding a pool per call.

use std::sync::{Arc, Mutex, PoisonError};

use cipherinfer_protocol::{ErrorCode, ToolError};
use rayon::{ThreadPool, ThreadPoolBuilder};

/// Distinct pool sizes kept; the least recently used pool is dropped (its threads end once the
/// evaluations still holding it finish).
const POOLS_KEPT: usize = 4;

/// Rayon pools by thread count, capped at the server's maximum.
#[derive(Debug)]
pub(crate) struct EvalPools {
    max_threads: usize,
    /// Most recently used last.
    pools: Mutex<Vec<(usize, Arc<ThreadPool>)>>,
}

/// The machine's parallelism: the default maximum.
pub(crate) fn available_threads() -> usize {
    std::thread::available_parallelism().map_or(1, std::num::NonZero::get)
}

impl EvalPools {
    /// Pools of at most `max_threads` threads (at least one).
    pub(crate) fn new(max_threads: usize) -> Self {
        Self {
            max_threads: max_threads.max(1),
            pools: Mutex::new(Vec::new()),
        }
    }

    /// The thread count an evaluation with this hint gets: the hint capped at the maximum, or
    /// the maximum without a hint.
    pub(crate) fn threads_for(&self, hint: Option<u32>) -> usize {
        hint.map_or(self.max_threads, |h| {
            usize::try_from(h)
                .unwrap_or(usize::MAX)
                .clamp(1, self.max_threads)
        })
    }

    /// The pool of exactly `threads` threads, built on first use.
    pub(crate) fn pool(&self, threads: usize) -> Result<Arc<ThreadPool>, ToolError> {
        // A panic cannot leave the list half-updated.
        let mut pools = self.pools.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(i) = pools.iter().position(|(n, _)| *n == threads) {
            let entry = pools.remove(i);
            let pool = entry.1.clone();
            pools.push(entry);
            return Ok(pool);
        }
        let pool = Arc::new(
            ThreadPoolBuilder::new()
                .num_threads(threads)
                .thread_name(move |i| format!("eval-{threads}-{i}"))
                .build()
                .map_err(|e| {
                    ToolError::new(ErrorCode::Internal, format!("evaluation threads: {e}"))
                })?,
        );
        if pools.len() >= POOLS_KEPT {
            pools.remove(0);
        }
        pools.push((threads, pool.clone()));
        Ok(pool)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hints_are_capped_and_pools_reused() {
        let pools = EvalPools::new(3);
        assert_eq!(pools.threads_for(None), 3);
        assert_eq!(pools.threads_for(Some(1)), 1);
        assert_eq!(pools.threads_for(Some(1000)), 3);
        let a = pools.pool(2).ok();
        let b = pools.pool(2).ok();
        assert!(matches!((&a, &b), (Some(a), Some(b)) if Arc::ptr_eq(a, b)));
        assert_eq!(a.map(|p| p.install(rayon::current_num_threads)), Some(2));
    }
}
