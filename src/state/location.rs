//! Where the state lives, as given by `--state` / `REGFERRY_STATE`: a path
//! (SQLite, the default) or a `postgres://…` / `postgresql://…` URL.
//!
//! A PostgreSQL URL may carry a password (in its user part or as a
//! `password=` parameter). This type never shows it: `Display` and `Debug`
//! print the URL with the secret replaced by `***`, and [`StateLocation::scrub`]
//! removes it from any message before the message reaches a log or an error.
//! Only the backend that connects reads the URL with its secret.

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use url::Url;

/// What replaces a secret wherever a location is shown.
const MASK: &str = "***";

/// A state database: a SQLite file or a PostgreSQL database.
#[derive(Clone, PartialEq, Eq)]
pub enum StateLocation {
    Sqlite(PathBuf),
    Postgres(Url),
}

/// Why a `--state` value is not usable (never quotes the value: it may hold a password).
#[derive(Debug, thiserror::Error)]
pub enum LocationError {
    #[error("--state is empty")]
    Empty,
    #[error("--state is not a valid PostgreSQL URL: {0}")]
    BadUrl(url::ParseError),
    #[error("--state: a PostgreSQL URL needs a host (postgres://user:password@host/database)")]
    NoHost,
}

impl FromStr for StateLocation {
    type Err = LocationError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        if s.is_empty() {
            return Err(LocationError::Empty);
        }
        let lower = s.get(..13).unwrap_or(s).to_ascii_lowercase();
        if lower.starts_with("postgres://") || lower.starts_with("postgresql://") {
            let url = Url::parse(s).map_err(LocationError::BadUrl)?;
            if url.host_str().is_none_or(str::is_empty) {
                return Err(LocationError::NoHost);
            }
            return Ok(StateLocation::Postgres(url));
        }
        Ok(StateLocation::Sqlite(PathBuf::from(s)))
    }
}

impl StateLocation {
    pub fn sqlite(path: impl Into<PathBuf>) -> StateLocation {
        StateLocation::Sqlite(path.into())
    }

    /// The SQLite file, when the state is one.
    pub fn path(&self) -> Option<&Path> {
        match self {
            StateLocation::Sqlite(p) => Some(p),
            StateLocation::Postgres(_) => None,
        }
    }

    /// The location as it may be shown: a path, or the URL without its password.
    pub fn redacted(&self) -> String {
        match self {
            StateLocation::Sqlite(p) => p.display().to_string(),
            StateLocation::Postgres(url) => {
                let mut shown = url.clone();
                if !url.password().unwrap_or("").is_empty() {
                    // Cannot fail: the URL has a host (checked when parsed).
                    let _ = shown.set_password(Some(MASK));
                }
                if url.query_pairs().any(|(k, _)| is_secret_param(&k)) {
                    let pairs: Vec<(String, String)> = url
                        .query_pairs()
                        .map(|(k, v)| {
                            let v = if is_secret_param(&k) { MASK.to_string() } else { v.into_owned() };
                            (k.into_owned(), v)
                        })
                        .collect();
                    shown.query_pairs_mut().clear().extend_pairs(pairs);
                }
                shown.to_string()
            }
        }
    }

    /// The secrets of this location in every spelling a message could carry
    /// (as given and percent-decoded).
    fn secrets(&self) -> Vec<String> {
        let StateLocation::Postgres(url) = self else { return Vec::new() };
        let mut out = Vec::new();
        let mut add = |s: &str| {
            if !s.is_empty() && !out.iter().any(|o| o == s) {
                out.push(s.to_string());
            }
        };
        if let Some(raw) = url.password() {
            add(raw);
            if let Ok(decoded) = percent_encoding_decode(raw) {
                add(&decoded);
            }
        }
        for (k, v) in url.query_pairs() {
            if is_secret_param(&k) {
                add(&v);
            }
        }
        // The longest first, so that a secret containing another is masked whole.
        out.sort_by_key(|s| std::cmp::Reverse(s.len()));
        out
    }

    /// `message` with every secret of this location replaced by `***`.
    pub fn scrub(&self, message: &str) -> String {
        let mut out = message.to_string();
        for secret in self.secrets() {
            out = out.replace(&secret, MASK);
        }
        out
    }

    /// The URL with its secret, for the backend that connects. Never log it.
    pub(super) fn secret_url(&self) -> Option<&str> {
        match self {
            StateLocation::Postgres(url) => Some(url.as_str()),
            StateLocation::Sqlite(_) => None,
        }
    }
}

fn is_secret_param(key: &str) -> bool {
    key.eq_ignore_ascii_case("password") || key.eq_ignore_ascii_case("sslpassword")
}

fn percent_encoding_decode(s: &str) -> Result<String, std::string::FromUtf8Error> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && let Some(hex) = s.get(i + 1..i + 3)
            && let Ok(b) = u8::from_str_radix(hex, 16)
        {
            out.push(b);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8(out)
}

/// A path is a SQLite file.
/// The state this process opened last, redacted (errors of its queries name it).
static OPENED: std::sync::OnceLock<std::sync::Mutex<String>> = std::sync::OnceLock::new();

/// Remember `location` as the state this process uses.
pub(super) fn opened(location: &StateLocation) {
    let shown = location.redacted();
    let cell = OPENED.get_or_init(Default::default);
    *cell.lock().unwrap_or_else(|p| p.into_inner()) = shown;
}

/// The state this process opened last, redacted, after a space (empty before any).
pub(super) fn shown() -> String {
    let shown = OPENED.get().map(|m| m.lock().unwrap_or_else(|p| p.into_inner()).clone()).unwrap_or_default();
    if shown.is_empty() { shown } else { format!(" {shown}") }
}

impl From<PathBuf> for StateLocation {
    fn from(path: PathBuf) -> Self {
        StateLocation::Sqlite(path)
    }
}

impl From<&Path> for StateLocation {
    fn from(path: &Path) -> Self {
        StateLocation::Sqlite(path.into())
    }
}

impl fmt::Display for StateLocation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted())
    }
}

impl fmt::Debug for StateLocation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "StateLocation({})", self.redacted())
    }
}

#[cfg(test)]
mod tests {
    use super::StateLocation;

    #[test]
    fn a_path_is_sqlite_and_a_postgres_url_is_postgres() {
        assert_eq!("state/regferry.db".parse::<StateLocation>().unwrap(), StateLocation::sqlite("state/regferry.db"));
        for url in ["postgres://u:p@h/db", "postgresql://u:p@h:5433/db", "POSTGRES://u@h/db"] {
            assert!(matches!(url.parse::<StateLocation>().unwrap(), StateLocation::Postgres(_)), "{url}");
        }
        assert!("postgres:///db".parse::<StateLocation>().is_err(), "no host");
        assert!("".parse::<StateLocation>().is_err());
    }

    #[test]
    fn the_password_is_never_shown() {
        let loc: StateLocation = "postgres://ferry:s3cr%40t@db.example:5432/regferry?sslmode=disable".parse().unwrap();
        assert_eq!(loc.to_string(), "postgres://ferry:***@db.example:5432/regferry?sslmode=disable");
        assert!(!format!("{loc:?}").contains("s3cr"));
        assert_eq!(loc.scrub("auth failed for s3cr@t and s3cr%40t"), "auth failed for *** and ***");

        let loc: StateLocation = "postgres://ferry@db/regferry?password=hunter2&application_name=x".parse().unwrap();
        let shown = loc.to_string();
        assert!(!shown.contains("hunter2") && shown.contains("application_name=x"), "{shown}");
        assert_eq!(loc.scrub("x hunter2 y"), "x *** y");
    }
}
