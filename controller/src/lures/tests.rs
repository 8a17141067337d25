//! Tests of the catalogue: rendering, material, and what each template plants.

use std::collections::BTreeMap;

use super::*;
use crate::model::ServiceManifest;
use ruse_proto::types::Labels;

#[test]
fn secret_characters_are_drawn_without_modulo_bias() {
    // 94 characters: 256 % 94 = 68, so a plain modulo would make the
    // first 68 half again as likely as the last 26.
    let alphabet: Vec<u8> = (b'!'..=b'~').collect();
    let s = secret_string(&alphabet, 94_000);
    assert_eq!(s.len(), 94_000);
    let mut counts = [0u32; 94];
    for b in s.bytes() {
        counts[usize::from(b - b'!')] += 1;
    }
    let mean = |c: &[u32]| f64::from(c.iter().sum::<u32>()) / c.len() as f64;
    let ratio = mean(&counts[..68]) / mean(&counts[68..]);
    assert!((0.9..1.1).contains(&ratio), "first/last ratio {ratio}");
    assert_eq!(secret_string(b"ab", 0), "");
}

fn sha(bytes: &[u8]) -> String {
    ruse_proto::types::hex(ring::digest::digest(&ring::digest::SHA256, bytes).as_ref())
}

fn slot(template: Template) -> LureSlot {
    LureSlot {
        key: template.to_string(),
        template,
        decoy: Some("pacs-archive02".into()),
        path: None,
        params: BTreeMap::new(),
    }
}

fn decoy() -> Decoy {
    Decoy {
        name: "pacs-archive02".into(),
        description: String::new(),
        selector: Labels::new(),
        address: "10.20.0.15".into(),
        listen: String::new(),
        services: vec![
            ServiceManifest {
                protocol: "ssh".into(),
                port: 2222,
                refusal_delay: None,
                device: None,
                banner: None,
            },
            ServiceManifest {
                protocol: "dicom".into(),
                port: 104,
                refusal_delay: None,
                device: None,
                banner: None,
            },
            ServiceManifest {
                protocol: "https".into(),
                port: 8443,
                refusal_delay: None,
                device: None,
                banner: None,
            },
        ],
    }
}

fn rendered(template: Template) -> (Material, LureSpec) {
    let material = Material::generate(template).unwrap();
    let spec = rendered_with(template, &material);
    (material, spec)
}

/// The platform tests render `template` for: Linux where it plants there.
fn platform_of(template: Template) -> Platform {
    if template.plants_on(Platform::Linux) {
        Platform::Linux
    } else {
        Platform::Windows
    }
}

/// `template` rendered from `material`, for the test decoy and slot.
fn rendered_with(template: Template, material: &Material) -> LureSpec {
    render_on(template, material, platform_of(template))
}

fn render_on(template: Template, material: &Material, platform: Platform) -> LureSpec {
    render_in(&slot(template), material, &decoy(), platform).unwrap()
}

/// `material` rendered for `slot` and `decoy` on `platform`.
fn render_in(
    slot: &LureSlot,
    material: &Material,
    decoy: &Decoy,
    platform: Platform,
) -> Result<LureSpec, LureError> {
    render(RenderInput {
        slot,
        material,
        decoy: Some(decoy),
        created: UnixMs(1_795_000_000_000),
        platform,
    })
}

/// What a spec plants, file by file and key by key.
fn digest(s: &LureSpec) -> Vec<String> {
    s.files
        .iter()
        .map(|f| format!("{}:{}", f.path, sha(&f.content)))
        .chain(s.keys.iter().map(|k| format!("{k:?}")))
        .collect()
}

#[test]
fn every_template_renders_deterministically_and_uniquely() {
    for &t in Template::ALL {
        for platform in [Platform::Linux, Platform::Windows] {
            if !t.plants_on(platform) {
                continue;
            }
            let material = Material::generate(t).unwrap();
            let spec = render_on(t, &material, platform);
            assert!(!spec.files.is_empty() || !spec.keys.is_empty(), "{t}");
            assert_eq!(
                digest(&spec),
                digest(&render_on(t, &material, platform)),
                "{t} on {platform} must render the same bytes twice"
            );
            let other = render_on(t, &Material::generate(t).unwrap(), platform);
            assert_ne!(
                digest(&spec)[0],
                digest(&other)[0],
                "{t} on {platform}: instances must differ"
            );
            for k in &spec.keys {
                assert!(k.path.starts_with("~/Software/"), "{t}: {}", k.path);
            }
        }
        let (_, spec) = rendered(t);
        for f in &spec.files {
            assert!(
                f.path.starts_with("~/") || f.path.starts_with('/'),
                "{t}: {}",
                f.path
            );
            let age = UnixMs(f.mtime_ms).until(UnixMs(1_795_000_000_000));
            assert!(
                age >= Duration::from_secs(30 * 86_400) && age <= Duration::from_secs(401 * 86_400),
                "{t}"
            );
        }
    }
}

#[test]
fn credentials_point_at_the_decoy_and_carry_the_instance_material() {
    let (m, spec) = rendered(Template::SshKey);
    let config = String::from_utf8(spec.files[2].content.clone()).unwrap();
    assert!(
        config.contains("Host pacs-archive02\n    HostName 10.20.0.15\n    Port 2222\n"),
        "{config}"
    );
    assert!(config.contains(&format!("User {}", m.username)));
    let key = String::from_utf8(spec.files[0].content.clone()).unwrap();
    assert!(key.starts_with("-----BEGIN OPENSSH PRIVATE KEY-----"));
    assert!(m.fingerprint.starts_with("SHA256:"));
    let parsed = ssh_key::PrivateKey::from_openssh(&key).unwrap();
    assert_eq!(
        parsed
            .public_key()
            .fingerprint(ssh_key::HashAlg::Sha256)
            .to_string(),
        m.fingerprint
    );

    let (m, spec) = rendered(Template::PacsConfig);
    let ini = String::from_utf8(spec.files[0].content.clone()).unwrap();
    assert!(
        ini.contains(&format!("CallingAETitle={}", m.ae_title))
            && ini.contains("Host=10.20.0.15\nPort=104")
    );
    assert!(m.ae_title.len() <= 16);

    let (m, spec) = rendered(Template::HostsEntry);
    assert_eq!(
        String::from_utf8(spec.files[0].content.clone()).unwrap(),
        format!(
            "10.20.0.15\tpacs-archive02.hospital.local pacs-archive02 {}\n",
            m.username
        )
    );
    assert_eq!(spec.files[0].mode, PlantMode::Block);

    let (m, spec) = rendered(Template::AwsCredentials);
    let text = String::from_utf8(spec.files[0].content.clone()).unwrap();
    assert!(text.contains(&format!("aws_access_key_id = {}", m.key_id)) && m.key_id.len() == 20);
}

#[test]
fn honeyfiles_are_valid_documents() {
    let (_, spec) = rendered(Template::FhirBundle);
    let bundle: serde_json::Value = serde_json::from_slice(&spec.files[0].content).unwrap();
    assert_eq!(bundle["resourceType"], "Bundle");
    assert_eq!(bundle["entry"].as_array().unwrap().len(), 20);

    let (_, spec) = rendered(Template::Hl7Adt);
    let text = String::from_utf8(spec.files[0].content.clone()).unwrap();
    assert_eq!(text.matches("MSH|^~\\&|").count(), 5);
    assert!(text.contains("\rPID|1||MRN"));

    let (_, spec) = rendered(Template::PatientCsv);
    let text = String::from_utf8(spec.files[0].content.clone()).unwrap();
    assert_eq!(text.lines().count(), 41);

    let (_, spec) = rendered(Template::DicomStudy);
    let dcm = &spec.files[0].content;
    assert_eq!(&dcm[128..132], b"DICM");
    let obj = dicom_object::from_reader(&dcm[128..]).unwrap();
    let name = obj
        .element(dicom_dictionary_std::tags::PATIENT_NAME)
        .unwrap()
        .to_str()
        .unwrap();
    assert!(name.contains('^'), "{name}");

    let (m, spec) = rendered(Template::PasswordsXlsx);
    let xlsx = &spec.files[0].content;
    let mut archive = zip::ZipArchive::new(std::io::Cursor::new(xlsx.clone())).unwrap();
    let mut sheet = String::new();
    std::io::Read::read_to_string(
        &mut archive.by_name("xl/worksheets/sheet1.xml").unwrap(),
        &mut sheet,
    )
    .unwrap();
    assert!(sheet.contains(&m.password) && sheet.contains("https://10.20.0.15:8443/"));
    for part in [
        "[Content_Types].xml",
        "_rels/.rels",
        "xl/workbook.xml",
        "xl/_rels/workbook.xml.rels",
    ] {
        assert!(archive.by_name(part).is_ok(), "{part} missing");
    }
}

#[test]
fn hosts_entry_needs_an_ip_address_and_params_are_checked() {
    let material = Material::generate(Template::HostsEntry).unwrap();
    let mut d = decoy();
    d.address = "pacs.example.org".into();
    let s = slot(Template::HostsEntry);
    let err = render_in(&s, &material, &d, Platform::Linux).unwrap_err();
    assert!(err.to_string().contains("IP address"), "{err}");
    let mut p = BTreeMap::new();
    p.insert("rows".to_owned(), "5000".to_owned());
    assert!(Template::PatientCsv.check_params(&p).is_err());
    p.insert("rows".to_owned(), "5".to_owned());
    assert!(Template::PatientCsv.check_params(&p).is_ok());
    assert!(Template::SshKey.check_params(&p).is_err());
}

/// Passwords may hold `#`, `=`, `%` and `+`: the database lures keep them
/// whole where their readers would cut them (a `#` starts a comment in
/// `.my.cnf` unless the value is quoted; a URL needs them encoded).
#[test]
fn database_lures_keep_a_password_whole() {
    for template in [
        Template::MysqlCredentials,
        Template::MssqlConnection,
        Template::EnvFile,
    ] {
        let mut material = Material::generate(template).unwrap();
        material.password = "Pacs2024#a=b%c+d".into();
        let text: String = rendered_with(template, &material)
            .files
            .iter()
            .map(|f| String::from_utf8_lossy(&f.content).into_owned())
            .collect();
        match template {
            Template::MysqlCredentials => {
                assert!(text.contains("password = \"Pacs2024#a=b%c+d\"\n"), "{text}");
            }
            Template::EnvFile => {
                assert!(text.contains(":Pacs2024%23a%3Db%25c%2Bd@"), "{text}");
            }
            _ => {
                assert!(text.contains("Password=Pacs2024#a=b%c+d;"), "{text}");
                assert!(text.contains("PWD = Pacs2024#a=b%c+d\n"), "{text}");
            }
        }
    }
}

/// The `.rdp` file is what Remote Desktop Connection saves (UTF-16 with a
/// byte-order mark, CRLF) and names the decoy's RDP service and the
/// planted user; the note of logins carries the same user and password.
#[test]
fn rdp_lures_name_the_decoy_and_the_planted_login() {
    let material = Material::generate(Template::RdpFile).unwrap();
    let file = &rendered_with(Template::RdpFile, &material).files[0];
    assert!(file.path.starts_with("~/Desktop/") && file.path.ends_with(".rdp"));
    assert_eq!(file.content[..2], [0xff, 0xfe]);
    let units: Vec<u16> = file.content[2..]
        .chunks_exact(2)
        .map(|c| u16::from_le_bytes([c[0], c[1]]))
        .collect();
    let text = String::from_utf16(&units).unwrap();
    assert!(
        text.split_terminator('\n').all(|l| l.ends_with('\r')),
        "CRLF"
    );
    assert!(
        text.contains(&format!("username:s:HOSPITAL\\{}\r\n", material.username)),
        "{text}"
    );
    assert!(text.contains("full address:s:"), "{text}");
    assert!(
        !text.contains(&material.password),
        "no password in a .rdp file"
    );

    let material = Material::generate(Template::RdpCredentials).unwrap();
    let note = &rendered_with(Template::RdpCredentials, &material).files[0];
    assert_eq!(note.path, "~/Documents/remote-desktop-logins.txt");
    let text = String::from_utf8(note.content.clone()).unwrap();
    assert!(text.contains(&format!("user:     HOSPITAL\\{}", material.username)));
    assert!(text.contains(&format!("password: {}", material.password)));
    assert!(Template::RdpFile.needs_decoy() && !Template::RdpCredentials.needs_decoy());
}

/// The text of the file at `path` in `spec`.
fn file_text(spec: &LureSpec, path: &str) -> String {
    let f = spec
        .files
        .iter()
        .find(|f| f.path == path)
        .unwrap_or_else(|| panic!("no {path} in {:?}", digest(spec)));
    String::from_utf8(f.content.clone()).unwrap()
}

fn registry_text(key: &PlantKey, name: &str) -> String {
    match key.values.iter().find(|v| v.name == name).map(|v| &v.data) {
        Some(ruse_proto::spec::RegistryData::Text(t)) => t.clone(),
        other => panic!("{name}: {other:?}"),
    }
}

#[test]
fn on_windows_the_files_go_where_windows_programs_keep_them() {
    let paths = |t: Template| -> Vec<String> {
        let m = Material::generate(t).unwrap();
        render_on(t, &m, Platform::Windows)
            .files
            .into_iter()
            .map(|f| f.path)
            .collect()
    };
    assert_eq!(
        paths(Template::Pgpass),
        ["~/AppData/Roaming/postgresql/pgpass.conf"]
    );
    assert_eq!(paths(Template::Netrc), ["~/_netrc"]);
    assert_eq!(
        paths(Template::PacsConfig),
        ["~/AppData/Roaming/PacsViewer/nodes.ini"]
    );
    assert_eq!(paths(Template::AwsCredentials), ["~/.aws/credentials"]);
    let m = Material::generate(Template::HostsEntry).unwrap();
    let hosts = render_on(Template::HostsEntry, &m, Platform::Windows);
    assert_eq!(hosts.files[0].path, "/Windows/System32/drivers/etc/hosts");
    assert!(file_text(&hosts, &hosts.files[0].path).ends_with("\r\n"));

    // SMB: the drive-mapping script with the account, not .smbcredentials.
    let mut d = decoy();
    d.services[0].protocol = "smb".into();
    d.services[0].port = 445;
    let m = Material::generate(Template::SmbCredentials).unwrap();
    let s = slot(Template::SmbCredentials);
    let spec = render_in(&s, &m, &d, Platform::Windows).unwrap();
    assert_eq!(spec.files.len(), 1);
    let script = file_text(&spec, "~/Documents/Scripts/map-drives.cmd");
    assert!(
        script.contains("net use S: \\\\10.20.0.15\\")
            && script.contains(&format!(
                "/user:HOSPITAL\\{} \"{}\"",
                m.username, m.password
            )),
        "{script}"
    );

    // SQL Server: appsettings.json and web.config side by side.
    let m = Material::generate(Template::MssqlConnection).unwrap();
    let spec = render_on(Template::MssqlConnection, &m, Platform::Windows);
    let files: Vec<_> = spec.files.iter().map(|f| f.path.as_str()).collect();
    assert!(
        files.iter().all(|p| p.starts_with("~/source/repos/")),
        "{files:?}"
    );
    let web = spec
        .files
        .iter()
        .find(|f| f.path.ends_with("/web.config"))
        .unwrap();
    let web = String::from_utf8(web.content.clone()).unwrap();
    assert!(
        web.contains(&format!("User ID={};Password={};", m.username, m.password)),
        "{web}"
    );
    assert!(!files.iter().any(|p| p.contains(".odbc")), "{files:?}");
    // A Windows-only template is not on Linux agents.
    assert!(!Template::PuttySession.plants_on(Platform::Linux));
    assert!(Template::SshKey.plants_on(Platform::Windows));
}

/// WinSCP's own decoding, written from its documented algorithm.
fn winscp_decode(hex: &str, user: &str, host: &str) -> String {
    let bytes: Vec<u8> = (0..hex.len())
        .step_by(2)
        .map(|i| !(u8::from_str_radix(&hex[i..i + 2], 16).unwrap() ^ 0xA3))
        .collect();
    assert_eq!(bytes[0], 0xFF, "flag");
    assert_eq!(bytes[1], 0, "simple internal");
    let len = usize::from(bytes[2]);
    let shift = usize::from(bytes[3]);
    let plain = &bytes[4 + shift..4 + shift + len];
    let plain = String::from_utf8(plain.to_vec()).unwrap();
    plain
        .strip_prefix(&format!("{user}{host}"))
        .expect("the key leads")
        .to_owned()
}

#[test]
fn registry_sessions_hold_what_putty_and_winscp_save() {
    let m = Material::generate(Template::PuttySession).unwrap();
    let spec = render_on(Template::PuttySession, &m, Platform::Windows);
    assert!(spec.files.is_empty());
    let key = &spec.keys[0];
    assert_eq!(
        key.path,
        "~/Software/SimonTatham/PuTTY/Sessions/pacs-archive02"
    );
    assert_eq!(registry_text(key, "HostName"), "10.20.0.15");
    assert_eq!(registry_text(key, "UserName"), m.username);
    assert!(key.values.contains(&ruse_proto::spec::RegistryValue {
        name: "PortNumber".into(),
        data: ruse_proto::spec::RegistryData::Dword(2222),
    }));

    let m = Material::generate(Template::WinscpSession).unwrap();
    let spec = render_on(Template::WinscpSession, &m, Platform::Windows);
    let key = &spec.keys[0];
    assert_eq!(
        key.path,
        "~/Software/Martin Prikryl/WinSCP 2/Sessions/pacs-archive02"
    );
    let stored = registry_text(key, "Password");
    assert!(stored.len() >= 100 && stored.bytes().all(|b| b.is_ascii_hexdigit()));
    assert_eq!(
        winscp_decode(&stored, &m.username, "10.20.0.15"),
        m.password
    );
    // A session name with a space is escaped as the programs escape it.
    let mut s = slot(Template::WinscpSession);
    s.params.insert("session".into(), "PACS archive".into());
    let spec = render_in(&s, &m, &decoy(), Platform::Windows).unwrap();
    assert!(spec.keys[0].path.ends_with("/Sessions/PACS%20archive"));
    let mut p = BTreeMap::new();
    p.insert("session".to_owned(), "a\\b".to_owned());
    assert!(Template::PuttySession.check_params(&p).is_err());
}

#[test]
fn filezilla_mremoteng_and_answer_files_give_up_the_password_as_the_tools_do() {
    use aes_gcm::aead::{Aead, KeyInit, Payload};
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD;

    let m = Material::generate(Template::FilezillaSites).unwrap();
    let spec = render_on(Template::FilezillaSites, &m, Platform::Windows);
    let xml = file_text(&spec, "~/AppData/Roaming/FileZilla/sitemanager.xml");
    // The test decoy runs SSH and no FTP: an SFTP site.
    assert!(xml.contains("<Port>2222</Port>") && xml.contains("<Protocol>1</Protocol>"));
    let pass = xml
        .split("<Pass encoding=\"base64\">")
        .nth(1)
        .and_then(|r| r.split("</Pass>").next())
        .unwrap();
    assert_eq!(b64.decode(pass).unwrap(), m.password.as_bytes());

    let m = Material::generate(Template::MremotengConnections).unwrap();
    let spec = render_on(Template::MremotengConnections, &m, Platform::Windows);
    let xml = file_text(&spec, "~/AppData/Roaming/mRemoteNG/confCons.xml");
    let attr = |name: &str, nth: usize| -> String {
        xml.split(&format!(" {name}=\""))
            .nth(nth)
            .and_then(|r| r.split('"').next())
            .unwrap()
            .to_owned()
    };
    let decrypt = |blob: &str| -> String {
        let raw = b64.decode(blob).unwrap();
        let (salt, rest) = raw.split_at(16);
        let (nonce, sealed) = rest.split_at(16);
        let mut key = [0u8; 32];
        ring::pbkdf2::derive(
            ring::pbkdf2::PBKDF2_HMAC_SHA1,
            std::num::NonZeroU32::new(1000).unwrap(),
            salt,
            b"mR3m",
            &mut key,
        );
        let cipher =
            aes_gcm::AesGcm::<aes_gcm::aes::Aes256, aes_gcm::aead::consts::U16>::new_from_slice(
                &key,
            )
            .unwrap();
        let nonce: [u8; 16] = nonce.try_into().unwrap();
        let plain = cipher
            .decrypt(
                &nonce.into(),
                Payload {
                    msg: sealed,
                    aad: salt,
                },
            )
            .unwrap();
        String::from_utf8(plain).unwrap()
    };
    assert_eq!(decrypt(&attr("Protected", 1)), "ThisIsNotProtected");
    // The second node is the connection.
    assert_eq!(decrypt(&attr("Password", 2)), m.password);
    assert_eq!(attr("Username", 2), m.username);
    assert_eq!(attr("Protocol", 2), "SSH2");
    assert_eq!(attr("Hostname", 2), "10.20.0.15");

    let m = Material::generate(Template::UnattendXml).unwrap();
    let spec = render_on(Template::UnattendXml, &m, Platform::Windows);
    assert_eq!(spec.files[0].path, "/Windows/Panther/Unattended.xml");
    let xml = file_text(&spec, "/Windows/Panther/Unattended.xml");
    let value = xml
        .split("<AdministratorPassword>")
        .nth(1)
        .and_then(|r| r.split("<Value>").nth(1))
        .and_then(|r| r.split("</Value>").next())
        .unwrap();
    let utf16: Vec<u16> = b64
        .decode(value)
        .unwrap()
        .chunks(2)
        .map(|c| u16::from_le_bytes([c[0], c[1]]))
        .collect();
    assert_eq!(
        String::from_utf16(&utf16).unwrap(),
        format!("{}AdministratorPassword", m.password)
    );
    assert!(xml.contains(&format!("<Name>{}</Name>", m.username)));
}
