//! The lure catalogue: templates, the material that makes each lure
//! instance unique, and rendering to the files an agent plants.
//!
//! Invariants:
//! - **Secrets come from the operating system's generator** (passwords,
//!   keys, tokens, AE titles); only fake content (patients, dates) comes
//!   from the instance's seed.
//! - **Rendering is a pure function** of the template, the instance's
//!   material, the campaign's lure slot and the decoy, so a lure can be
//!   rendered again at any time and gives the same bytes.

mod databases;
mod dicom;
pub mod fake;
mod rdp;
pub mod readers;
mod windows;
mod xlsx;

use std::time::Duration;

use ruse_proto::convert::Platform;
use ruse_proto::spec::{LureSpec, PlantFile, PlantKey, PlantMode};
use ruse_proto::types::{UnixMs, random_bytes};

use self::fake::{Patient, Rng};
use crate::model::{Decoy, LureSlot};
pub use crate::model::{Material, Template};

/// Why material or a rendering failed.
#[derive(Debug, thiserror::Error)]
pub enum LureError {
    #[error("ssh key generation failed: {0}")]
    SshKey(String),
    #[error("{template}: {reason}")]
    Render { template: Template, reason: String },
}

/// Random characters (5 bits each) in usernames, AE titles, HL7
/// applications and host aliases: 40 bits. AE titles stay within DICOM's
/// 16 characters (6-letter prefixes).
const MATCHED_TAIL: usize = 8;
const LOWER_ALNUM: &[u8] = b"abcdefghijkmnpqrstuvwxyz23456789";
const UPPER_ALNUM: &[u8] = b"ABCDEFGHJKLMNPQRSTUVWXYZ23456789";
const PASSWORD: &[u8] = b"abcdefghijkmnopqrstuvwxyzABCDEFGHJKLMNPQRSTUVWXYZ23456789!#%+=";
const BASE64ISH: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
const AWS_KEY: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";

/// `n` characters drawn uniformly from `alphabet` (at most 256 long):
/// bytes at or above the largest multiple of its length are discarded, so
/// no character is likelier than another (a bias real keys do not have).
fn secret_string(alphabet: &[u8], n: usize) -> String {
    let len = alphabet.len().clamp(1, 256);
    let limit = 256 - 256 % len;
    let mut out = String::with_capacity(n);
    let mut bytes = [0u8; 64];
    while out.len() < n {
        // Enough for what is left with a margin for discards, not a whole
        // 64 bytes for a 4-character tail.
        let need = n - out.len();
        let take = (need + need / 4 + 4).min(bytes.len());
        random_bytes(&mut bytes[..take]);
        for b in bytes[..take]
            .iter()
            .map(|b| usize::from(*b))
            .filter(|b| *b < limit)
        {
            if out.len() == n {
                break;
            }
            out.push(char::from(alphabet[b % len]));
        }
    }
    out
}

fn seed() -> u64 {
    let mut bytes = [0u8; 8];
    random_bytes(&mut bytes);
    u64::from_le_bytes(bytes)
}

const PASSWORD_WORDS: &[&str] = &[
    "Winter",
    "Summer",
    "Radiology",
    "Pacs",
    "Welcome",
    "Spring",
    "Hospital",
    "Imaging",
    "Backup",
];

/// A realistic password: words and digits the way people pick them, with a
/// tail from the operating system's generator so every instance differs.
fn password(rng: &mut Rng) -> String {
    format!(
        "{}{}{}",
        rng.pick(PASSWORD_WORDS),
        2020 + rng.below(7),
        secret_string(PASSWORD, 6)
    )
}

/// `s` as a URL's user information carries it: every byte but the
/// unreserved ones (RFC 3986) percent-encoded.
fn url_encoded(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                char::from(b).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// `s` as XML text or an attribute value (quoted with `"`).
fn xml_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// The same shape of password, entirely from the seed: for filler content
/// that must render identically every time.
fn filler_password(rng: &mut Rng) -> String {
    let tail: String = (0..6)
        .map(|_| {
            char::from(PASSWORD[usize::try_from(rng.below(PASSWORD.len() as u64)).unwrap_or(0)])
        })
        .collect();
    format!("{}{}{tail}", rng.pick(PASSWORD_WORDS), 2020 + rng.below(7))
}

impl Material {
    /// New, unique material for one instance of `template`.
    pub fn generate(template: Template) -> Result<Self, LureError> {
        let seed = seed();
        let mut rng = Rng::new(seed);
        // Every identifier a decoy matches on carries 40 random bits: a
        // compromised decoy host that forges logins to blame a host must
        // guess among 2^40 per prefix, 35 years at its event quota.
        let tail = secret_string(LOWER_ALNUM, MATCHED_TAIL);
        let mut m = Material {
            seed,
            ..Material::default()
        };
        match template {
            Template::AwsCredentials => {
                m.key_id = format!("AKIA{}", secret_string(AWS_KEY, 16));
                m.secret = secret_string(BASE64ISH, 40);
            }
            Template::SshKey => {
                const USERS: &[&str] = &[
                    "pacsadmin",
                    "svc_pacs",
                    "dicom",
                    "radiology",
                    "backup",
                    "imgsvc",
                ];
                m.username = format!("{}{tail}", rng.pick(USERS));
                let comment = format!(
                    "{}@{}",
                    m.username,
                    rng.pick(&["rad-ws", "pacs-gw", "img-svc", "it-jump"])
                );
                let key = ssh_key::PrivateKey::random(
                    &mut ssh_key::rand_core::OsRng,
                    ssh_key::Algorithm::Ed25519,
                )
                .map_err(|e| LureError::SshKey(e.to_string()))?;
                let mut key = key;
                key.set_comment(&comment);
                m.ssh_private_key = key
                    .to_openssh(ssh_key::LineEnding::LF)
                    .map_err(|e| LureError::SshKey(e.to_string()))?
                    .to_string();
                m.ssh_public_key = key
                    .public_key()
                    .to_openssh()
                    .map_err(|e| LureError::SshKey(e.to_string()))?;
                m.fingerprint = key
                    .public_key()
                    .fingerprint(ssh_key::HashAlg::Sha256)
                    .to_string();
            }
            Template::SmbCredentials => {
                m.username = format!("svc_scan{tail}");
                m.password = password(&mut rng);
            }
            Template::Pgpass | Template::EnvFile | Template::Hl7Interface => {
                const USERS: &[&str] =
                    &["ehr_ro", "hl7_engine", "lis_app", "report_svc", "ehr_etl"];
                m.username = format!("{}_{tail}", rng.pick(USERS));
                m.password = password(&mut rng);
                m.secret = secret_string(BASE64ISH, 32);
                if template == Template::Hl7Interface {
                    const APPS: &[&str] = &["ADTHUB", "REGFEED", "PASADT"];
                    m.application = format!(
                        "{}{}",
                        rng.pick(APPS),
                        secret_string(UPPER_ALNUM, MATCHED_TAIL)
                    );
                }
            }
            Template::MssqlConnection => {
                const USERS: &[&str] = &["ehr_app", "svc_reporting", "lab_sync", "pharm_app"];
                m.username = format!("{}_{tail}", rng.pick(USERS));
                m.password = password(&mut rng);
            }
            Template::RdpFile | Template::RdpCredentials => {
                const USERS: &[&str] = &["rad.admin", "svc_rdp", "it.support", "clin.admin"];
                m.username = format!("{}{tail}", rng.pick(USERS));
                m.password = password(&mut rng);
            }
            Template::MysqlCredentials => {
                const USERS: &[&str] = &["lis_app", "lis_ro", "pharm_ro", "lab_etl", "ris_report"];
                m.username = format!("{}_{tail}", rng.pick(USERS));
                m.password = password(&mut rng);
            }
            Template::Netrc => {
                m.username = format!("pacsftp{tail}");
                m.password = password(&mut rng);
            }
            Template::Kubeconfig => {
                m.username = format!("imaging-deployer-{tail}");
                m.secret = format!("eyJhbGciOiJSUzI1NiIs{}", secret_string(BASE64ISH, 48));
            }
            Template::PacsConfig => {
                const PREFIXES: &[&str] = &["RADWS", "READRM", "CTCONS", "MRVIEW", "ORVIEW"];
                m.ae_title = format!(
                    "{}{}",
                    rng.pick(PREFIXES),
                    secret_string(UPPER_ALNUM, MATCHED_TAIL)
                );
            }
            Template::PasswordsXlsx => {
                m.username = format!("pacs.admin{tail}");
                m.password = password(&mut rng);
            }
            Template::HostsEntry => {
                // A host alias of its own, so a lookup of it names the
                // machine the entry was read on.
                const ALIASES: &[&str] = &["pacs-bkp", "img-arch", "rad-store", "dcm-node"];
                m.username = format!("{}-{tail}", rng.pick(ALIASES));
            }
            Template::Hl7Adt => {
                const APPS: &[&str] = &["REGADT", "PASADT", "ADTHUB"];
                m.application = format!(
                    "{}{}",
                    rng.pick(APPS),
                    secret_string(UPPER_ALNUM, MATCHED_TAIL)
                );
            }
            Template::PuttySession | Template::WinscpSession | Template::FilezillaSites => {
                const USERS: &[&str] = &["pacsadmin", "svc_transfer", "imgsync", "radsupport"];
                m.username = format!("{}{tail}", rng.pick(USERS));
                m.password = password(&mut rng);
            }
            Template::MremotengConnections => {
                const USERS: &[&str] = &["adm.rad", "it.helpdesk", "svc_mremote", "adm.pacs"];
                m.username = format!("{}{tail}", rng.pick(USERS));
                m.password = password(&mut rng);
            }
            Template::UnattendXml => {
                // The local account a build image creates on every
                // workstation: what an intruder tries on the next host.
                const USERS: &[&str] = &["localadmin", "ws-admin", "deploy", "itsupport"];
                m.username = format!("{}{tail}", rng.pick(USERS));
                m.password = password(&mut rng);
            }
            Template::PatientCsv | Template::DicomStudy | Template::FhirBundle => {}
        }
        Ok(m)
    }

    /// The identifiers a decoy can see, for the registry listing.
    pub fn summary(&self) -> String {
        let mut parts = Vec::new();
        if !self.username.is_empty() {
            parts.push(format!("user={}", self.username));
        }
        if !self.key_id.is_empty() {
            parts.push(format!("key_id={}", self.key_id));
        }
        if !self.fingerprint.is_empty() {
            parts.push(format!("key={}", self.fingerprint));
        }
        if !self.ae_title.is_empty() {
            parts.push(format!("ae={}", self.ae_title));
        }
        parts.join(" ")
    }
}

/// Everything a rendering depends on.
#[derive(Debug, Clone, Copy)]
pub struct RenderInput<'a> {
    pub slot: &'a LureSlot,
    pub material: &'a Material,
    pub decoy: Option<&'a Decoy>,
    /// When the instance was created; file times are backdated from it.
    pub created: UnixMs,
    /// The agent's platform: where the files go.
    pub platform: Platform,
}

/// Renders a lure instance to the files the agent plants.
pub fn render(input: RenderInput<'_>) -> Result<LureSpec, LureError> {
    let template = input.slot.template;
    let mut r = Renderer {
        input,
        rng: Rng::new(input.material.seed),
        files: Vec::new(),
        keys: Vec::new(),
    };
    r.render()?;
    Ok(LureSpec {
        template: template.to_string(),
        files: r.files,
        keys: r.keys,
    })
}

struct Renderer<'a> {
    input: RenderInput<'a>,
    rng: Rng,
    files: Vec<PlantFile>,
    keys: Vec<PlantKey>,
}

impl Renderer<'_> {
    fn template(&self) -> Template {
        self.input.slot.template
    }

    fn m(&self) -> &Material {
        self.input.material
    }

    fn windows(&self) -> bool {
        self.input.platform == Platform::Windows
    }

    /// `linux` or, on Windows agents, `windows`: a default path where the
    /// platforms' programs keep the same thing in different places.
    fn at<'p>(&self, linux: &'p str, windows: &'p str) -> &'p str {
        if self.windows() { windows } else { linux }
    }

    fn param(&self, key: &str) -> Option<&str> {
        self.input.slot.params.get(key).map(String::as_str)
    }

    fn err(&self, reason: impl Into<String>) -> LureError {
        LureError::Render {
            template: self.template(),
            reason: reason.into(),
        }
    }

    /// 30 to 400 days before the instance was created.
    fn mtime(&self) -> i64 {
        let days = 30 + self.m().seed % 370;
        self.input
            .created
            .saturating_sub(Duration::from_secs(
                days * 86_400 + (self.m().seed >> 20) % 86_400,
            ))
            .0
    }

    /// The decoy's address, and its port for `protocol` (or `default`).
    fn decoy(&self, protocol: &str, default: u16) -> Option<(String, String, u16)> {
        self.input.decoy.map(|d| {
            (
                d.name.clone(),
                d.address.clone(),
                d.port(protocol).unwrap_or(default),
            )
        })
    }

    /// The file path: the slot's `path` if given, else `default`.
    fn file_path(&self, default: &str) -> String {
        self.input
            .slot
            .path
            .clone()
            .unwrap_or_else(|| default.to_owned())
    }

    /// A file in the slot's directory (`path`), named by `file` or `default`.
    fn dir_file(&self, default_dir: &str, default_name: String) -> String {
        let dir = self.input.slot.path.as_deref().unwrap_or(default_dir);
        let name = self
            .param("file")
            .map(str::to_owned)
            .unwrap_or(default_name);
        format!("{}/{}", dir.trim_end_matches('/'), name)
    }

    fn whole(&mut self, path: String, content: Vec<u8>, permissions: u32) {
        let mtime = self.mtime();
        self.files.push(PlantFile {
            path,
            content,
            mode: PlantMode::WholeFile,
            permissions,
            mtime_ms: mtime,
            ordinary_readers: Vec::new(),
        });
    }

    /// A block in a shared file, whose `readers` read it as a matter of
    /// course (see [`readers`]).
    fn block(&mut self, path: String, content: String, permissions: u32, readers: &[&str]) {
        let mtime = self.mtime();
        self.files.push(PlantFile {
            path,
            content: content.into_bytes(),
            mode: PlantMode::Block,
            permissions,
            mtime_ms: mtime,
            ordinary_readers: readers.iter().map(|r| (*r).to_owned()).collect(),
        });
    }

    /// A random (version 4) UUID from the instance's seed.
    fn uuid(&mut self) -> String {
        format!(
            "{:08x}-{:04x}-4{:03x}-a{:03x}-{:012x}",
            self.rng.next_u64() as u32,
            self.rng.below(0xffff),
            self.rng.below(0xfff),
            self.rng.below(0xfff),
            self.rng.next_u64() & 0xffff_ffff_ffff
        )
    }

    /// Where an application's source checkout lives: `~/projects/APP`, or
    /// Visual Studio's `~/source/repos/APP` on Windows.
    fn projects(&self, app: &str) -> String {
        format!("{}/{app}", self.at("~/projects", "~/source/repos"))
    }

    fn date(&self) -> String {
        UnixMs(self.mtime()).rfc3339()[..10].to_owned()
    }

    fn render(&mut self) -> Result<(), LureError> {
        match self.template() {
            Template::AwsCredentials => {
                const PROFILES: &[&str] = &[
                    "pacs-archive",
                    "imaging-backup",
                    "ehr-prod-readonly",
                    "lab-results-export",
                ];
                let profile = self
                    .param("profile")
                    .map(str::to_owned)
                    .unwrap_or_else(|| self.rng.pick(PROFILES).to_string());
                let region = self.param("region").unwrap_or("us-east-1").to_owned();
                let text = format!(
                    "[{profile}]\naws_access_key_id = {}\naws_secret_access_key = {}\nregion = {region}\n",
                    self.m().key_id,
                    self.m().secret
                );
                self.block(
                    self.file_path("~/.aws/credentials"),
                    text,
                    0o600,
                    readers::AWS,
                );
            }
            Template::SshKey => {
                let (name, address, port) = self
                    .decoy("ssh", 22)
                    .ok_or_else(|| self.err("needs a decoy"))?;
                let key_path = self.file_path(&format!("~/.ssh/id_ed25519_{name}"));
                let mut entry = format!("Host {name}\n    HostName {address}\n");
                if port != 22 {
                    entry.push_str(&format!("    Port {port}\n"));
                }
                entry.push_str(&format!(
                    "    User {}\n    IdentityFile {key_path}\n    IdentitiesOnly yes\n",
                    self.m().username
                ));
                let private = self.m().ssh_private_key.clone().into_bytes();
                let public = format!("{}\n", self.m().ssh_public_key).into_bytes();
                self.whole(key_path.clone(), private, 0o600);
                self.whole(format!("{key_path}.pub"), public, 0o644);
                self.block("~/.ssh/config".into(), entry, 0o600, readers::SSH_CONFIG);
            }
            Template::SmbCredentials => {
                let (name, address, _) = self
                    .decoy("smb", 445)
                    .ok_or_else(|| self.err("needs a decoy"))?;
                const SHARES: &[&str] = &["PACS_Archive", "Radiology", "Scans", "LabResults"];
                let share = self
                    .param("share")
                    .map(str::to_owned)
                    .unwrap_or_else(|| self.rng.pick(SHARES).to_string());
                let domain = self.param("domain").unwrap_or("HOSPITAL").to_owned();
                let creds = format!(
                    "username={}\npassword={}\ndomain={domain}\n",
                    self.m().username,
                    self.m().password
                );
                if self.windows() {
                    // Windows keeps mapped drives' passwords encrypted; what
                    // lies around in the open is the script that maps them.
                    let script = format!(
                        "@echo off\r\nrem Map the {share} share on {name} (scanner service account)\r\nnet use S: \\\\{address}\\{share} /user:{domain}\\{} \"{}\" /persistent:yes\r\n",
                        self.m().username,
                        self.m().password
                    );
                    self.whole(
                        self.file_path("~/Documents/Scripts/map-drives.cmd"),
                        script.into_bytes(),
                        0o600,
                    );
                } else {
                    self.whole(
                        self.file_path("~/.smbcredentials"),
                        creds.into_bytes(),
                        0o600,
                    );
                    self.block(
                        "~/.config/gtk-3.0/bookmarks".into(),
                        format!("smb://{address}/{share} {share} on {name}\n"),
                        0o644,
                        readers::EVERY,
                    );
                }
            }
            Template::Pgpass => {
                let (_, host, port) = self
                    .decoy("postgres", 5432)
                    .unwrap_or_else(|| ("".into(), "ehr-db01".into(), 5432));
                let db = self.param("database").unwrap_or("ehr_reporting").to_owned();
                let line = format!(
                    "{host}:{port}:{db}:{}:{}\n",
                    self.m().username,
                    self.m().password
                );
                let path = self.at("~/.pgpass", "~/AppData/Roaming/postgresql/pgpass.conf");
                self.block(self.file_path(path), line, 0o600, readers::PGPASS);
            }
            Template::MysqlCredentials => self.mysql_credentials(),
            Template::Netrc => {
                let (_, host, _) = self
                    .decoy("ftp", 21)
                    .unwrap_or_else(|| ("".into(), "pacs-ftp01".into(), 21));
                let entry = format!(
                    "machine {host}\n  login {}\n  password {}\n",
                    self.m().username,
                    self.m().password
                );
                // curl and Git for Windows read `_netrc` there.
                let path = self.at("~/.netrc", "~/_netrc");
                self.block(self.file_path(path), entry, 0o600, readers::NETRC);
            }
            Template::Kubeconfig => {
                // The decoy's Kubernetes API if it runs one, else its HTTPS.
                let protocol = match self.input.decoy {
                    Some(d) if d.port("kube-apiserver").is_some() => "kube-apiserver",
                    _ => "https",
                };
                let (_, host, port) = self
                    .decoy(protocol, 6443)
                    .unwrap_or_else(|| ("".into(), "k8s-imaging.internal".into(), 6443));
                let cluster = self.param("cluster").unwrap_or("imaging-prod").to_owned();
                let user = self.m().username.clone();
                let text = format!(
                    "apiVersion: v1\nkind: Config\nclusters:\n- cluster:\n    server: https://{host}:{port}\n    insecure-skip-tls-verify: true\n  name: {cluster}\ncontexts:\n- context:\n    cluster: {cluster}\n    namespace: pacs\n    user: {user}\n  name: {cluster}\ncurrent-context: {cluster}\nusers:\n- name: {user}\n  user:\n    token: {}\n",
                    self.m().secret
                );
                self.whole(
                    self.file_path(&format!("~/.kube/{cluster}.kubeconfig")),
                    text.into_bytes(),
                    0o600,
                );
            }
            Template::MssqlConnection => self.mssql_connection()?,
            Template::RdpFile => self.rdp_file()?,
            Template::RdpCredentials => self.rdp_credentials(),
            Template::EnvFile => {
                let (_, host, port) = self
                    .decoy("https", 443)
                    .unwrap_or_else(|| ("".into(), "ehr-api.internal".into(), 443));
                let app = self.param("app").unwrap_or("ehr-integration").to_owned();
                let m = self.m();
                let text = format!(
                    "# {app} production settings\nAPP_ENV=production\nDATABASE_URL=postgres://{}:{}@{host}:5432/{}\nFHIR_BASE_URL=https://{host}:{port}/fhir/R4\nFHIR_CLIENT_ID={app}\nFHIR_CLIENT_SECRET={}\nLOG_LEVEL=info\n",
                    m.username,
                    // Percent-encoded: a `#`, `%` or `+` in it would break
                    // the URL (and a `#` start a comment in some dotenv
                    // readers), and whoever uses it would send a cut one.
                    url_encoded(&m.password),
                    app.replace('-', "_"),
                    m.secret
                );
                let dir = self.projects(&app);
                let path = self.dir_file(&dir, ".env".into());
                self.whole(path, text.into_bytes(), 0o600);
            }
            Template::PacsConfig => {
                let (name, address, port) = self
                    .decoy("dicom", 104)
                    .ok_or_else(|| self.err("needs a decoy"))?;
                let called = ruse_proto::types::dicom_ae_title(&name);
                let text = format!(
                    "; DICOM network nodes\n[Local]\nAETitle={ae}\nPort=11112\n\n[Node:{called}]\nDescription=Radiology long-term archive\nAETitle={called}\nHost={address}\nPort={port}\nCallingAETitle={ae}\nTLS=false\nQueryRetrieve=CMOVE\n",
                    ae = self.m().ae_title
                );
                let path = self.at(
                    "~/.config/pacs-viewer/nodes.ini",
                    "~/AppData/Roaming/PacsViewer/nodes.ini",
                );
                self.whole(self.file_path(path), text.into_bytes(), 0o644);
            }
            Template::Hl7Interface => {
                let (_, host, port) = self
                    .decoy("hl7", 2575)
                    .unwrap_or_else(|| ("".into(), "hl7-engine01".into(), 2575));
                let channel = self.param("channel").unwrap_or("ADT_Inbound").to_owned();
                let id = self.uuid();
                let m = self.m();
                let text = format!(
                    "<channel version=\"4.5.0\">\n  <id>{id}</id>\n  <name>{channel}</name>\n  <description>ADT feed from registration to EHR and LIS</description>\n  <enabled>true</enabled>\n  <sourceConnector>\n    <transportName>TCP Listener</transportName>\n    <properties class=\"com.mirth.connect.connectors.tcp.TcpReceiverProperties\">\n      <listenerConnectorProperties><host>0.0.0.0</host><port>6661</port></listenerConnectorProperties>\n    </properties>\n  </sourceConnector>\n  <destinationConnectors>\n    <connector>\n      <name>EHR database writer</name>\n      <properties class=\"com.mirth.connect.connectors.jdbc.DatabaseDispatcherProperties\">\n        <driver>org.postgresql.Driver</driver>\n        <url>jdbc:postgresql://{host}:5432/ehr</url>\n        <username>{}</username>\n        <password>{}</password>\n      </properties>\n    </connector>\n    <connector>\n      <name>Forward to LIS</name>\n      <properties class=\"com.mirth.connect.connectors.tcp.TcpDispatcherProperties\">\n        <remoteAddress>{host}</remoteAddress>\n        <remotePort>{port}</remotePort>\n        <transmissionModeProperties><pluginPointName>MLLP</pluginPointName></transmissionModeProperties>\n        <template>MSH|^~\\&amp;|{app}|GENHOSP|LIS|LAB|||ADT^A01^ADT_A01||P|2.5.1</template>\n      </properties>\n    </connector>\n  </destinationConnectors>\n</channel>\n",
                    m.username,
                    m.password,
                    app = if m.application.is_empty() {
                        "REGADT"
                    } else {
                        m.application.as_str()
                    }
                );
                let dir = self.at("~/interfaces/channels", "~/Documents/Interfaces/channels");
                let path = self.dir_file(dir, format!("{channel}.xml"));
                self.whole(path, text.into_bytes(), 0o640);
            }
            Template::HostsEntry => {
                let (name, address, _) =
                    self.decoy("", 0).ok_or_else(|| self.err("needs a decoy"))?;
                if address.parse::<std::net::IpAddr>().is_err() {
                    return Err(self.err(format!(
                        "decoy {name} needs an IP address (its address is {address:?})"
                    )));
                }
                let domain = self.param("domain").unwrap_or("hospital.local").to_owned();
                let alias = self.m().username.clone();
                let path = self.at("/etc/hosts", "/Windows/System32/drivers/etc/hosts");
                let end = self.at("\n", "\r\n");
                self.block(
                    self.file_path(path),
                    format!("{address}\t{name}.{domain} {name} {alias}{end}"),
                    0o644,
                    readers::EVERY,
                );
            }
            Template::PatientCsv => {
                let rows: u32 = self
                    .param("rows")
                    .and_then(|r| r.parse().ok())
                    .unwrap_or(40);
                let mut text = String::from(
                    "MRN,LastName,FirstName,DOB,Sex,Address,City,State,ZIP,Phone,AdmitDate,Ward,Attending,DxCode,Diagnosis\n",
                );
                let admit = self.date();
                for _ in 0..rows {
                    let p = Patient::generate(&mut self.rng);
                    text.push_str(&format!(
                        "{},{},{},{},{},{},{},{},{},{},{admit},{},\"{}\",{},\"{}\"\n",
                        p.mrn,
                        p.last,
                        p.first,
                        p.birth_iso(),
                        p.sex,
                        p.street,
                        p.city,
                        p.state,
                        p.zip,
                        p.phone,
                        p.ward,
                        p.physician.replace('^', ", "),
                        p.diagnosis.0,
                        p.diagnosis.1
                    ));
                }
                let ward = self.rng.pick(fake::WARDS);
                let path = self.dir_file(
                    "~/Documents/Exports",
                    format!("patients_{ward}_{}.csv", self.date()),
                );
                self.whole(path, text.into_bytes(), 0o644);
            }
            Template::Hl7Adt => {
                let count: u32 = self
                    .param("messages")
                    .and_then(|r| r.parse().ok())
                    .unwrap_or(5);
                let ts = self.date().replace('-', "");
                let mut text = String::new();
                // Instances made before lures carried an application keep the old one.
                let app = if self.m().application.is_empty() {
                    "REGADT".to_owned()
                } else {
                    self.m().application.clone()
                };
                for i in 0..count {
                    let p = Patient::generate(&mut self.rng);
                    let control = format!("{}{}", ts, self.rng.digits(6));
                    text.push_str(&format!(
                        "MSH|^~\\&|{app}|GENHOSP|EHR|GENHOSP|{ts}{:02}{:02}00||ADT^A01^ADT_A01|{control}|P|2.5.1\rEVN|A01|{ts}{:02}{:02}00\rPID|1||{}^^^GENHOSP^MR||{}^{}||{}|{}|||{}^^{}^{}^{}||{}\rPV1|1|I|{}^{}^1|E|||{}|||||||||||{}\rDG1|1||{}^{}^I10\r\n",
                        8 + i % 10, (i * 7) % 60, 8 + i % 10, (i * 7) % 60,
                        p.mrn, p.last.to_uppercase(), p.first.to_uppercase(), p.birth_compact(), p.sex,
                        p.street, p.city, p.state, p.zip, p.phone,
                        p.ward, 100 + i, p.physician, self.rng.digits(8), p.diagnosis.0, p.diagnosis.1
                    ));
                }
                let path = self.dir_file("~/Documents/HL7", format!("ADT_A01_{ts}.hl7"));
                self.whole(path, text.into_bytes(), 0o644);
            }
            Template::DicomStudy => {
                let patient = Patient::generate(&mut self.rng);
                let accession = format!("ACC{}", self.rng.digits(8));
                let date = self.date().replace('-', "");
                let bytes = dicom::study(&patient, &accession, &date, &mut self.rng)
                    .map_err(|e| self.err(e))?;
                let path = self.dir_file(
                    &format!("~/Documents/DICOM/{accession}"),
                    "IM000001.dcm".into(),
                );
                self.whole(path, bytes, 0o644);
            }
            Template::FhirBundle => {
                let count: u32 = self
                    .param("patients")
                    .and_then(|r| r.parse().ok())
                    .unwrap_or(10);
                let date = self.date();
                let mut entries = Vec::new();
                for i in 0..count {
                    let p = Patient::generate(&mut self.rng);
                    let pid = format!("pat-{}", self.rng.digits(8));
                    entries.push(serde_json::json!({
                        "fullUrl": format!("urn:uuid:{pid}"),
                        "resource": {
                            "resourceType": "Patient",
                            "id": pid,
                            "identifier": [{"system": "urn:oid:2.16.840.1.113883.3.2022.1", "value": p.mrn}],
                            "name": [{"family": p.last, "given": [p.first]}],
                            "gender": if p.sex == "F" { "female" } else { "male" },
                            "birthDate": p.birth_iso(),
                            "telecom": [{"system": "phone", "value": p.phone}],
                            "address": [{"line": [p.street], "city": p.city, "state": p.state, "postalCode": p.zip}]
                        }
                    }));
                    entries.push(serde_json::json!({
                        "fullUrl": format!("urn:uuid:cond-{pid}-{i}"),
                        "resource": {
                            "resourceType": "Condition",
                            "subject": {"reference": format!("urn:uuid:{pid}")},
                            "code": {"coding": [{"system": "http://hl7.org/fhir/sid/icd-10-cm", "code": p.diagnosis.0, "display": p.diagnosis.1}]},
                            "recordedDate": date
                        }
                    }));
                }
                let bundle = serde_json::json!({
                    "resourceType": "Bundle",
                    "id": format!("export-{}", self.rng.digits(10)),
                    "type": "collection",
                    "timestamp": format!("{date}T06:00:00Z"),
                    "entry": entries
                });
                let text =
                    serde_json::to_vec_pretty(&bundle).map_err(|e| self.err(e.to_string()))?;
                let path = self.dir_file("~/Documents/FHIR", format!("patient-export-{date}.json"));
                self.whole(path, text, 0o644);
            }
            Template::PuttySession => self.putty_session()?,
            Template::WinscpSession => self.winscp_session()?,
            Template::FilezillaSites => self.filezilla_sites()?,
            Template::MremotengConnections => self.mremoteng_connections()?,
            Template::UnattendXml => self.unattend_xml(),
            Template::PasswordsXlsx => {
                let (portal_host, portal_port) =
                    match self.decoy("https", 443).or_else(|| self.decoy("http", 80)) {
                        Some((_, host, port)) => (host, port),
                        None => ("pacs-web01".into(), 443),
                    };
                let m = self.m().clone();
                let mut rows = vec![
                    vec![
                        "System".to_owned(),
                        "Address".into(),
                        "Username".into(),
                        "Password".into(),
                        "Notes".into(),
                    ],
                    vec![
                        "PACS web viewer (admin)".into(),
                        format!("https://{portal_host}:{portal_port}/"),
                        m.username.clone(),
                        m.password.clone(),
                        "shared radiology admin - do not change".into(),
                    ],
                ];
                for (system, note) in [
                    ("EHR reporting DB", "read only"),
                    ("Lab interface engine", "ask IT before restart"),
                    ("Nurse call server", ""),
                ] {
                    rows.push(vec![
                        system.into(),
                        format!(
                            "10.{}.{}.{}",
                            10 + self.rng.below(50),
                            self.rng.below(255),
                            2 + self.rng.below(250)
                        ),
                        format!(
                            "{}{}",
                            ["svc", "admin", "it"][usize::try_from(self.rng.below(3)).unwrap_or(0)],
                            self.rng.digits(2)
                        ),
                        filler_password(&mut self.rng),
                        note.into(),
                    ]);
                }
                let bytes = xlsx::workbook("Passwords", &rows).map_err(|e| self.err(e))?;
                let path = self.dir_file("~/Documents", "passwords.xlsx".into());
                self.whole(path, bytes, 0o644);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
