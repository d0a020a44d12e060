//! The layout scheme's `referrer` verb. A layout has no referrers API: the
//! OCI 1.1 way to keep referrers without one is the fallback tag
//! `sha256-<hex>` (an image index of the referrers) — which a layout holds
//! like any tag, in `index.json` — so this verb answers "no API" and the
//! caller reads and writes that tag with the manifest and tag verbs (as
//! regclient's ocidir does). Never scans blobs.

use super::OciDir;
use crate::registry::referrers::ApiAnswer;
use crate::registry::{Digest, RegistryError, RepoName};

impl OciDir {
    pub(super) async fn list_referrers(
        &self,
        _repo: &RepoName,
        _digest: &Digest,
        _artifact_type: Option<&str>,
    ) -> Result<ApiAnswer, RegistryError> {
        Ok(ApiAnswer::Unsupported)
    }
}
