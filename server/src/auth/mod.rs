//! Operator accounts and how a web request proves who it is: a server-side
//! session behind a cookie (the dashboard) or an API token (scripts).
//!
//! - [`password`]: Argon2id hashing, off the async threads.
//! - [`limit`]: failed sign-in throttling per account and per address.
//!
//! Sessions and tokens are random 256-bit values; the database keeps only
//! their SHA-256, so a session ends for good when its row is deleted (sign
//! out, password change, idle expiry) and a database copy signs no one in.

pub mod cli;
pub mod limit;
pub mod password;

use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use app::model::{CreatedApiToken, Me, Role};
use tokio_util::sync::CancellationToken;

use crate::clock::now_ms;
use crate::metrics::Metrics;
use crate::store::accounts::AccountRow;
// Sessions and tokens are stored as device secrets are: SHA-256 in hex.
use crate::store::registry::hash_secret;
use crate::store::{Store, StoreError};

/// The cookie that carries the session id.
pub const SESSION_COOKIE: &str = "sightline_session";
/// API tokens start with this, so that leaked ones are easy to recognise
/// (and to search for in code).
pub const TOKEN_PREFIX: &str = "sightline_";
/// A session ends this long after sign-in however active it is.
pub const MAX_SESSION_MS: i64 = 30 * 24 * 60 * 60 * 1000;
/// A session's "last seen" is written at most this often, so that busy
/// pages do not write to the database on every request (and at least twice
/// per idle limit, so that a short limit cannot end a session in use).
const TOUCH_EVERY_MS: i64 = 60 * 1000;
/// How often expired sessions are deleted.
const SWEEP_EVERY: std::time::Duration = std::time::Duration::from_secs(10 * 60);
/// The longest account name.
pub const MAX_NAME_LEN: usize = 64;

/// Who made a request, and how they proved it.
#[derive(Clone, Debug)]
pub struct Caller {
    pub account_id: i64,
    pub name: String,
    pub role: Role,
    pub via: Via,
}

impl Caller {
    fn new(account: &AccountRow, via: Via) -> Self {
        Self {
            account_id: account.id,
            name: account.name.clone(),
            role: account.role(),
            via,
        }
    }

    pub fn me(&self) -> Me {
        Me {
            name: self.name.clone(),
            role: self.role,
        }
    }
}

/// The credential a request carried.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Via {
    /// A session cookie; holds the session id's hash.
    Session(String),
    /// An API token; holds the token's id.
    Token(String),
}

/// Defined with the accounts it is about, below the bus that carries it
/// between instances.
pub use crate::store::accounts::Revoked;

impl Revoked {
    /// Whether this ends what `caller` signed in with.
    pub fn ends(&self, caller: &Caller) -> bool {
        match (self, &caller.via) {
            (Revoked::Session(hash), Via::Session(h)) => hash == h,
            (Revoked::SessionsOf(id), Via::Session(_)) => *id == caller.account_id,
            (Revoked::Account(id), _) => *id == caller.account_id,
            (Revoked::Token(id), Via::Token(t)) => id == t,
            _ => false,
        }
    }
}

/// What account operations can fail with. The messages are for the person
/// who asked.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("wrong name or password")]
    WrongCredentials,
    #[error("too many failed sign-ins; try again in {0} s")]
    Throttled(u64),
    #[error("{0}")]
    Invalid(String),
    #[error("account {0} already exists")]
    Exists(String),
    #[error("no account {0}")]
    NotFound(String),
    #[error("{0}")]
    Refused(&'static str),
    #[error("password hashing failed: {0}")]
    Hashing(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Checks an account name: 1 to 64 letters, digits, `_`, `-`, `.` or `@`.
pub fn check_name(name: &str) -> Result<(), AuthError> {
    let ok = !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b'@'));
    if ok {
        Ok(())
    } else {
        Err(AuthError::Invalid(format!(
            "an account name has 1 to {MAX_NAME_LEN} letters, digits, '_', '-', '.' or '@'"
        )))
    }
}

/// A new random secret: 32 bytes in hex.
fn random_secret() -> String {
    let bytes: [u8; 32] = rand::random();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// How revocations reach other instances.
struct Announce(Box<dyn Fn(&Revoked) + Send + Sync>);

impl std::fmt::Debug for Announce {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Announce")
    }
}

/// The account service.
#[derive(Debug)]
pub struct Auth {
    store: Store,
    metrics: Arc<Metrics>,
    limiter: Mutex<limit::Limiter>,
    idle_ms: i64,
    /// How stale "last seen" may get before a use writes it again.
    touch_every_ms: i64,
    revoked: tokio::sync::broadcast::Sender<Revoked>,
    /// In cluster mode, tells the other instances of each revocation made
    /// here.
    announce: std::sync::OnceLock<Announce>,
    /// Password checks running at once. Each Argon2 check holds about
    /// 19 MiB and a core for tens of milliseconds, so a burst of sign-ins
    /// must queue nowhere: beyond this, attempts are refused at once.
    hashing: tokio::sync::Semaphore,
    /// API tokens one account may hold (`--max-tokens-per-account`).
    max_tokens: usize,
}

/// The most password checks at once.
pub const MAX_HASHING: usize = 8;

impl Auth {
    pub fn new(store: Store, metrics: Arc<Metrics>, idle_minutes: u64) -> Self {
        Self {
            store,
            metrics,
            limiter: Mutex::default(),
            idle_ms: i64::try_from(idle_minutes.saturating_mul(60_000)).unwrap_or(i64::MAX),
            touch_every_ms: i64::try_from(idle_minutes.saturating_mul(30_000))
                .unwrap_or(i64::MAX)
                .min(TOUCH_EVERY_MS),
            revoked: tokio::sync::broadcast::channel(64).0,
            announce: std::sync::OnceLock::new(),
            hashing: tokio::sync::Semaphore::new(MAX_HASHING),
            // One-off commands on the server machine are not bounded; the
            // server sets its flag with `with_max_tokens`.
            max_tokens: usize::MAX,
        }
    }

    /// Bounds the API tokens one account may hold.
    pub fn with_max_tokens(mut self, max: usize) -> Self {
        self.max_tokens = max;
        self
    }

    /// Credentials as they are revoked, for live sockets to close on.
    pub fn revocations(&self) -> tokio::sync::broadcast::Receiver<Revoked> {
        self.revoked.subscribe()
    }

    fn revoke(&self, what: Revoked) {
        if let Some(announce) = self.announce.get() {
            (announce.0)(&what);
        }
        self.revoked_elsewhere(what);
    }

    /// Closes this instance's live sockets that `what` ends, without
    /// announcing it further: another instance revoked it.
    pub fn revoked_elsewhere(&self, what: Revoked) {
        // No live socket listening is fine.
        let _ = self.revoked.send(what);
    }

    /// Has every revocation made here also told to the other instances
    /// (cluster mode); set once, at start.
    pub fn announce_with(&self, tell: impl Fn(&Revoked) + Send + Sync + 'static) {
        let _ = self.announce.set(Announce(Box::new(tell)));
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    fn limiter(&self) -> std::sync::MutexGuard<'_, limit::Limiter> {
        // The limiter holds no invariant a panic could break halfway.
        self.limiter
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Admits a password check under the sign-in throttle, counting a
    /// refusal.
    fn admit(&self, key: &str, ip: Option<IpAddr>) -> Result<(), AuthError> {
        self.limiter()
            .admit(key, ip, Instant::now())
            .map_err(|wait| {
                Metrics::add(&self.metrics.auth.login_throttled, 1);
                AuthError::Throttled(wait.as_secs().max(1))
            })
    }

    /// Checks a name and password and opens a session. Returns the session
    /// id for the cookie. Throttled attempts are refused before the
    /// password is checked, so they cost no hashing; so are attempts
    /// beyond [`MAX_HASHING`] at once.
    pub async fn login(
        &self,
        name: &str,
        password: &str,
        ip: Option<IpAddr>,
    ) -> Result<(String, Caller), AuthError> {
        // A name no account can have is throttled under one key, so that a
        // spray of made-up names cannot grow the limiter.
        let key = if check_name(name).is_ok() {
            name
        } else {
            "\u{0}invalid"
        };
        self.admit(key, ip)?;
        let Ok(_permit) = self.hashing.try_acquire() else {
            Metrics::add(&self.metrics.auth.login_throttled, 1);
            return Err(AuthError::Throttled(1));
        };
        let account = if key == name && password.len() <= password::MAX_LEN {
            self.store.account(name).await?
        } else {
            None
        };
        let ok = password::verify(
            password.to_owned(),
            account.as_ref().map(|a| a.password_hash.clone()),
        )
        .await;
        let account = match account {
            Some(a) if ok => a,
            _ => {
                Metrics::add(&self.metrics.auth.login_failures, 1);
                return Err(AuthError::WrongCredentials);
            }
        };
        self.limiter().succeeded(name, ip, Instant::now());
        let secret = random_secret();
        let hash = hash_secret(&secret);
        self.store.add_session(&hash, account.id, now_ms()).await?;
        Metrics::add(&self.metrics.auth.logins, 1);
        Ok((secret, Caller::new(&account, Via::Session(hash))))
    }

    /// Whether `password` is the account's current one, for changing it.
    /// Counted like sign-ins, so a stolen session cannot guess it quickly.
    pub async fn confirm_password(
        &self,
        name: &str,
        password: &str,
        ip: Option<IpAddr>,
    ) -> Result<(), AuthError> {
        self.admit(name, ip)?;
        let account = self.store.account(name).await?;
        if password::verify(password.to_owned(), account.map(|a| a.password_hash)).await {
            self.limiter().succeeded(name, ip, Instant::now());
            Ok(())
        } else {
            Metrics::add(&self.metrics.auth.login_failures, 1);
            Err(AuthError::WrongCredentials)
        }
    }

    /// Whether the session or token `caller` signed in with still holds:
    /// for live sockets, which check again now and then, so that expiry and
    /// changes made by another process also close them. An open socket
    /// counts as use of its session.
    pub async fn still_valid(&self, caller: &Caller) -> Result<bool, StoreError> {
        Ok(match &caller.via {
            Via::Session(hash) => {
                let Some(s) = self.store.session(hash).await? else {
                    return Ok(false);
                };
                let now = now_ms();
                let live =
                    now - s.last_seen_at <= self.idle_ms && now - s.created_at <= MAX_SESSION_MS;
                // Watching live data is use: a wall display left open
                // keeps its session, up to the 30-day limit.
                if live && now - s.last_seen_at > self.touch_every_ms {
                    self.store.touch_session(hash, now).await?;
                }
                live
            }
            Via::Token(id) => self.store.token_exists(id).await?,
        })
    }

    /// The caller behind a session cookie, if the session is live. An idle
    /// or too old session is deleted on sight.
    pub async fn session(&self, secret: &str) -> Result<Option<Caller>, StoreError> {
        let hash = hash_secret(secret);
        let Some(session) = self.store.session(&hash).await? else {
            return Ok(None);
        };
        let now = now_ms();
        if now - session.last_seen_at > self.idle_ms || now - session.created_at > MAX_SESSION_MS {
            self.store.remove_session(&hash).await?;
            return Ok(None);
        }
        if now - session.last_seen_at > self.touch_every_ms {
            self.store.touch_session(&hash, now).await?;
        }
        Ok(Some(Caller::new(&session.account, Via::Session(hash))))
    }

    /// The caller behind an API token, if it exists.
    pub async fn token(&self, token: &str) -> Result<Option<Caller>, StoreError> {
        if !token.starts_with(TOKEN_PREFIX) {
            return Ok(None);
        }
        let Some((id, last_used, account)) = self.store.token(&hash_secret(token)).await? else {
            return Ok(None);
        };
        // "Last used" is for the token list, to a minute: a script calling
        // the API in a loop must not write to the database each time, nor
        // fail while the database is busy with a long write.
        let now = now_ms();
        if last_used.is_none_or(|at| now - at > TOUCH_EVERY_MS) {
            if let Err(e) = self.store.touch_token(&id, now).await {
                tracing::warn!("cannot note the use of an API token: {e}");
            }
        }
        Ok(Some(Caller::new(&account, Via::Token(id))))
    }

    /// Ends the caller's session (a token is not a session, and is revoked
    /// on its own).
    pub async fn logout(&self, caller: &Caller) -> Result<(), StoreError> {
        if let Via::Session(hash) = &caller.via {
            self.store.remove_session(hash).await?;
            self.revoke(Revoked::Session(hash.clone()));
        }
        Ok(())
    }

    pub async fn add_account(
        &self,
        name: &str,
        password: &str,
        role: Role,
    ) -> Result<(), AuthError> {
        check_name(name)?;
        password::acceptable(password).map_err(AuthError::Invalid)?;
        let hash = password::hash(password.to_owned())
            .await
            .map_err(AuthError::Hashing)?;
        if self.store.add_account(name, &hash, role, now_ms()).await? {
            Ok(())
        } else {
            Err(AuthError::Exists(name.to_owned()))
        }
    }

    /// Sets a new password and ends every session of the account; with
    /// `and_tokens` (an admin's reset, as after a compromise), its API
    /// tokens too.
    pub async fn set_password(
        &self,
        name: &str,
        password: &str,
        and_tokens: bool,
    ) -> Result<(), AuthError> {
        password::acceptable(password).map_err(AuthError::Invalid)?;
        let hash = password::hash(password.to_owned())
            .await
            .map_err(AuthError::Hashing)?;
        let account = self
            .store
            .account(name)
            .await?
            .ok_or_else(|| AuthError::NotFound(name.to_owned()))?;
        self.store.set_password(name, &hash, now_ms()).await?;
        self.revoke(Revoked::SessionsOf(account.id));
        if and_tokens {
            for token in self.store.tokens(account.id).await? {
                self.revoke_token(account.id, &token.id).await?;
            }
        }
        Ok(())
    }

    /// Changes a role; the last admin cannot be demoted, so that someone
    /// can always manage accounts.
    pub async fn set_role(&self, name: &str, role: Role) -> Result<(), AuthError> {
        let account = self
            .store
            .account(name)
            .await?
            .ok_or_else(|| AuthError::NotFound(name.to_owned()))?;
        if account.role() == Role::Admin && role != Role::Admin {
            if self.store.demote_admin(name, role).await? {
                return Ok(());
            }
            return Err(AuthError::Refused(
                "the last admin cannot lose the admin role",
            ));
        }
        self.store.set_role(name, role).await?;
        Ok(())
    }

    /// Deletes an account, its sessions and its tokens; never the last
    /// admin.
    pub async fn remove_account(&self, name: &str) -> Result<(), AuthError> {
        let account = self
            .store
            .account(name)
            .await?
            .ok_or_else(|| AuthError::NotFound(name.to_owned()))?;
        if !self.store.remove_account(name).await? {
            return Err(AuthError::Refused("the last admin cannot be removed"));
        }
        self.revoke(Revoked::Account(account.id));
        Ok(())
    }

    /// Creates an API token for an account; its secret is returned once.
    pub async fn add_token(
        &self,
        account_id: i64,
        label: &str,
    ) -> Result<CreatedApiToken, AuthError> {
        let label = label.trim();
        if label.is_empty() || label.chars().count() > 64 || label.chars().any(char::is_control) {
            return Err(AuthError::Invalid(
                "a token label has 1 to 64 printable characters".to_owned(),
            ));
        }
        let token = format!("{TOKEN_PREFIX}{}", random_secret());
        let id = uuid::Uuid::now_v7().simple().to_string();
        let added = self
            .store
            .add_token(
                &id,
                account_id,
                label,
                &hash_secret(&token),
                now_ms(),
                self.max_tokens,
            )
            .await?;
        if !added {
            Metrics::add(&self.metrics.auth.tokens_refused, 1);
            tracing::warn!(
                account_id,
                max = self.max_tokens,
                "API token refused: the account holds its limit"
            );
            return Err(AuthError::Refused(
                "this account holds its limit of API tokens; revoke one first",
            ));
        }
        Ok(CreatedApiToken {
            id,
            label: label.to_owned(),
            token,
        })
    }

    /// Revokes one of an account's tokens; `Ok(false)` if it has none by
    /// that id.
    pub async fn revoke_token(&self, account_id: i64, id: &str) -> Result<bool, StoreError> {
        let removed = self.store.remove_token(account_id, id).await?;
        if removed {
            self.revoke(Revoked::Token(id.to_owned()));
        }
        Ok(removed)
    }

    /// Deletes expired sessions and forgets old failed sign-ins, until
    /// `stop`.
    pub async fn run(self: Arc<Self>, stop: CancellationToken) {
        let mut tick = tokio::time::interval(SWEEP_EVERY);
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                _ = tick.tick() => {}
            }
            let now = now_ms();
            match self
                .store
                .prune_sessions(now - self.idle_ms, now - MAX_SESSION_MS)
                .await
            {
                Ok(0) => {}
                Ok(n) => tracing::debug!(sessions = n, "expired sessions deleted"),
                Err(e) => tracing::warn!("cannot delete expired sessions: {e}"),
            }
            self.limiter().sweep(Instant::now());
        }
    }
}
