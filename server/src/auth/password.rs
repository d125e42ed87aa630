//! Password hashing with Argon2id, off the async threads: one hash costs
//! tens of milliseconds of CPU on purpose.

use argon2::password_hash::{rand_core::OsRng, PasswordHash, PasswordHasher, SaltString};
use argon2::{Argon2, PasswordVerifier};

/// The shortest password accepted, as NIST SP 800-63B asks for.
pub const MIN_LEN: usize = 8;
/// The longest password accepted, which bounds the hashing work one request
/// can cause.
pub const MAX_LEN: usize = 1024;

/// Checks a new password's length; the message is for the person typing it.
pub fn acceptable(password: &str) -> Result<(), String> {
    let n = password.chars().count();
    if n < MIN_LEN {
        return Err(format!("a password has at least {MIN_LEN} characters"));
    }
    if password.len() > MAX_LEN {
        return Err(format!("a password has at most {MAX_LEN} bytes"));
    }
    Ok(())
}

/// Hashes a password into a PHC string (algorithm, parameters, salt, hash).
pub async fn hash(password: String) -> Result<String, String> {
    tokio::task::spawn_blocking(move || {
        let salt = SaltString::generate(&mut OsRng);
        Argon2::default()
            .hash_password(password.as_bytes(), &salt)
            .map(|h| h.to_string())
            .map_err(|e| e.to_string())
    })
    .await
    .map_err(|e| e.to_string())?
}

/// A hash of a random password, checked when the account does not exist
/// so that a wrong name takes as long as a wrong password.
fn decoy() -> &'static str {
    static DECOY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    DECOY.get_or_init(|| {
        let salt = SaltString::generate(&mut OsRng);
        Argon2::default()
            .hash_password(salt.as_str().as_bytes(), &salt)
            .map(|h| h.to_string())
            .unwrap_or_default()
    })
}

/// Whether `password` matches `phc`; with `None`, checks against a decoy and
/// returns false.
pub async fn verify(password: String, phc: Option<String>) -> bool {
    tokio::task::spawn_blocking(move || {
        let known = phc.is_some();
        let phc = phc.unwrap_or_else(|| decoy().to_owned());
        let Ok(parsed) = PasswordHash::new(&phc) else {
            return false;
        };
        let matches = Argon2::default()
            .verify_password(password.as_bytes(), &parsed)
            .is_ok();
        known && matches
    })
    .await
    .unwrap_or(false)
}
