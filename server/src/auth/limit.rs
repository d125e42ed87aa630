//! Failed sign-in throttling, keyed so that an attacker cannot lock the
//! owner out of an account.
//!
//! Three keys are counted: an account from one address (tight: a guesser
//! gets a handful of tries), an address across accounts (a sprayer), and
//! an account from everywhere (a ceiling far above what one guesser gets,
//! against guessing from many addresses). The ceiling does not apply from
//! an address the account has signed in from before, so the owner gets in
//! from their usual address even while a botnet guesses at their name.
//!
//! Each key keeps the times of its recent failures; once it has `max` of
//! them within `window`, further attempts are refused without checking the
//! password until the oldest failure ages out. Refused attempts are not
//! recorded, so a blocked client cannot extend its own block forever, and
//! the maps are swept so that a spray of names cannot grow them without
//! bound.

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::time::{Duration, Instant};

/// How many failures a key may have within the window.
#[derive(Clone, Copy, Debug)]
pub struct Rule {
    pub max: usize,
    pub window: Duration,
}

/// Failures of one account from one address: enough for typos, far too
/// few to guess.
pub const PER_ACCOUNT_ADDRESS: Rule = Rule {
    max: 5,
    window: Duration::from_secs(15 * 60),
};
/// Failures of one account from all addresses together, except those it
/// has signed in from: a ceiling against guessing from many addresses.
pub const PER_ACCOUNT: Rule = Rule {
    max: 100,
    window: Duration::from_secs(15 * 60),
};
/// Failures per address: higher, since a whole office may share one.
pub const PER_ADDRESS: Rule = Rule {
    max: 20,
    window: Duration::from_secs(15 * 60),
};
/// The most keys kept per map; beyond it the oldest entries are dropped.
const MAX_KEYS: usize = 100_000;

#[derive(Debug, Default)]
struct Failures {
    by_key: HashMap<String, VecDeque<Instant>>,
}

impl Failures {
    fn blocked_for(&mut self, key: &str, rule: Rule, now: Instant) -> Option<Duration> {
        let times = self.by_key.get_mut(key)?;
        while times
            .front()
            .is_some_and(|t| now.duration_since(*t) >= rule.window)
        {
            times.pop_front();
        }
        if times.len() < rule.max {
            return None;
        }
        times
            .front()
            .map(|oldest| rule.window.saturating_sub(now.duration_since(*oldest)))
    }

    fn record(&mut self, key: &str, rule: Rule, now: Instant) {
        if self.by_key.len() >= MAX_KEYS && !self.by_key.contains_key(key) {
            self.sweep(rule, now);
            if self.by_key.len() >= MAX_KEYS {
                // Every key is recent: forget the one whose newest failure
                // is oldest rather than grow.
                if let Some(k) = self
                    .by_key
                    .iter()
                    .min_by_key(|(_, t)| t.back().copied())
                    .map(|(k, _)| k.clone())
                {
                    self.by_key.remove(&k);
                }
            }
        }
        let times = self.by_key.entry(key.to_owned()).or_default();
        times.push_back(now);
        while times.len() > rule.max {
            times.pop_front();
        }
    }

    fn sweep(&mut self, rule: Rule, now: Instant) {
        self.by_key.retain(|_, times| {
            times
                .back()
                .is_some_and(|t| now.duration_since(*t) < rule.window)
        });
    }
}

/// The throttle for the three kinds of key.
#[derive(Debug, Default)]
pub struct Limiter {
    pairs: Failures,
    accounts: Failures,
    addresses: Failures,
    /// The (account, address) keys of recent successful sign-ins, with
    /// when: the account ceiling does not apply from these.
    trusted: HashMap<String, Instant>,
}

/// How long a successful sign-in makes its address trusted for its account.
const TRUSTED_FOR: Duration = Duration::from_secs(90 * 24 * 3600);

/// The key of an account from an address (or from nowhere known).
fn pair_key(account: &str, ip: Option<IpAddr>) -> String {
    let address = ip.map_or_else(|| "-".to_owned(), address_key);
    format!("{}\n{address}", account.to_lowercase())
}

/// The key of a client address: IPv6 clients are grouped by /64, since one
/// host usually holds a whole /64.
fn address_key(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => v4.to_string(),
            None => {
                let s = v6.segments();
                format!("{:x}:{:x}:{:x}:{:x}::/64", s[0], s[1], s[2], s[3])
            }
        },
    }
}

impl Limiter {
    /// Admits one sign-in attempt, or says how long it must wait. An
    /// admitted attempt counts as a failure at once, in the same step as
    /// the check, so that attempts sent in parallel cannot all slip under
    /// the limit before any has failed; [`Limiter::succeeded`] takes it
    /// back.
    pub fn admit(
        &mut self,
        account: &str,
        ip: Option<IpAddr>,
        now: Instant,
    ) -> Result<(), Duration> {
        if let Some(wait) = self.blocked_for(account, ip, now) {
            return Err(wait);
        }
        self.failed(account, ip, now);
        Ok(())
    }

    /// How long this attempt must wait, if the account failed too often
    /// from this address, the address failed too often, or the account
    /// failed too often from everywhere and this address is not one it
    /// signed in from.
    pub fn blocked_for(
        &mut self,
        account: &str,
        ip: Option<IpAddr>,
        now: Instant,
    ) -> Option<Duration> {
        let pair = pair_key(account, ip);
        let by_pair = self.pairs.blocked_for(&pair, PER_ACCOUNT_ADDRESS, now);
        let by_address = ip.and_then(|ip| {
            self.addresses
                .blocked_for(&address_key(ip), PER_ADDRESS, now)
        });
        let trusted = self
            .trusted
            .get(&pair)
            .is_some_and(|at| now.duration_since(*at) < TRUSTED_FOR);
        let by_account = if trusted {
            None
        } else {
            self.accounts
                .blocked_for(&account.to_lowercase(), PER_ACCOUNT, now)
        };
        by_pair.max(by_address).max(by_account)
    }

    pub fn failed(&mut self, account: &str, ip: Option<IpAddr>, now: Instant) {
        self.pairs
            .record(&pair_key(account, ip), PER_ACCOUNT_ADDRESS, now);
        self.accounts
            .record(&account.to_lowercase(), PER_ACCOUNT, now);
        if let Some(ip) = ip {
            self.addresses.record(&address_key(ip), PER_ADDRESS, now);
        }
    }

    /// A successful sign-in clears the account's failures from this
    /// address, trusts the address for the account, and takes back the
    /// attempt [`Limiter::admit`] counted against the address and the
    /// account (only that one, so one good account cannot unlock guessing
    /// at others, and the owner signing in does not reset the ceiling for
    /// guessers elsewhere).
    pub fn succeeded(&mut self, account: &str, ip: Option<IpAddr>, now: Instant) {
        let pair = pair_key(account, ip);
        self.pairs.by_key.remove(&pair);
        if let Some(times) = self.accounts.by_key.get_mut(&account.to_lowercase()) {
            times.pop_back();
        }
        if let Some(times) = ip.and_then(|ip| self.addresses.by_key.get_mut(&address_key(ip))) {
            times.pop_back();
        }
        if self.trusted.len() >= MAX_KEYS && !self.trusted.contains_key(&pair) {
            self.trusted
                .retain(|_, at| now.duration_since(*at) < TRUSTED_FOR);
            if self.trusted.len() >= MAX_KEYS {
                if let Some(k) = self
                    .trusted
                    .iter()
                    .min_by_key(|(_, at)| **at)
                    .map(|(k, _)| k.clone())
                {
                    self.trusted.remove(&k);
                }
            }
        }
        self.trusted.insert(pair, now);
    }

    /// Drops keys whose failures have all aged out.
    pub fn sweep(&mut self, now: Instant) {
        self.pairs.sweep(PER_ACCOUNT_ADDRESS, now);
        self.accounts.sweep(PER_ACCOUNT, now);
        self.addresses.sweep(PER_ADDRESS, now);
        self.trusted
            .retain(|_, at| now.duration_since(*at) < TRUSTED_FOR);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_after_max_failures_until_the_oldest_ages_out() {
        let mut l = Limiter::default();
        let t0 = Instant::now();
        let ip: IpAddr = "10.0.0.1".parse().expect("ip");
        for i in 0..PER_ACCOUNT_ADDRESS.max {
            assert_eq!(l.blocked_for("alice", Some(ip), t0), None, "attempt {i}");
            l.failed("alice", Some(ip), t0 + Duration::from_secs(i as u64));
        }
        let now = t0 + Duration::from_secs(10);
        let wait = l.blocked_for("ALICE", Some(ip), now).expect("blocked");
        assert_eq!(wait, PER_ACCOUNT_ADDRESS.window - Duration::from_secs(10));
        // Another account from a different address is not affected.
        assert_eq!(l.blocked_for("bob", None, now), None);
        assert_eq!(
            l.blocked_for("alice", Some(ip), t0 + PER_ACCOUNT_ADDRESS.window),
            None
        );
    }

    #[test]
    fn a_guesser_cannot_lock_the_owner_out() {
        let mut l = Limiter::default();
        let t0 = Instant::now();
        let attacker: IpAddr = "10.6.6.6".parse().expect("ip");
        let owner: IpAddr = "192.168.1.20".parse().expect("ip");
        for _ in 0..PER_ACCOUNT_ADDRESS.max {
            l.failed("alice", Some(attacker), t0);
        }
        assert!(l.blocked_for("alice", Some(attacker), t0).is_some());
        assert_eq!(l.blocked_for("alice", Some(owner), t0), None);

        // Guessing from many addresses hits the account's ceiling, which
        // holds for new addresses but not for one the owner signed in from.
        l.succeeded("alice", Some(owner), t0);
        for i in 0..PER_ACCOUNT.max {
            let ip = IpAddr::from([10, 1, (i / 250) as u8, (i % 250) as u8]);
            l.failed("alice", Some(ip), t0);
        }
        let stranger: IpAddr = "172.16.0.1".parse().expect("ip");
        assert!(l.blocked_for("alice", Some(stranger), t0).is_some());
        assert_eq!(l.blocked_for("alice", Some(owner), t0), None);
    }

    #[test]
    fn an_address_is_blocked_across_accounts() {
        let mut l = Limiter::default();
        let t0 = Instant::now();
        let ip: IpAddr = "2001:db8::1".parse().expect("ip");
        let neighbour: IpAddr = "2001:db8::2".parse().expect("ip");
        for i in 0..PER_ADDRESS.max {
            l.failed(&format!("user{i}"), Some(ip), t0);
        }
        assert!(l.blocked_for("someone", Some(neighbour), t0).is_some());
        assert!(l.blocked_for("someone", None, t0).is_none());
    }

    #[test]
    fn success_clears_the_account() {
        let mut l = Limiter::default();
        let t0 = Instant::now();
        for _ in 0..PER_ACCOUNT_ADDRESS.max {
            l.failed("alice", None, t0);
        }
        assert!(l.blocked_for("alice", None, t0).is_some());
        l.succeeded("alice", None, t0);
        assert!(l.blocked_for("alice", None, t0).is_none());
    }

    #[test]
    fn parallel_attempts_are_counted_as_they_are_admitted() {
        let mut l = Limiter::default();
        let t0 = Instant::now();
        let ip: IpAddr = "10.0.0.9".parse().expect("ip");
        // Twenty attempts arrive together, before any has been checked.
        let admitted = (0..20)
            .filter(|_| l.admit("alice", Some(ip), t0).is_ok())
            .count();
        assert_eq!(admitted, PER_ACCOUNT_ADDRESS.max);
        // A success gives the address its attempt back.
        let mut l = Limiter::default();
        for _ in 0..PER_ADDRESS.max {
            assert!(l.admit("bob", Some(ip), t0).is_ok() || l.admit("carol", Some(ip), t0).is_ok());
            l.succeeded("bob", Some(ip), t0);
            l.succeeded("carol", Some(ip), t0);
        }
        assert!(l.admit("dave", Some(ip), t0).is_ok());
    }

    #[test]
    fn memory_is_bounded() {
        let mut l = Limiter::default();
        let t0 = Instant::now();
        for i in 0..(MAX_KEYS + 10) {
            l.failed(&format!("n{i}"), None, t0);
        }
        assert!(l.accounts.by_key.len() <= MAX_KEYS);
        assert!(l.pairs.by_key.len() <= MAX_KEYS);
    }
}
