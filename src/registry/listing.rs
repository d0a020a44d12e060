//! Discovery requests: the catalog and tag lists, following `Link` paging.
//!
//! Names come back as the registry wrote them; validating them is the
//! caller's job, so that one bad name fails one item, not the listing.

use reqwest::header;
use reqwest::{Method, Response};
use serde::Deserialize;
use url::Url;

use super::auth::Scopes;
use super::client::{Request, RegistryClient, read_limited};
use super::error::RegistryError;
use super::name::RepoName;

/// Page size asked of the registry (it may send fewer).
const PAGE: usize = 1000;
/// A hard stop against registries whose `Link` loops.
const MAX_PAGES: usize = 100_000;

#[derive(Deserialize)]
struct CatalogPage {
    #[serde(default)]
    repositories: Option<Vec<String>>,
}

#[derive(Deserialize)]
struct TagsPage {
    #[serde(default)]
    tags: Option<Vec<String>>,
}

/// The `rel="next"` target of a `Link` header, resolved against `current`.
fn next_link(resp: &Response, current: &Url) -> Option<Url> {
    for value in resp.headers().get_all(header::LINK) {
        let Ok(v) = value.to_str() else { continue };
        for part in v.split(',') {
            let mut pieces = part.split(';');
            let target = pieces.next()?.trim();
            let is_next = pieces.any(|p| {
                let p = p.trim().replace(' ', "");
                p == "rel=\"next\"" || p == "rel=next"
            });
            if is_next {
                let target = target.trim_start_matches('<').trim_end_matches('>');
                return current.join(target).ok();
            }
        }
    }
    None
}

impl RegistryClient {
    /// Every repository in the registry's catalog.
    pub async fn catalog(&self) -> Result<Vec<String>, RegistryError> {
        let mut url = self.endpoint_url("/v2/_catalog");
        url.query_pairs_mut().append_pair("n", &PAGE.to_string());
        self.paged(url, Scopes::catalog(), |body| {
            serde_json::from_slice::<CatalogPage>(body).map(|p| p.repositories.unwrap_or_default())
        })
        .await
    }

    /// Every tag of `repo`.
    pub async fn tags(&self, repo: &RepoName) -> Result<Vec<String>, RegistryError> {
        let mut url = self.endpoint_url(&format!("/v2/{repo}/tags/list"));
        url.query_pairs_mut().append_pair("n", &PAGE.to_string());
        self.paged(url, Scopes::pull(repo), |body| {
            serde_json::from_slice::<TagsPage>(body).map(|p| p.tags.unwrap_or_default())
        })
        .await
    }

    async fn paged(
        &self,
        first: Url,
        scopes: Scopes,
        parse: impl Fn(&[u8]) -> Result<Vec<String>, serde_json::Error>,
    ) -> Result<Vec<String>, RegistryError> {
        let mut out = Vec::new();
        let mut next = Some(first);
        let mut pages = 0;
        while let Some(url) = next.take() {
            pages += 1;
            let resp = self.send(&Request::new(Method::GET, url.clone(), scopes.clone())).await?;
            // Relative to the URL that answered (the listing may have been
            // redirected to another origin).
            let answered = resp.url().clone();
            let following = next_link(&resp, &answered).filter(|n| *n != url && *n != answered);
            let body = read_limited(resp, 64 * 1024 * 1024).await?;
            let items = parse(&body).map_err(|e| RegistryError::Protocol {
                registry: self.name().to_string(),
                message: format!("GET {}: unreadable listing: {e}", url.path()),
            })?;
            out.extend(items);
            if pages < MAX_PAGES {
                next = following;
            }
        }
        Ok(out)
    }
}
