//! Transport settings for registry clients: how hard to retry, how long a
//! request may make no progress. Plain values; nothing here sends a request.

use std::time::Duration;

use backon::ExponentialBuilder;

/// How hard to retry transient failures of a single request.
#[derive(Debug, Clone)]
pub struct RetryConfig {
    /// Retries after the first attempt.
    pub retries: usize,
    pub min_delay: Duration,
    pub max_delay: Duration,
    /// The longest `Retry-After` we are willing to honour.
    pub max_retry_after: Duration,
}

impl RetryConfig {
    /// The jittered exponential backoff these settings describe.
    pub(crate) fn backoff(&self) -> ExponentialBuilder {
        ExponentialBuilder::default()
            .with_min_delay(self.min_delay)
            .with_max_delay(self.max_delay)
            .with_max_times(self.retries)
            .with_jitter()
    }
}

impl Default for RetryConfig {
    fn default() -> Self {
        RetryConfig {
            retries: 4,
            min_delay: Duration::from_millis(200),
            max_delay: Duration::from_secs(10),
            max_retry_after: Duration::from_secs(120),
        }
    }
}

/// Transport settings shared by every registry client.
#[derive(Debug, Clone)]
pub struct ClientOptions {
    pub retry: RetryConfig,
    /// A request fails when no byte moves for this long: no response, no
    /// byte of a download, no byte of an upload taken by the registry. Not a
    /// deadline on the whole request: multi-GiB layers take as long as they
    /// take.
    pub stall_timeout: Duration,
    /// How long the registry may take to answer after the last byte of an
    /// upload (it may be verifying and moving a large blob in its storage).
    /// Never shorter than `stall_timeout`.
    pub commit_timeout: Duration,
    pub connect_timeout: Duration,
    pub max_idle_per_host: usize,
}

impl ClientOptions {
    /// The default stall timeout.
    pub const STALL_TIMEOUT: Duration = Duration::from_secs(60);

    /// The default commit wait for a stall timeout: five minutes, or the
    /// stall timeout when that is longer.
    pub fn default_commit_timeout(stall: Duration) -> Duration {
        stall.max(Duration::from_secs(300))
    }
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            retry: RetryConfig::default(),
            stall_timeout: ClientOptions::STALL_TIMEOUT,
            commit_timeout: ClientOptions::default_commit_timeout(ClientOptions::STALL_TIMEOUT),
            connect_timeout: Duration::from_secs(10),
            max_idle_per_host: 64,
        }
    }
}
