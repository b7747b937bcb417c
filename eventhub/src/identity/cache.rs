//! One token per scope, shared by every connection and renewed before it expires.
//!
//! A cached token is handed out while more than its renewal margin is left: a third of its
//! lifetime, at most five minutes (azure-identity renews ≤ 300 s before expiry,
//! `_constants.py DEFAULT_REFRESH_OFFSET`; the CBS layer renews on the same rule). Past
//! that, the next caller fetches a new one; callers wait for one fetch, not one each.
//!
//! A failed fetch is counted, logged (WARN, with the retry delay) and retried no sooner than
//! a backoff of 1 s doubling to 30 s (azure-identity waits 30 s between refresh attempts,
//! `DEFAULT_TOKEN_REFRESH_RETRY_DELAY`); meanwhile a token that has not yet expired is
//! still handed out, so live links keep working until the real expiry, and callers that
//! have none get the last error. [`CredentialStats`] carries the expiry of the newest
//! token (the `credential_expires_in_seconds` gauge), the fetches and the failures.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures::future::BoxFuture;
use tokio::sync::Mutex;

use super::{AccessToken, IdentityError, TokenCredential};

const FIRST_RETRY: Duration = Duration::from_secs(1);
const MAX_RETRY: Duration = Duration::from_secs(30);

/// Numbers about a credential, for metrics and reports. Shared (`Arc`).
#[derive(Debug, Default)]
pub struct CredentialStats {
    expires_at_unix: AtomicU64,
    fetched: AtomicU64,
    failures: AtomicU64,
}

impl CredentialStats {
    /// Seconds until the newest token expires (negative once it has), `None` before the
    /// first token.
    pub fn expires_in_seconds(&self) -> Option<i64> {
        let at = self.expires_at_unix.load(Ordering::Relaxed);
        (at != 0).then(|| at as i64 - unix_now() as i64)
    }

    /// Tokens fetched from the endpoint.
    pub fn fetched(&self) -> u64 {
        self.fetched.load(Ordering::Relaxed)
    }

    /// Failed fetches.
    pub fn failures(&self) -> u64 {
        self.failures.load(Ordering::Relaxed)
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

struct Entry {
    token: Option<AccessToken>,
    renew_at: SystemTime,
    failures: u32,
    retry_at: Option<Instant>,
    last_error: Option<IdentityError>,
}

/// Caches and renews the tokens of an inner credential.
pub struct CachedCredential {
    inner: Arc<dyn TokenCredential>,
    entries: Mutex<HashMap<String, Entry>>,
    stats: Arc<CredentialStats>,
}

impl std::fmt::Debug for CachedCredential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The inner credential names its endpoint and never a secret; the cached tokens
        // are left out.
        self.inner.fmt(f)
    }
}

/// How long before expiry a token is renewed: a third of its lifetime, at most 5 minutes.
pub fn renewal_margin(lifetime: Duration) -> Duration {
    (lifetime / 3).min(Duration::from_secs(300))
}

impl CachedCredential {
    /// Wraps `inner`.
    pub fn new(inner: Arc<dyn TokenCredential>) -> CachedCredential {
        CachedCredential {
            inner,
            entries: Mutex::new(HashMap::new()),
            stats: Arc::new(CredentialStats::default()),
        }
    }

    /// Its numbers.
    pub fn stats(&self) -> Arc<CredentialStats> {
        self.stats.clone()
    }

    async fn token_for(&self, scope: &str) -> Result<AccessToken, IdentityError> {
        let mut entries = self.entries.lock().await;
        let entry = entries.entry(scope.to_string()).or_insert(Entry {
            token: None,
            renew_at: UNIX_EPOCH,
            failures: 0,
            retry_at: None,
            last_error: None,
        });
        let now = SystemTime::now();
        let live = entry.token.clone().filter(|t| t.expires_at > now);
        if let Some(t) = &live {
            if now < entry.renew_at {
                return Ok(t.clone());
            }
        }
        if entry.retry_at.is_some_and(|at| Instant::now() < at) {
            return match (live, &entry.last_error) {
                (Some(t), _) => Ok(t),
                (None, Some(e)) => Err(e.clone()),
                (None, None) => Err(IdentityError::Config("no token yet".into())),
            };
        }
        match self.inner.get_token(scope).await {
            Ok(token) => {
                let lifetime = token.expires_at.duration_since(now).unwrap_or_default();
                entry.renew_at = token
                    .expires_at
                    .checked_sub(renewal_margin(lifetime))
                    .unwrap_or(now);
                entry.failures = 0;
                entry.retry_at = None;
                entry.last_error = None;
                entry.token = Some(token.clone());
                self.record(&token);
                Ok(token)
            }
            Err(e) => {
                entry.failures = entry.failures.saturating_add(1);
                let delay = FIRST_RETRY
                    .saturating_mul(1 << (entry.failures - 1).min(5))
                    .min(MAX_RETRY);
                entry.retry_at = Some(Instant::now() + delay);
                entry.last_error = Some(e.clone());
                self.stats.failures.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(
                    credential = ?self.inner,
                    %scope,
                    error = %e,
                    transient = e.is_transient(),
                    retry_in_ms = delay.as_millis() as u64,
                    still_valid_for_s = live.as_ref().map(|t| t.expires_at.duration_since(now).unwrap_or_default().as_secs()),
                    "cannot get an Entra ID token"
                );
                match live {
                    Some(t) => Ok(t),
                    None => Err(e),
                }
            }
        }
    }

    fn record(&self, token: &AccessToken) {
        let at = token
            .expires_at
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        self.stats.expires_at_unix.store(at, Ordering::Relaxed);
        self.stats.fetched.fetch_add(1, Ordering::Relaxed);
    }
}

impl TokenCredential for CachedCredential {
    fn get_token<'a>(
        &'a self,
        scope: &'a str,
    ) -> BoxFuture<'a, Result<AccessToken, IdentityError>> {
        Box::pin(self.token_for(scope))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex as StdMutex;

    /// Hands out tokens of `lifetime`, or fails while `fail` is set.
    #[derive(Debug)]
    struct Script {
        lifetime: Duration,
        fail: StdMutex<bool>,
        calls: AtomicU64,
    }

    impl TokenCredential for Script {
        fn get_token<'a>(
            &'a self,
            _scope: &'a str,
        ) -> BoxFuture<'a, Result<AccessToken, IdentityError>> {
            Box::pin(async move {
                let n = self.calls.fetch_add(1, Ordering::Relaxed);
                if *self.fail.lock().unwrap() {
                    return Err(IdentityError::Unreachable {
                        endpoint: "e".into(),
                        why: "down".into(),
                        hint: "",
                    });
                }
                Ok(AccessToken {
                    token: format!("t{n}"),
                    expires_at: SystemTime::now() + self.lifetime,
                })
            })
        }
    }

    fn script(lifetime: Duration) -> Arc<Script> {
        Arc::new(Script {
            lifetime,
            fail: StdMutex::new(false),
            calls: AtomicU64::new(0),
        })
    }

    #[tokio::test]
    async fn a_token_is_reused_until_its_renewal_margin() {
        let s = script(Duration::from_secs(3600));
        let c = CachedCredential::new(s.clone());
        assert_eq!(c.get_token("a").await.unwrap().token, "t0");
        assert_eq!(c.get_token("a").await.unwrap().token, "t0");
        assert_eq!(
            c.get_token("b").await.unwrap().token,
            "t1",
            "one token per scope"
        );
        let left = c.stats().expires_in_seconds().unwrap();
        assert!((3590..=3600).contains(&left), "{left}");
        let short = CachedCredential::new(script(Duration::from_secs(3)));
        short.get_token("a").await.unwrap();
        tokio::time::sleep(Duration::from_millis(2100)).await;
        assert_eq!(short.get_token("a").await.unwrap().token, "t1", "renewed");
    }

    #[tokio::test]
    async fn failures_back_off_and_keep_the_live_token() {
        let s = script(Duration::from_secs(3));
        let c = CachedCredential::new(s.clone());
        c.get_token("a").await.unwrap();
        *s.fail.lock().unwrap() = true;
        tokio::time::sleep(Duration::from_millis(2100)).await;
        assert_eq!(c.get_token("a").await.unwrap().token, "t0", "still valid");
        assert_eq!(c.get_token("a").await.unwrap().token, "t0");
        assert_eq!(
            s.calls.load(Ordering::Relaxed),
            2,
            "no second try within 1 s"
        );
        assert_eq!(c.stats().failures(), 1);
        tokio::time::sleep(Duration::from_millis(1100)).await;
        let e = c.get_token("a").await.unwrap_err();
        assert!(e.is_transient());
        assert!(c.stats().expires_in_seconds().unwrap() <= 0);
        *s.fail.lock().unwrap() = false;
        assert!(c.get_token("a").await.is_err(), "backing off (2 s)");
        tokio::time::sleep(Duration::from_millis(2100)).await;
        assert_eq!(c.get_token("a").await.unwrap().token, "t3");
    }
}
