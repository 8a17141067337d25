//! The lure templates by name: what each is, which parameters it takes and
//! whether it needs a decoy. Manifests (`resources.rs`) name templates and
//! the catalogue (`lures/`) renders them; both depend on this, not on each
//! other.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use ruse_proto::convert::Platform;
use serde::{Deserialize, Serialize};

/// Every lure template.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Template {
    AwsCredentials,
    SshKey,
    SmbCredentials,
    Pgpass,
    MysqlCredentials,
    MssqlConnection,
    RdpFile,
    RdpCredentials,
    Netrc,
    Kubeconfig,
    EnvFile,
    PacsConfig,
    Hl7Interface,
    HostsEntry,
    PatientCsv,
    Hl7Adt,
    DicomStudy,
    FhirBundle,
    PasswordsXlsx,
    PuttySession,
    WinscpSession,
    FilezillaSites,
    MremotengConnections,
    UnattendXml,
}

impl Template {
    pub const ALL: &'static [Template] = &[
        Template::AwsCredentials,
        Template::SshKey,
        Template::SmbCredentials,
        Template::Pgpass,
        Template::MysqlCredentials,
        Template::MssqlConnection,
        Template::RdpFile,
        Template::RdpCredentials,
        Template::Netrc,
        Template::Kubeconfig,
        Template::EnvFile,
        Template::PacsConfig,
        Template::Hl7Interface,
        Template::HostsEntry,
        Template::PatientCsv,
        Template::Hl7Adt,
        Template::DicomStudy,
        Template::FhirBundle,
        Template::PasswordsXlsx,
        Template::PuttySession,
        Template::WinscpSession,
        Template::FilezillaSites,
        Template::MremotengConnections,
        Template::UnattendXml,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Template::AwsCredentials => "aws-credentials",
            Template::SshKey => "ssh-key",
            Template::SmbCredentials => "smb-credentials",
            Template::Pgpass => "pgpass",
            Template::MysqlCredentials => "mysql-credentials",
            Template::MssqlConnection => "mssql-connection",
            Template::RdpFile => "rdp-file",
            Template::RdpCredentials => "rdp-credentials",
            Template::Netrc => "netrc",
            Template::Kubeconfig => "kubeconfig",
            Template::EnvFile => "env-file",
            Template::PacsConfig => "pacs-config",
            Template::Hl7Interface => "hl7-interface",
            Template::HostsEntry => "hosts-entry",
            Template::PatientCsv => "patient-csv",
            Template::Hl7Adt => "hl7-adt",
            Template::DicomStudy => "dicom-study",
            Template::FhirBundle => "fhir-bundle",
            Template::PasswordsXlsx => "passwords-xlsx",
            Template::PuttySession => "putty-session",
            Template::WinscpSession => "winscp-session",
            Template::FilezillaSites => "filezilla-sites",
            Template::MremotengConnections => "mremoteng-connections",
            Template::UnattendXml => "unattend-xml",
        }
    }

    /// Templates whose whole point is a decoy to lead to.
    pub fn needs_decoy(self) -> bool {
        matches!(
            self,
            Template::SshKey
                | Template::SmbCredentials
                | Template::RdpFile
                | Template::PacsConfig
                | Template::HostsEntry
                | Template::PuttySession
                | Template::WinscpSession
                | Template::FilezillaSites
                | Template::MremotengConnections
        )
    }

    /// Whether the template plants on agents of `platform`: the Windows
    /// programs' settings (registry sessions, FileZilla, mRemoteNG, an
    /// answer file) only on Windows; every other template on both, at each
    /// platform's own paths. A campaign's slot of a template an agent's
    /// platform lacks is left out for that agent.
    pub fn plants_on(self, platform: Platform) -> bool {
        let windows_only = matches!(
            self,
            Template::PuttySession
                | Template::WinscpSession
                | Template::FilezillaSites
                | Template::MremotengConnections
                | Template::UnattendXml
        );
        !windows_only || platform == Platform::Windows
    }

    /// Honeyfiles: documents whose reading is the signal.
    pub fn is_honeyfile(self) -> bool {
        matches!(
            self,
            Template::PatientCsv
                | Template::Hl7Adt
                | Template::DicomStudy
                | Template::FhirBundle
                | Template::PasswordsXlsx
        )
    }

    /// Parameters the template understands.
    fn params(self) -> &'static [&'static str] {
        match self {
            Template::AwsCredentials => &["profile", "region"],
            Template::SshKey | Template::Netrc | Template::PacsConfig => &[],
            Template::SmbCredentials => &["share", "domain"],
            Template::Pgpass => &["database"],
            Template::MysqlCredentials => &["database", "file"],
            Template::MssqlConnection => &["app", "database"],
            Template::RdpFile | Template::RdpCredentials => &["domain", "file"],
            Template::Kubeconfig => &["cluster"],
            Template::EnvFile => &["app"],
            Template::Hl7Interface => &["channel"],
            Template::HostsEntry => &["domain"],
            Template::PatientCsv => &["rows", "file"],
            Template::Hl7Adt => &["messages", "file"],
            Template::DicomStudy | Template::PasswordsXlsx => &["file"],
            Template::FhirBundle => &["patients", "file"],
            Template::PuttySession | Template::WinscpSession => &["session"],
            Template::FilezillaSites => &["site"],
            Template::MremotengConnections => &["domain"],
            Template::UnattendXml => &["computer"],
        }
    }

    pub fn check_params(self, params: &BTreeMap<String, String>) -> Result<(), String> {
        for (key, value) in params {
            if !self.params().contains(&key.as_str()) {
                let known = self.params();
                return Err(if known.is_empty() {
                    format!("template {self} takes no parameters (got {key:?})")
                } else {
                    format!(
                        "unknown parameter {key:?} for {self}; expected one of {}",
                        known.join(", ")
                    )
                });
            }
            if value.is_empty()
                || value.len() > 128
                || value
                    .chars()
                    .any(|c| ruse_proto::types::hides_text(c) || c == '/' || c == '\\')
            {
                return Err(format!(
                    "parameter {key:?}: 1 to 128 characters, no '/', '\\', control, bidirectional or invisible characters"
                ));
            }
            if matches!(key.as_str(), "rows" | "messages" | "patients") {
                let n: u32 = value
                    .parse()
                    .map_err(|_| format!("parameter {key:?} must be a number"))?;
                if !(1..=1000).contains(&n) {
                    return Err(format!("parameter {key:?} must be between 1 and 1000"));
                }
            }
        }
        Ok(())
    }
}

impl FromStr for Template {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Template::ALL
            .iter()
            .copied()
            .find(|t| t.as_str() == s)
            .ok_or_else(|| {
                let names: Vec<_> = Template::ALL.iter().map(|t| t.as_str()).collect();
                format!(
                    "unknown template {s:?}; expected one of {}",
                    names.join(", ")
                )
            })
    }
}

impl fmt::Display for Template {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}
