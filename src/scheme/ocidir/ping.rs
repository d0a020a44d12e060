//! The layout scheme's `ping`: the directory is there and usable — a
//! source must exist and be a readable directory; a destination is created
//! when missing and must take a file. Never writes anything else.

use super::{OciDir, blocking};
use crate::registry::RegistryError;

impl OciDir {
    pub(super) async fn check(&self) -> Result<(), RegistryError> {
        let root = self.root.clone();
        let writable = self.writable;
        let probe = root.join(format!(".regferry-probe.{}", std::process::id()));
        let result = blocking(move || -> Result<(), (std::path::PathBuf, std::io::Error)> {
            if writable {
                std::fs::create_dir_all(&root).map_err(|e| (root.clone(), e))?;
                std::fs::write(&probe, b"").map_err(|e| (probe.clone(), e))?;
                std::fs::remove_file(&probe).map_err(|e| (probe.clone(), e))?;
            }
            let meta = std::fs::metadata(&root).map_err(|e| (root.clone(), e))?;
            if !meta.is_dir() {
                return Err((root, std::io::Error::other("not a directory")));
            }
            std::fs::read_dir(&root).map_err(|e| (root.clone(), e))?;
            Ok(())
        })
        .await;
        result.map_err(|(path, e)| self.io(&path, &e))
    }
}
