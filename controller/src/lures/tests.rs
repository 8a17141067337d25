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

/// `template` rendered from `material`, for the test decoy and slot.
fn rendered_with(template: Template, material: &Material) -> LureSpec {
    let d = decoy();
    let s = slot(template);
    render(RenderInput {
        slot: &s,
        material,
        decoy: Some(&d),
        created: UnixMs(1_795_000_000_000),
    })
    .unwrap()
}

#[test]
fn every_template_renders_deterministically_and_uniquely() {
    for &t in Template::ALL {
        let (material, spec) = rendered(t);
        assert!(!spec.files.is_empty(), "{t}");
        let d = decoy();
        let s = slot(t);
        let again = render(RenderInput {
            slot: &s,
            material: &material,
            decoy: Some(&d),
            created: UnixMs(1_795_000_000_000),
        })
        .unwrap();
        let digest = |s: &LureSpec| {
            s.files
                .iter()
                .map(|f| format!("{}:{}", f.path, sha(&f.content)))
                .collect::<Vec<_>>()
        };
        assert_eq!(
            digest(&spec),
            digest(&again),
            "{t} must render the same bytes twice"
        );
        let (_, other) = rendered(t);
        assert_ne!(
            sha(&spec.files[0].content),
            sha(&other.files[0].content),
            "{t} instances must differ"
        );
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
    let err = render(RenderInput {
        slot: &s,
        material: &material,
        decoy: Some(&d),
        created: UnixMs(0),
    })
    .unwrap_err();
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
