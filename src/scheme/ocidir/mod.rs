//! placeholder
use crate::registry::{RegistryError, RegistryUrl};
pub struct OciDir;
impl OciDir {
    pub fn new(url: &RegistryUrl, _create: bool) -> Result<OciDir, RegistryError> {
        Err(RegistryError::Protocol { registry: url.to_string(), message: "OCI layouts are not supported yet".into() })
    }
}
