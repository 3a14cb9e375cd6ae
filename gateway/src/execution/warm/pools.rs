//! Every runtime's warm pool ([`WarmPools`]): where a claim goes, starting and closing
//! them together, and the totals `/metrics` reports.

use super::*;

/// One [`WarmPool`] per runtime served.
#[derive(Debug, Default)]
pub(crate) struct WarmPools {
    pools: Vec<Arc<WarmPool>>,
}

impl WarmPools {
    pub(crate) fn new(pools: Vec<Arc<WarmPool>>) -> Self {
        Self { pools }
    }

    /// The entries configured in all pools together.
    pub(crate) fn size(&self) -> usize {
        self.pools.iter().map(|pool| pool.size()).sum()
    }

    /// The entries ready now in all pools together.
    pub(crate) fn ready_count(&self) -> usize {
        self.pools.iter().map(|pool| pool.ready_count()).sum()
    }

    /// The memory every ready entry holds.
    pub(crate) fn memory_bytes(&self) -> u64 {
        self.pools.iter().map(|pool| pool.memory_bytes()).sum()
    }

    /// Starts every pool's filler task.
    pub(crate) fn start(&self, host: &Host) {
        for pool in &self.pools {
            pool.start(host.clone());
        }
    }

    /// A ready entry of `spec`'s runtime, handed over to it, or `None` (counted with its
    /// reason): the execution then starts cold. Never waits.
    pub(in crate::execution) fn claim(
        &self,
        spec: &ExecutionSpec,
        host: &Host,
    ) -> Option<Launched> {
        match self.pools.iter().find(|pool| pool.serves(&spec.runtime)) {
            Some(pool) => pool.claim(spec, host),
            None => {
                host.observe.metrics.warm_missed(Miss::Runtime.as_str());
                None
            }
        }
    }

    /// Closes every pool and waits until their entries are gone.
    pub(crate) async fn close(&self, host: &Host) {
        for pool in &self.pools {
            pool.close(host).await;
        }
    }
}
