//! What the controller assigns to an agent, as both sides' code uses it:
//! lure specs (the files to plant), decoy specs and allow rules, and the
//! update that carries them. On the wire they are the agent protocol's
//! messages; this is the one place that converts, so neither the
//! controller's domain nor the agent's names a generated type.
//!
//! A resource's body travels as bytes inside the update (`Resource.body`):
//! [`LureSpec::encode`] and friends give those bytes, and the controller
//! derives revisions from them (equal bytes, equal revision).

use prost::Message;

use crate::agent::v1 as pb;

/// How a lure file is planted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PlantMode {
    /// A file of its own, never planted over an existing file.
    WholeFile,
    /// Text appended to a file (created if absent), removed byte-exactly.
    Block,
}

/// One file of a lure.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlantFile {
    /// Absolute (under the agent's root), or `~/…` for every target
    /// user's home directory.
    pub path: String,
    pub content: Vec<u8>,
    pub mode: PlantMode,
    /// Unix permission bits for files the agent creates.
    pub permissions: u32,
    /// Modification time given to files the agent creates; 0 leaves it.
    pub mtime_ms: i64,
    /// Programs whose reads of a shared file are its ordinary use
    /// (`*`: every reader).
    pub ordinary_readers: Vec<String>,
}

/// A rendered lure: what an agent plants.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LureSpec {
    pub template: String,
    pub files: Vec<PlantFile>,
    /// Registry keys (Windows agents).
    pub keys: Vec<PlantKey>,
}

/// A registry key a lure creates in every target user's hive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlantKey {
    /// `~/` and the key's path under each user's hive, `/`-separated.
    pub path: String,
    pub values: Vec<RegistryValue>,
}

/// One value of a registry key.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RegistryValue {
    pub name: String,
    pub data: RegistryData,
}

/// The data of a registry value, of the types lures use.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RegistryData {
    /// `REG_SZ`.
    Text(String),
    /// `REG_DWORD`.
    Dword(u32),
}

/// One service of a decoy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecoyService {
    pub protocol: String,
    pub port: u16,
    /// How long a refused login waits; `None`: the protocol's usual delay.
    pub refusal_delay_ms: Option<u32>,
    /// Telnet: the device imitated, and a banner of its own (empty: the
    /// default).
    pub device: String,
    pub banner: String,
}

/// A decoy an agent runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecoySpec {
    pub name: String,
    /// The address lures point at.
    pub address: String,
    /// The local address to bind; empty: every address.
    pub listen: String,
    pub services: Vec<DecoyService>,
}

/// A known benign reader an agent records instead of raising.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AllowRule {
    pub name: String,
    /// Executable path; a trailing `*` matches a prefix. Empty: any.
    pub process: String,
    pub user: String,
    pub template: String,
}

/// One resource of an update: its id, revision, kind and encoded body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resource {
    pub id: String,
    pub revision: u64,
    pub kind: String,
    pub body: Vec<u8>,
}

/// What the controller pushes to an agent in one go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Update {
    pub nonce: u64,
    pub resources: Vec<Resource>,
    /// Ids of resources the agent removes.
    pub removed: Vec<String>,
}

/// A resource the agent could not apply, as it reported it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResourceError {
    pub id: String,
    pub revision: u64,
    pub error: String,
}

impl From<PlantFile> for pb::PlantFile {
    fn from(f: PlantFile) -> Self {
        pb::PlantFile {
            path: f.path,
            content: f.content,
            mode: match f.mode {
                PlantMode::WholeFile => pb::PlantMode::WholeFile,
                PlantMode::Block => pb::PlantMode::Block,
            }
            .into(),
            permissions: f.permissions,
            mtime_ms: f.mtime_ms,
            ordinary_readers: f.ordinary_readers,
        }
    }
}

impl LureSpec {
    /// The bytes of `Resource.body` for this lure. Consumes the spec: a
    /// campaign push renders and encodes every lure of every agent once,
    /// and the files' contents are moved, not copied.
    pub fn encode(self) -> Vec<u8> {
        pb::LureSpec {
            template: self.template,
            files: self.files.into_iter().map(pb::PlantFile::from).collect(),
            keys: self
                .keys
                .into_iter()
                .map(|k| pb::PlantKey {
                    path: k.path,
                    values: k
                        .values
                        .into_iter()
                        .map(|v| pb::RegistryValue {
                            name: v.name,
                            data: Some(match v.data {
                                RegistryData::Text(t) => pb::registry_value::Data::Text(t),
                                RegistryData::Dword(d) => pb::registry_value::Data::Dword(d),
                            }),
                        })
                        .collect(),
                })
                .collect(),
        }
        .encode_to_vec()
    }
}

impl DecoySpec {
    /// The bytes of `Resource.body` for this decoy.
    pub fn encode(&self) -> Vec<u8> {
        pb::DecoySpec {
            name: self.name.clone(),
            address: self.address.clone(),
            listen: self.listen.clone(),
            services: self
                .services
                .iter()
                .map(|s| pb::DecoyService {
                    protocol: s.protocol.clone(),
                    port: u32::from(s.port),
                    refusal_delay_ms: s.refusal_delay_ms,
                    device: s.device.clone(),
                    banner: s.banner.clone(),
                })
                .collect(),
        }
        .encode_to_vec()
    }
}

/// The bytes of `Resource.body` for an agent's allow rules.
pub fn encode_allow_rules(rules: &[AllowRule]) -> Vec<u8> {
    pb::AllowRules {
        rules: rules
            .iter()
            .map(|r| pb::AllowRule {
                name: r.name.clone(),
                process: r.process.clone(),
                user: r.user.clone(),
                template: r.template.clone(),
            })
            .collect(),
    }
    .encode_to_vec()
}

impl From<Update> for pb::Update {
    fn from(u: Update) -> Self {
        pb::Update {
            nonce: u.nonce,
            resources: u
                .resources
                .into_iter()
                .map(|r| pb::Resource {
                    id: r.id,
                    revision: r.revision,
                    kind: r.kind,
                    body: r.body,
                })
                .collect(),
            removed: u.removed,
        }
    }
}

impl From<pb::ResourceError> for ResourceError {
    fn from(e: pb::ResourceError) -> Self {
        ResourceError {
            id: e.id,
            revision: e.revision,
            error: e.error,
        }
    }
}

/// A resource body or update the agent could not take in.
#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    #[error("not an encoded {what}: {error}")]
    Decode {
        what: &'static str,
        error: prost::DecodeError,
    },
    #[error("{what}: {reason}")]
    Invalid { what: &'static str, reason: String },
}

fn decode<M: Message + Default>(what: &'static str, bytes: &[u8]) -> Result<M, SpecError> {
    M::decode(bytes).map_err(|error| SpecError::Decode { what, error })
}

impl TryFrom<pb::PlantFile> for PlantFile {
    type Error = SpecError;

    fn try_from(f: pb::PlantFile) -> Result<Self, SpecError> {
        let mode = match f.mode() {
            pb::PlantMode::WholeFile => PlantMode::WholeFile,
            pb::PlantMode::Block => PlantMode::Block,
            pb::PlantMode::Unspecified => {
                return Err(SpecError::Invalid {
                    what: "lure file",
                    reason: format!("{}: no plant mode", f.path),
                });
            }
        };
        Ok(PlantFile {
            path: f.path,
            content: f.content,
            mode,
            permissions: f.permissions,
            mtime_ms: f.mtime_ms,
            ordinary_readers: f.ordinary_readers,
        })
    }
}

impl TryFrom<pb::PlantKey> for PlantKey {
    type Error = SpecError;

    fn try_from(k: pb::PlantKey) -> Result<Self, SpecError> {
        let values = k
            .values
            .into_iter()
            .map(|v| {
                let data = match v.data {
                    Some(pb::registry_value::Data::Text(t)) => RegistryData::Text(t),
                    Some(pb::registry_value::Data::Dword(d)) => RegistryData::Dword(d),
                    None => {
                        return Err(SpecError::Invalid {
                            what: "registry value",
                            reason: format!("{}: value {:?} has no data", k.path, v.name),
                        });
                    }
                };
                Ok(RegistryValue { name: v.name, data })
            })
            .collect::<Result<_, _>>()?;
        Ok(PlantKey {
            path: k.path,
            values,
        })
    }
}

impl LureSpec {
    /// A lure from a `Resource.body`.
    pub fn decode(bytes: &[u8]) -> Result<LureSpec, SpecError> {
        let spec: pb::LureSpec = decode("lure spec", bytes)?;
        Ok(LureSpec {
            template: spec.template,
            files: spec
                .files
                .into_iter()
                .map(PlantFile::try_from)
                .collect::<Result<_, _>>()?,
            keys: spec
                .keys
                .into_iter()
                .map(PlantKey::try_from)
                .collect::<Result<_, _>>()?,
        })
    }
}

impl DecoySpec {
    /// A decoy from a `Resource.body`.
    pub fn decode(bytes: &[u8]) -> Result<DecoySpec, SpecError> {
        let spec: pb::DecoySpec = decode("decoy spec", bytes)?;
        Ok(DecoySpec {
            name: spec.name,
            address: spec.address,
            listen: spec.listen,
            services: spec
                .services
                .into_iter()
                .map(|s| {
                    Ok(DecoyService {
                        port: u16::try_from(s.port).map_err(|_| SpecError::Invalid {
                            what: "decoy service",
                            reason: format!("{}: port {} is not a port", s.protocol, s.port),
                        })?,
                        protocol: s.protocol,
                        refusal_delay_ms: s.refusal_delay_ms,
                        device: s.device,
                        banner: s.banner,
                    })
                })
                .collect::<Result<_, SpecError>>()?,
        })
    }
}

/// An agent's allow rules from a `Resource.body`.
pub fn decode_allow_rules(bytes: &[u8]) -> Result<Vec<AllowRule>, SpecError> {
    let rules: pb::AllowRules = decode("allow rules", bytes)?;
    Ok(rules
        .rules
        .into_iter()
        .map(|r| AllowRule {
            name: r.name,
            process: r.process,
            user: r.user,
            template: r.template,
        })
        .collect())
}

impl From<pb::Update> for Update {
    fn from(u: pb::Update) -> Self {
        Update {
            nonce: u.nonce,
            resources: u
                .resources
                .into_iter()
                .map(|r| Resource {
                    id: r.id,
                    revision: r.revision,
                    kind: r.kind,
                    body: r.body,
                })
                .collect(),
            removed: u.removed,
        }
    }
}

impl From<ResourceError> for pb::ResourceError {
    fn from(e: ResourceError) -> Self {
        pb::ResourceError {
            id: e.id,
            revision: e.revision,
            error: e.error,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_are_the_protocol_messages() {
        let lure = LureSpec {
            template: "pgpass".into(),
            files: vec![PlantFile {
                path: "~/.pgpass".into(),
                content: b"db:5432:*:u:p\n".to_vec(),
                mode: PlantMode::Block,
                permissions: 0o600,
                mtime_ms: 7,
                ordinary_readers: vec!["psql".into()],
            }],
            keys: vec![PlantKey {
                path: "~/Software/SimonTatham/PuTTY/Sessions/pacs".into(),
                values: vec![
                    RegistryValue {
                        name: "HostName".into(),
                        data: RegistryData::Text("10.0.0.5".into()),
                    },
                    RegistryValue {
                        name: "PortNumber".into(),
                        data: RegistryData::Dword(22),
                    },
                ],
            }],
        };
        assert_eq!(
            LureSpec::decode(&lure.clone().encode()).expect("decodes"),
            lure
        );
        let decoded = pb::LureSpec::decode(lure.encode().as_slice()).expect("a LureSpec");
        assert_eq!(decoded.template, "pgpass");
        assert_eq!(decoded.files[0].mode(), pb::PlantMode::Block);
        assert_eq!(decoded.files[0].ordinary_readers, ["psql"]);
        let decoy = DecoySpec {
            name: "pacs".into(),
            address: "10.0.0.5".into(),
            listen: String::new(),
            services: vec![DecoyService {
                protocol: "ssh".into(),
                port: 22,
                refusal_delay_ms: Some(300),
                device: String::new(),
                banner: "Pump 7\nWard 3".into(),
            }],
        };
        assert_eq!(DecoySpec::decode(&decoy.encode()).expect("decodes"), decoy);
        let decoded = pb::DecoySpec::decode(decoy.encode().as_slice()).expect("a DecoySpec");
        assert_eq!(decoded.services[0].port, 22);
        assert_eq!(decoded.services[0].refusal_delay_ms, Some(300));
        let rules = [AllowRule {
            name: "backup".into(),
            process: "/usr/bin/restic".into(),
            user: String::new(),
            template: String::new(),
        }];
        let decoded =
            pb::AllowRules::decode(encode_allow_rules(&rules).as_slice()).expect("AllowRules");
        assert_eq!(decoded.rules[0].process, "/usr/bin/restic");
        assert_eq!(
            decode_allow_rules(&encode_allow_rules(&rules)).unwrap(),
            rules
        );
        let unplantable = pb::LureSpec {
            template: "x".into(),
            files: vec![pb::PlantFile::default()],
            keys: Vec::new(),
        };
        assert!(LureSpec::decode(&unplantable.encode_to_vec()).is_err());
        let no_data = pb::LureSpec {
            template: "x".into(),
            files: Vec::new(),
            keys: vec![pb::PlantKey {
                path: "~/Software/x".into(),
                values: vec![pb::RegistryValue {
                    name: "v".into(),
                    data: None,
                }],
            }],
        };
        let err = LureSpec::decode(&no_data.encode_to_vec()).unwrap_err();
        assert!(err.to_string().contains("has no data"), "{err}");
    }
}
