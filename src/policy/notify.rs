//! A policy's notification receivers: where to send (a webhook URL taken
//! from the environment, a file or the policy itself), in which shape
//! (generic JSON or Slack-compatible) and on which events.
//!
//! Only checking and holding the configuration; sending is the daemon's
//! job. A receiver's URL is a secret (Slack-style URLs carry their token):
//! it is kept in a [`Secret`] and never written into an issue, a log line
//! or `Debug` output — only its host is.

use std::fmt;

use crate::registry::Secret;

/// What a receiver is told about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Event {
    /// A policy starts failing (once per failing streak).
    Failure,
    /// A failing policy is healthy again.
    Recovery,
    /// Every fully successful pass.
    Success,
    /// The policy's direction changed (failover or failback).
    Failover,
}

impl Event {
    pub fn as_str(self) -> &'static str {
        match self {
            Event::Failure => "failure",
            Event::Recovery => "recovery",
            Event::Success => "success",
            Event::Failover => "failover",
        }
    }

    fn parse(s: &str) -> Option<Event> {
        [Event::Failure, Event::Recovery, Event::Success, Event::Failover].into_iter().find(|e| e.as_str() == s.trim())
    }
}

impl fmt::Display for Event {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The shape of the payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// regferry's own JSON document.
    Json,
    /// `{"text": …}`, as Slack (and Mattermost, Rocket.Chat, Teams workflows) accept.
    Slack,
}

/// One webhook receiver.
#[derive(Clone)]
pub struct Receiver {
    pub url: Secret,
    /// The URL's host, for log lines.
    pub host: String,
    pub format: Format,
    pub events: Vec<Event>,
}

impl fmt::Debug for Receiver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Receiver").field("host", &self.host).field("format", &self.format).field("events", &self.events).finish_non_exhaustive()
    }
}

impl Receiver {
    pub fn wants(&self, event: Event) -> bool {
        self.events.contains(&event)
    }
}

/// A receiver as written in the policy file.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawReceiver {
    /// A URL without a secret in it.
    #[serde(default)]
    pub url: Option<String>,
    /// An environment variable holding the URL.
    #[serde(default)]
    pub url_env: Option<String>,
    /// A file holding the URL (e.g. a mounted Kubernetes Secret).
    #[serde(default)]
    pub url_file: Option<String>,
    /// `json` (default) or `slack`.
    #[serde(default)]
    pub format: Option<String>,
    /// Default: `[failure, recovery]`.
    #[serde(default)]
    pub events: Option<Vec<String>>,
}

/// Check one receiver; the error is (field suffix, message), never carrying the URL.
pub fn check(raw: &RawReceiver, env: &dyn Fn(&str) -> Option<String>) -> Result<Receiver, (String, String)> {
    let url = match (&raw.url, &raw.url_env, &raw.url_file) {
        (Some(u), None, None) => u.trim().to_string(),
        (None, Some(var), None) => match env(var) {
            Some(v) if !v.trim().is_empty() => v.trim().to_string(),
            _ => return Err(("url_env".into(), format!("environment variable {var} is not set"))),
        },
        (None, None, Some(path)) => match std::fs::read_to_string(path) {
            Ok(v) if !v.trim().is_empty() => v.trim().to_string(),
            Ok(_) => return Err(("url_file".into(), format!("{path} is empty"))),
            Err(e) => return Err(("url_file".into(), format!("cannot read {path}: {e}"))),
        },
        (None, None, None) => return Err((String::new(), "say where the webhook URL comes from: url_env, url_file or url".into())),
        _ => return Err((String::new(), "give one of url, url_env or url_file".into())),
    };
    let parsed = url::Url::parse(&url).map_err(|e| ("url".to_string(), format!("not a URL ({e}); the value is not shown")))?;
    if !matches!(parsed.scheme(), "http" | "https") || parsed.host_str().is_none() {
        return Err(("url".into(), "must be an http:// or https:// URL with a host; the value is not shown".into()));
    }
    let host = match parsed.port() {
        Some(p) => format!("{}:{p}", parsed.host_str().unwrap_or_default()),
        None => parsed.host_str().unwrap_or_default().to_string(),
    };
    let format = match raw.format.as_deref().map(str::trim) {
        None | Some("json") => Format::Json,
        Some("slack") => Format::Slack,
        Some(other) => return Err(("format".into(), format!("{other:?} is not a format (json or slack)"))),
    };
    let events = match &raw.events {
        None => vec![Event::Failure, Event::Recovery],
        Some(list) if list.is_empty() => return Err(("events".into(), "name at least one event".into())),
        Some(list) => {
            let mut out = Vec::new();
            for e in list {
                let Some(ev) = Event::parse(e) else {
                    return Err(("events".into(), format!("{e:?} is not an event (failure, recovery, success, failover)")));
                };
                if !out.contains(&ev) {
                    out.push(ev);
                }
            }
            out
        }
    };
    Ok(Receiver { url: Secret::new(url), host, format, events })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(url_env: &str, format: Option<&str>, events: Option<Vec<&str>>) -> RawReceiver {
        RawReceiver {
            url: None,
            url_env: Some(url_env.into()),
            url_file: None,
            format: format.map(String::from),
            events: events.map(|e| e.into_iter().map(String::from).collect()),
        }
    }

    #[test]
    fn receivers_default_to_failure_and_recovery_and_hide_their_url() {
        let env = |k: &str| (k == "HOOK").then(|| "https://hooks.example.com/services/T0/B0/s3cr3t".to_string());
        let r = check(&raw("HOOK", Some("slack"), None), &env).unwrap();
        assert_eq!((r.format, r.events.clone(), r.host.as_str()), (Format::Slack, vec![Event::Failure, Event::Recovery], "hooks.example.com"));
        assert!(!format!("{r:?}").contains("s3cr3t"));
        let e = check(&raw("NOPE", None, None), &env).unwrap_err();
        assert_eq!(e.0, "url_env");
        let e = check(&raw("HOOK", None, Some(vec!["failure", "explosion"])), &env).unwrap_err();
        assert!(e.1.contains("explosion"));
        let bad = |k: &str| (k == "HOOK").then(|| "ftp://x/s3cr3t".to_string());
        let e = check(&raw("HOOK", None, None), &bad).unwrap_err();
        assert!(!e.1.contains("s3cr3t"), "{e:?}");
    }
}
