//! The Windows programs' lures: saved PuTTY and WinSCP sessions in each
//! user's registry hive, FileZilla's site manager, an mRemoteNG connection
//! file and an answer file with the local administrator's password. Each
//! is written the way the program itself writes it, so the tools
//! intruders run to harvest them (which decode WinSCP's and FileZilla's
//! passwords and decrypt mRemoteNG's with its default key) find working
//! credentials, and those credentials lead to a decoy.

use super::fake::Rng;
use super::{LureError, Renderer, xml_escape};
use aes_gcm::aead::{Aead, KeyInit, Payload};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use ruse_proto::spec::{PlantKey, RegistryData, RegistryValue};

/// mRemoteNG's password when the user set none: what every harvesting
/// tool tries first.
const MREMOTENG_DEFAULT_PASSWORD: &[u8] = b"mR3m";
/// mRemoteNG's key derivation rounds (its `KdfIterations` default).
const MREMOTENG_KDF_ROUNDS: u32 = 1000;

fn text(name: &str, value: impl Into<String>) -> RegistryValue {
    RegistryValue {
        name: name.to_owned(),
        data: RegistryData::Text(value.into()),
    }
}

fn dword(name: &str, value: u32) -> RegistryValue {
    RegistryValue {
        name: name.to_owned(),
        data: RegistryData::Dword(value),
    }
}

/// A password as WinSCP stores it without a master password: the key
/// (user name and host name) and the password, each byte complemented and
/// masked, behind a random-length run of random bytes and padded with
/// random bytes to 50, all as upper-case hex. The random bytes come from
/// the instance's seed, so the lure renders the same every time.
pub(super) fn winscp_password(user: &str, host: &str, password: &str, rng: &mut Rng) -> String {
    const MAGIC: u8 = 0xA3;
    const FLAG: u8 = 0xFF;
    const MAX_LEN: usize = 50;
    let plain = format!("{user}{host}{password}");
    let plain = plain.as_bytes();
    let mut next_random = || rng.next_u64().to_le_bytes()[0];
    let shift = if plain.len() < MAX_LEN {
        usize::from(next_random()) % (MAX_LEN - plain.len())
    } else {
        0
    };
    let mut bytes = vec![FLAG];
    match u8::try_from(plain.len()) {
        Ok(len) => bytes.extend([0, len]),
        Err(_) => {
            let len = u16::try_from(plain.len()).unwrap_or(u16::MAX);
            bytes.push(2);
            bytes.extend(len.to_be_bytes());
        }
    }
    bytes.push(u8::try_from(shift).unwrap_or(0));
    bytes.extend((0..shift).map(|_| next_random()));
    bytes.extend_from_slice(plain);
    while bytes.len() < MAX_LEN {
        bytes.push(next_random());
    }
    bytes
        .into_iter()
        .map(|b| format!("{:02X}", !b ^ MAGIC))
        .collect()
}

/// A value as mRemoteNG 1.76 and later encrypt it: AES-256-GCM under a
/// key derived from `password` (PBKDF2-HMAC-SHA1, 1,000 rounds, a random
/// 16-byte salt), a random 16-byte nonce, the salt as associated data;
/// base64 of salt, nonce, ciphertext and tag. Salt and nonce come from the
/// instance's seed (they are public, and must only differ between lures).
pub(super) fn mremoteng_encrypt(
    plain: &str,
    password: &[u8],
    rng: &mut Rng,
) -> Result<String, String> {
    type Cipher = aes_gcm::AesGcm<aes_gcm::aes::Aes256, aes_gcm::aead::consts::U16>;
    let mut salt = [0u8; 16];
    let mut nonce = [0u8; 16];
    for chunk in salt.chunks_mut(8).chain(nonce.chunks_mut(8)) {
        chunk.copy_from_slice(&rng.next_u64().to_le_bytes());
    }
    let mut key = [0u8; 32];
    ring::pbkdf2::derive(
        ring::pbkdf2::PBKDF2_HMAC_SHA1,
        std::num::NonZeroU32::new(MREMOTENG_KDF_ROUNDS).unwrap_or(std::num::NonZeroU32::MIN),
        &salt,
        password,
        &mut key,
    );
    let cipher = Cipher::new_from_slice(&key).map_err(|e| e.to_string())?;
    let sealed = cipher
        .encrypt(
            &nonce.into(),
            Payload {
                msg: plain.as_bytes(),
                aad: &salt,
            },
        )
        .map_err(|e| e.to_string())?;
    let mut out = salt.to_vec();
    out.extend_from_slice(&nonce);
    out.extend_from_slice(&sealed);
    Ok(BASE64.encode(out))
}

/// A password as an answer file stores it with `PlainText` false: base64
/// of the UTF-16LE password followed by the element's name.
pub(super) fn unattend_password(password: &str, element: &str) -> String {
    let utf16: Vec<u8> = format!("{password}{element}")
        .encode_utf16()
        .flat_map(u16::to_le_bytes)
        .collect();
    BASE64.encode(utf16)
}

impl Renderer<'_> {
    /// A session name from the `session` parameter or the decoy's name;
    /// registry key names cannot hold a backslash.
    fn session_name(&self, decoy: &str) -> Result<String, LureError> {
        let name = self.param("session").unwrap_or(decoy).to_owned();
        if name.contains('\\') {
            return Err(self.err(format!("session name {name:?} cannot hold '\\'")));
        }
        Ok(name)
    }

    fn key(&mut self, path: String, values: Vec<RegistryValue>) {
        self.keys.push(PlantKey { path, values });
    }

    /// `putty-session`: a saved PuTTY session for the decoy's SSH, with
    /// the planted user name (PuTTY saves no passwords), under
    /// `HKCU\Software\SimonTatham\PuTTY\Sessions`.
    pub(super) fn putty_session(&mut self) -> Result<(), LureError> {
        let (name, address, port) = self
            .decoy("ssh", 22)
            .ok_or_else(|| self.err("needs a decoy"))?;
        // PuTTY escapes a session name's spaces and specials with `%XX`.
        let session = super::url_encoded(&self.session_name(&name)?);
        let values = vec![
            text("HostName", address),
            text("UserName", self.m().username.clone()),
            text("Protocol", "ssh"),
            dword("PortNumber", u32::from(port)),
            dword("Present", 1),
            text("TerminalType", "xterm"),
            dword("TCPKeepalives", 0),
            text("PublicKeyFile", ""),
            dword("Compression", 0),
            dword("LogType", 0),
        ];
        self.key(
            format!("~/Software/SimonTatham/PuTTY/Sessions/{session}"),
            values,
        );
        Ok(())
    }

    /// `winscp-session`: a saved WinSCP (SFTP) session for the decoy's SSH
    /// with the user name and the password, as WinSCP stores it without a
    /// master password, under `HKCU\Software\Martin Prikryl\WinSCP 2\Sessions`.
    pub(super) fn winscp_session(&mut self) -> Result<(), LureError> {
        let (name, address, port) = self
            .decoy("ssh", 22)
            .ok_or_else(|| self.err("needs a decoy"))?;
        let session = super::url_encoded(&self.session_name(&name)?);
        let user = self.m().username.clone();
        let material = self.input.material;
        let password = winscp_password(&user, &address, &material.password, &mut self.rng);
        let mut values = vec![text("HostName", address), text("UserName", user)];
        if port != 22 {
            values.push(dword("PortNumber", u32::from(port)));
        }
        values.push(text("Password", password));
        values.push(text("RemoteDirectory", "/srv/dicom/export"));
        self.key(
            format!("~/Software/Martin Prikryl/WinSCP 2/Sessions/{session}"),
            values,
        );
        Ok(())
    }

    /// `filezilla-sites`: FileZilla's `sitemanager.xml` with a site on the
    /// decoy's FTP (or, without one, its SFTP) with the user name and the
    /// password in base64, as FileZilla keeps it without a master password.
    pub(super) fn filezilla_sites(&mut self) -> Result<(), LureError> {
        let ftp = self.decoy("ftp", 21).filter(|_| {
            self.input
                .decoy
                .is_some_and(|d| d.port("ftp").is_some() || d.port("ssh").is_none())
        });
        let (name, host, port, protocol) = match ftp {
            Some((name, host, port)) => (name, host, port, 0),
            None => {
                let (name, host, port) = self
                    .decoy("ssh", 22)
                    .ok_or_else(|| self.err("needs a decoy"))?;
                (name, host, port, 1)
            }
        };
        let site = self.param("site").unwrap_or(&name).to_owned();
        let m = self.m();
        let text = format!(
            "<?xml version=\"1.0\" encoding=\"UTF-8\" standalone=\"yes\" ?>\n<FileZilla3 version=\"3.67.1\" platform=\"windows\">\n\t<Servers>\n\t\t<Server>\n\t\t\t<Host>{host}</Host>\n\t\t\t<Port>{port}</Port>\n\t\t\t<Protocol>{protocol}</Protocol>\n\t\t\t<Type>0</Type>\n\t\t\t<User>{user}</User>\n\t\t\t<Pass encoding=\"base64\">{pass}</Pass>\n\t\t\t<Logontype>1</Logontype>\n\t\t\t<PasvMode>MODE_DEFAULT</PasvMode>\n\t\t\t<EncodingType>Auto</EncodingType>\n\t\t\t<BypassProxy>0</BypassProxy>\n\t\t\t<Name>{site}</Name>\n\t\t\t<RemoteDir>1 0 3 srv 5 dicom 6 export</RemoteDir>\n\t\t\t<SyncBrowsing>0</SyncBrowsing>\n\t\t\t<DirectoryComparison>0</DirectoryComparison>\n\t\t</Server>\n\t</Servers>\n</FileZilla3>\n",
            host = xml_escape(&host),
            user = xml_escape(&m.username),
            pass = BASE64.encode(m.password.as_bytes()),
            site = xml_escape(&site),
        );
        let path = self.file_path("~/AppData/Roaming/FileZilla/sitemanager.xml");
        self.whole(path, text.into_bytes(), 0o600);
        Ok(())
    }

    /// `mremoteng-connections`: mRemoteNG's `confCons.xml` with a
    /// connection to the decoy's RDP (or SSH), its user, domain and
    /// password encrypted as mRemoteNG does without a master password.
    pub(super) fn mremoteng_connections(&mut self) -> Result<(), LureError> {
        let rdp = self
            .input
            .decoy
            .is_some_and(|d| d.port("rdp").is_some() || d.port("ssh").is_none());
        let (name, host, port, protocol) = if rdp {
            let (name, host, port) = self
                .decoy("rdp", 3389)
                .ok_or_else(|| self.err("needs a decoy"))?;
            (name, host, port, "RDP")
        } else {
            let (name, host, port) = self
                .decoy("ssh", 22)
                .ok_or_else(|| self.err("needs a decoy"))?;
            (name, host, port, "SSH2")
        };
        let domain = self.param("domain").unwrap_or("HOSPITAL").to_owned();
        let protected = mremoteng_encrypt(
            "ThisIsNotProtected",
            MREMOTENG_DEFAULT_PASSWORD,
            &mut self.rng,
        )
        .map_err(|e| self.err(e))?;
        let secret = self.m().password.clone();
        let password = mremoteng_encrypt(&secret, MREMOTENG_DEFAULT_PASSWORD, &mut self.rng)
            .map_err(|e| self.err(e))?;
        let container = self.uuid();
        let node = self.uuid();
        let text = format!(
            "<?xml version=\"1.0\" encoding=\"utf-8\"?>\r\n<mrng:Connections xmlns:mrng=\"http://mremoteng.org\" Name=\"Connections\" Export=\"false\" EncryptionEngine=\"AES\" BlockCipherMode=\"GCM\" KdfIterations=\"{MREMOTENG_KDF_ROUNDS}\" FullFileEncryption=\"false\" Protected=\"{protected}\" ConfVersion=\"2.6\">\r\n    <Node Name=\"Radiology\" Type=\"Container\" Expanded=\"true\" Descr=\"Reading room servers\" Icon=\"mRemoteNG\" Panel=\"General\" Id=\"{container}\" Username=\"\" Domain=\"\" Password=\"\" Hostname=\"\" Protocol=\"RDP\" PuttySession=\"Default Settings\" Port=\"3389\" />\r\n    <Node Name=\"{label}\" Type=\"Connection\" Descr=\"PACS archive (service account)\" Icon=\"mRemoteNG\" Panel=\"General\" Id=\"{node}\" Username=\"{user}\" Domain=\"{domain}\" Password=\"{password}\" Hostname=\"{host}\" Protocol=\"{protocol}\" PuttySession=\"Default Settings\" Port=\"{port}\" ConnectToConsole=\"false\" UseCredSsp=\"true\" RenderingEngine=\"EdgeChromium\" RDPAuthenticationLevel=\"NoAuth\" Colors=\"Colors16Bit\" Resolution=\"FitToWindow\" AutomaticResize=\"true\" DisplayWallpaper=\"false\" DisplayThemes=\"false\" RedirectKeys=\"false\" RedirectDiskDrives=\"false\" RedirectPrinters=\"false\" RedirectClipboard=\"true\" RedirectSound=\"DoNotPlay\" />\r\n</mrng:Connections>\r\n",
            label = xml_escape(&name),
            user = xml_escape(&self.m().username),
            domain = xml_escape(&domain),
            host = xml_escape(&host),
        );
        let path = self.file_path("~/AppData/Roaming/mRemoteNG/confCons.xml");
        self.whole(path, text.into_bytes(), 0o600);
        Ok(())
    }

    /// `unattend-xml`: an answer file a workstation image was built with,
    /// creating the local administrator account and its password (encoded
    /// as answer files encode them, which is no protection). Planted as
    /// `C:\Windows\Panther\Unattended.xml`, a name credential hunters look
    /// for and Windows Setup never reads: an `Unattend.xml` there or in
    /// `Sysprep` would be applied by the next feature update.
    pub(super) fn unattend_xml(&mut self) {
        let computer = self.param("computer").unwrap_or("*").to_owned();
        let m = self.m();
        let admin = unattend_password(&m.password, "AdministratorPassword");
        let local = unattend_password(&m.password, "Password");
        let text = format!(
            "<?xml version=\"1.0\" encoding=\"utf-8\"?>\r\n<unattend xmlns=\"urn:schemas-microsoft-com:unattend\">\r\n    <settings pass=\"specialize\">\r\n        <component name=\"Microsoft-Windows-Shell-Setup\" processorArchitecture=\"amd64\" publicKeyToken=\"31bf3856ad364e35\" language=\"neutral\" versionScope=\"nonSxS\" xmlns:wcm=\"http://schemas.microsoft.com/WMIConfig/2002/State\">\r\n            <ComputerName>{computer}</ComputerName>\r\n            <RegisteredOrganization>Clinical IT</RegisteredOrganization>\r\n            <TimeZone>Eastern Standard Time</TimeZone>\r\n        </component>\r\n    </settings>\r\n    <settings pass=\"oobeSystem\">\r\n        <component name=\"Microsoft-Windows-Shell-Setup\" processorArchitecture=\"amd64\" publicKeyToken=\"31bf3856ad364e35\" language=\"neutral\" versionScope=\"nonSxS\" xmlns:wcm=\"http://schemas.microsoft.com/WMIConfig/2002/State\">\r\n            <UserAccounts>\r\n                <AdministratorPassword>\r\n                    <Value>{admin}</Value>\r\n                    <PlainText>false</PlainText>\r\n                </AdministratorPassword>\r\n                <LocalAccounts>\r\n                    <LocalAccount wcm:action=\"add\">\r\n                        <Password>\r\n                            <Value>{local}</Value>\r\n                            <PlainText>false</PlainText>\r\n                        </Password>\r\n                        <Description>Workstation support</Description>\r\n                        <DisplayName>{user}</DisplayName>\r\n                        <Group>Administrators</Group>\r\n                        <Name>{user}</Name>\r\n                    </LocalAccount>\r\n                </LocalAccounts>\r\n            </UserAccounts>\r\n            <OOBE>\r\n                <HideEULAPage>true</HideEULAPage>\r\n                <ProtectYourPC>3</ProtectYourPC>\r\n            </OOBE>\r\n        </component>\r\n    </settings>\r\n</unattend>\r\n",
            computer = xml_escape(&computer),
            user = xml_escape(&m.username),
        );
        let path = self.file_path("/Windows/Panther/Unattended.xml");
        self.whole(path, text.into_bytes(), 0o600);
    }
}
