//! Where things live under the controller's data directory.
//!
//! ```text
//! <data>/pki/ca.pem            CA certificate
//! <data>/pki/ca-key.pem        CA key (0600)
//! <data>/store/                the embedded store
//! <data>/admin/                credentials of the first admin, and the
//!                              rusectl context file pointing at them
//! ```

use std::path::{Path, PathBuf};

pub fn ca_cert(data: &Path) -> PathBuf {
    data.join("pki").join("ca.pem")
}

pub fn ca_key(data: &Path) -> PathBuf {
    data.join("pki").join("ca-key.pem")
}

pub fn store(data: &Path) -> PathBuf {
    data.join("store")
}

pub fn admin_dir(data: &Path) -> PathBuf {
    data.join("admin")
}

pub fn context_file(data: &Path) -> PathBuf {
    admin_dir(data).join("rusectl.toml")
}
