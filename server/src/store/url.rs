//! The database URL: which engine and file or server the store opens, held
//! so that its password never reaches a log or a `Debug` print.

use std::convert::Infallible;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// A sea-orm database URL: `sqlite://FILE?mode=rwc` or `postgres://...`.
/// `Debug` shows it with the password replaced by `***`; only
/// [`DatabaseUrl::expose`] gives the real text, for connecting.
#[derive(Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(transparent)]
pub struct DatabaseUrl(String);

impl DatabaseUrl {
    /// The URL with its password, for opening the database.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for DatabaseUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&redact_url(&self.0), f)
    }
}

impl From<&str> for DatabaseUrl {
    fn from(url: &str) -> Self {
        Self(url.to_owned())
    }
}

impl From<String> for DatabaseUrl {
    fn from(url: String) -> Self {
        Self(url)
    }
}

impl FromStr for DatabaseUrl {
    type Err = Infallible;

    fn from_str(url: &str) -> Result<Self, Self::Err> {
        Ok(url.into())
    }
}

/// Replaces the password in `scheme://user:password@host` with `***`.
pub fn redact_url(url: &str) -> String {
    let Some(scheme_end) = url.find("://") else {
        return url.to_owned();
    };
    let rest = &url[scheme_end + 3..];
    let authority_end = rest.find('/').unwrap_or(rest.len());
    match rest[..authority_end].rfind('@') {
        Some(at) => match rest[..at].find(':') {
            Some(colon) => format!(
                "{}{}:***{}",
                &url[..scheme_end + 3],
                &rest[..colon],
                &rest[at..]
            ),
            None => url.to_owned(),
        },
        None => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_password_is_hidden() {
        let url = DatabaseUrl::from("postgres://sl:hunter2@db:5432/sl");
        assert_eq!(format!("{url:?}"), "\"postgres://sl:***@db:5432/sl\"");
        assert_eq!(url.expose(), "postgres://sl:hunter2@db:5432/sl");
        for plain in ["sqlite://a.db?mode=rwc", "postgres://sl@db/sl", "x"] {
            assert_eq!(redact_url(plain), plain);
        }
    }
}
