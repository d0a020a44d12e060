//! Discovery requests: the catalog and tag lists, following `Link` paging.
//!
//! Names come back as the registry wrote them; validating them is the
//! caller's job, so that one bad name fails one item, not the listing.
//! A registry that refuses the page size asked for (`400
//! PAGINATION_NUMBER_INVALID`, e.g. distribution with a `catalog:
//! maxentries` below it) is asked again without one (its own default),
//! then with smaller sizes, until it accepts.

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
/// Page sizes tried, in order, after the registry refused [`PAGE`]
/// (`None`: no `n` at all, the registry's default).
const FALLBACK_PAGES: [Option<usize>; 6] = [None, Some(500), Some(100), Some(50), Some(10), Some(1)];

/// `url` with its `n` parameter replaced by `page` (removed for `None`).
fn with_page(url: &Url, page: Option<usize>) -> Url {
    let mut out = url.clone();
    let kept: Vec<(String, String)> = url.query_pairs().filter(|(k, _)| k != "n").map(|(k, v)| (k.into_owned(), v.into_owned())).collect();
    out.set_query(None);
    if !kept.is_empty() || page.is_some() {
        let mut q = out.query_pairs_mut();
        for (k, v) in &kept {
            q.append_pair(k, v);
        }
        if let Some(n) = page {
            q.append_pair("n", &n.to_string());
        }
    }
    out
}

/// The registry refused the page size (and only that).
fn page_refused(e: &RegistryError) -> bool {
    e.has_code("PAGINATION_NUMBER_INVALID") || (e.status() == Some(400) && !e.has_code("NAME_INVALID"))
}

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
pub(super) fn next_link(resp: &Response, current: &Url) -> Option<Url> {
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
        self.tags_with(repo, Scopes::pull(repo)).await
    }

    /// Every tag of `repo`, asking for `scopes` (a run about to push to
    /// `repo` asks for push at once: one token for the repository).
    pub async fn tags_with(&self, repo: &RepoName, scopes: Scopes) -> Result<Vec<String>, RegistryError> {
        let mut url = self.endpoint_url(&format!("/v2/{repo}/tags/list"));
        url.query_pairs_mut().append_pair("n", &PAGE.to_string());
        self.paged(url, scopes, |body| {
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
        let mut fallbacks = FALLBACK_PAGES.iter();
        while let Some(mut url) = next.take() {
            pages += 1;
            let resp = loop {
                match self.send(&Request::new(Method::GET, url.clone(), scopes.clone())).await {
                    Ok(resp) => break resp,
                    Err(e) if url.query_pairs().any(|(k, _)| k == "n") && page_refused(&e) => {
                        // Any page that names a size (ours, or one a `Link`
                        // carries) may be refused; the smaller sizes tried
                        // are shared by the whole listing.
                        let Some(&page) = fallbacks.next() else { return Err(e) };
                        let asked = url.query_pairs().find(|(k, _)| k == "n").map(|(_, v)| v.into_owned()).unwrap_or_default();
                        tracing::debug!(registry = %self.name(), path = url.path(), refused = %asked, next = ?page, "page size refused; asking again");
                        url = with_page(&url, page);
                    }
                    Err(e) => return Err(e),
                }
            };
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_parameter_is_replaced_or_dropped() {
        let u = Url::parse("http://r/v2/_catalog?last=a%2Fb&n=1000").unwrap();
        assert_eq!(with_page(&u, Some(50)).as_str(), "http://r/v2/_catalog?last=a%2Fb&n=50");
        assert_eq!(with_page(&u, None).as_str(), "http://r/v2/_catalog?last=a%2Fb");
        let u = Url::parse("http://r/v2/_catalog?n=1000").unwrap();
        assert_eq!(with_page(&u, None).as_str(), "http://r/v2/_catalog");
    }
}
