//! The one path every `rusectl get` listing prints through: a resource
//! says what its serde view is (`-o json|yaml`, as `{"items": [...]}`),
//! its columns and its cells (`-o table`, and `-o wide` with more
//! columns); [`print`] does the rest.

use std::collections::BTreeMap;

use serde::Serialize;

use ruse_proto::admin::v1 as pb;
use ruse_proto::types::UnixMs;

use crate::incidents;
use crate::output::{self, Format};

/// A resource as `rusectl get` lists it.
pub trait Listed {
    /// What `-o json|yaml` prints for one item.
    type View: Serialize;
    fn view(&self) -> Self::View;
    /// The table's headers, `-o wide`'s when `wide`.
    fn columns(wide: bool) -> Vec<&'static str>;
    /// One row, in the order of [`Listed::columns`].
    fn cells(&self, wide: bool) -> Vec<String>;
}

/// Prints `items` in `format`.
pub fn print<T: Listed>(format: Format, items: &[T]) -> anyhow::Result<()> {
    match format {
        Format::Json | Format::Yaml => output::structured(
            format,
            &output::List {
                items: items.iter().map(T::view).collect::<Vec<_>>(),
            },
        ),
        Format::Table | Format::Wide => {
            let wide = format == Format::Wide;
            let rows: Vec<Vec<String>> = items.iter().map(|i| i.cells(wide)).collect();
            output::table(&T::columns(wide), &rows);
            Ok(())
        }
    }
}

/// `columns` then, for `-o wide`, `more`.
fn with_wide(wide: bool, columns: &[&'static str], more: &[&'static str]) -> Vec<&'static str> {
    let mut all = columns.to_vec();
    if wide {
        all.extend(more);
    }
    all
}

/// An empty match field reads as "any".
fn any(s: &str) -> String {
    if s.is_empty() {
        "*".to_owned()
    } else {
        s.to_owned()
    }
}

fn sorted(map: &std::collections::HashMap<String, String>) -> BTreeMap<String, String> {
    map.clone().into_iter().collect()
}

impl Listed for pb::Agent {
    type View = output::Agent;

    fn view(&self) -> output::Agent {
        output::Agent::from(self)
    }

    fn columns(wide: bool) -> Vec<&'static str> {
        if wide {
            vec![
                "ID",
                "HOSTNAME",
                "STATE",
                "LAST SEEN",
                "OS",
                "ADDRESSES",
                "VERSION",
                "PEER",
                "CONTROLLER",
                "LABELS",
            ]
        } else {
            vec!["ID", "HOSTNAME", "STATE", "LAST SEEN", "LABELS"]
        }
    }

    fn cells(&self, wide: bool) -> Vec<String> {
        let mut row = vec![
            self.id.clone(),
            self.hostname.clone(),
            self.state().display_name().into(),
            output::age(self.last_seen_ms),
        ];
        if wide {
            row.extend([
                self.os.clone(),
                self.addresses.join(","),
                self.agent_version.clone(),
                self.peer.clone(),
                self.controller.clone(),
            ]);
        }
        row.push(output::labels(&sorted(&self.labels)));
        row
    }
}

impl Listed for pb::Token {
    type View = output::Token;

    fn view(&self) -> output::Token {
        output::Token::from(self)
    }

    fn columns(_: bool) -> Vec<&'static str> {
        vec!["ID", "STATUS", "USES", "EXPIRES", "LABELS", "DESCRIPTION"]
    }

    fn cells(&self, _: bool) -> Vec<String> {
        let status = if self.expires_ms <= UnixMs::now().0 {
            "expired"
        } else if self.uses >= self.max_uses {
            "used up"
        } else {
            "valid"
        };
        vec![
            self.id.clone(),
            status.into(),
            format!("{}/{}", self.uses, self.max_uses),
            output::time(self.expires_ms),
            output::labels(&sorted(&self.labels)),
            self.description.clone(),
        ]
    }
}

impl Listed for pb::AuditRecord {
    type View = output::Audit;

    fn view(&self) -> output::Audit {
        output::Audit::from(self)
    }

    fn columns(wide: bool) -> Vec<&'static str> {
        with_wide(
            wide,
            &["TIME", "ACTOR", "ACTION", "TARGET", "RESULT"],
            &["PEER", "DETAIL"],
        )
    }

    fn cells(&self, wide: bool) -> Vec<String> {
        let mut row = vec![
            output::time(self.at_ms),
            self.actor.clone(),
            self.action.clone(),
            self.target.clone(),
            self.result.clone(),
        ];
        if wide {
            row.extend([self.peer.clone(), self.detail.clone()]);
        }
        row
    }
}

impl Listed for pb::LureEvent {
    type View = output::Event;

    fn view(&self) -> output::Event {
        output::Event::from(self)
    }

    fn columns(wide: bool) -> Vec<&'static str> {
        with_wide(wide, output::EVENT_HEADERS, output::EVENT_WIDE_HEADERS)
    }

    fn cells(&self, wide: bool) -> Vec<String> {
        output::event_row(self, wide)
    }
}

impl Listed for pb::Campaign {
    type View = output::Campaign;

    fn view(&self) -> output::Campaign {
        output::Campaign::from(self)
    }

    fn columns(_: bool) -> Vec<&'static str> {
        vec![
            "NAME", "SELECTOR", "LURES", "AGENTS", "ROLLOUT", "WAVE", "APPLIED", "FAILED",
            "UPDATED",
        ]
    }

    fn cells(&self, _: bool) -> Vec<String> {
        let applied: u32 = self.wave_status.iter().map(|w| w.acked).sum();
        let failed: u32 = self.wave_status.iter().map(|w| w.failed).sum();
        vec![
            self.name.clone(),
            output::labels(&sorted(&self.selector)),
            self.lures.len().to_string(),
            self.matching_agents.to_string(),
            self.rollout_state.clone(),
            format!("{}/{}", self.wave, self.wave_status.len()),
            format!("{applied}/{}", self.matching_agents),
            failed.to_string(),
            output::age(self.updated_ms),
        ]
    }
}

/// An allow rule as `-o json|yaml` prints it.
#[derive(Debug, Serialize)]
pub struct AllowRule {
    name: String,
    selector: BTreeMap<String, String>,
    process: String,
    user: String,
    template: String,
    matching_agents: u32,
}

impl Listed for pb::AllowRule {
    type View = AllowRule;

    fn view(&self) -> AllowRule {
        AllowRule {
            name: self.name.clone(),
            selector: sorted(&self.selector),
            process: self.process.clone(),
            user: self.user.clone(),
            template: self.template.clone(),
            matching_agents: self.matching_agents,
        }
    }

    fn columns(_: bool) -> Vec<&'static str> {
        vec!["NAME", "PROCESS", "USER", "TEMPLATE", "SELECTOR", "AGENTS"]
    }

    fn cells(&self, _: bool) -> Vec<String> {
        vec![
            self.name.clone(),
            any(&self.process),
            any(&self.user),
            any(&self.template),
            output::labels(&sorted(&self.selector)),
            self.matching_agents.to_string(),
        ]
    }
}

impl Listed for pb::Decoy {
    type View = output::Decoy;

    fn view(&self) -> output::Decoy {
        output::Decoy::from(self)
    }

    fn columns(_: bool) -> Vec<&'static str> {
        vec!["NAME", "ADDRESS", "SERVICES", "SELECTOR", "AGENTS"]
    }

    fn cells(&self, _: bool) -> Vec<String> {
        let services = self
            .services
            .iter()
            .map(|s| {
                let mut shown = format!("{}/{}", s.protocol, s.port);
                let notes: Vec<String> = [
                    (!s.device.is_empty()).then(|| s.device.clone()),
                    (!s.banner.is_empty()).then(|| "own banner".to_owned()),
                    s.refusal_delay_ms.map(|ms| format!("refusal {ms}ms")),
                ]
                .into_iter()
                .flatten()
                .collect();
                if !notes.is_empty() {
                    shown.push_str(&format!(" ({})", notes.join(", ")));
                }
                shown
            })
            .collect::<Vec<_>>()
            .join(",");
        vec![
            self.name.clone(),
            self.address.clone(),
            services,
            output::labels(&sorted(&self.selector)),
            self.matching_agents.to_string(),
        ]
    }
}

impl Listed for pb::Lure {
    type View = output::Lure;

    fn view(&self) -> output::Lure {
        output::Lure::from(self)
    }

    fn columns(wide: bool) -> Vec<&'static str> {
        with_wide(
            wide,
            &[
                "ID",
                "AGENT",
                "CAMPAIGN",
                "TEMPLATE",
                "STATE",
                "IDENTIFIERS",
            ],
            &["SLOT", "EPOCH", "REVISION", "CREATED", "RETIRED", "ERROR"],
        )
    }

    fn cells(&self, wide: bool) -> Vec<String> {
        let l = self.view();
        let mut row = vec![
            l.id.clone(),
            l.agent.clone(),
            l.campaign.clone(),
            l.template.clone(),
            l.state.clone(),
            l.identifiers.clone(),
        ];
        if wide {
            row.extend([
                l.slot.clone(),
                l.epoch.to_string(),
                l.revision.to_string(),
                l.created.clone(),
                l.retired.clone(),
                l.error.clone(),
            ]);
        }
        row
    }
}

impl Listed for pb::Admin {
    type View = output::Admin;

    fn view(&self) -> output::Admin {
        output::Admin::from(self)
    }

    fn columns(_: bool) -> Vec<&'static str> {
        vec!["NAME", "ROLE", "ISSUED", "ISSUED BY"]
    }

    fn cells(&self, _: bool) -> Vec<String> {
        let a = self.view();
        vec![a.name, a.role, a.issued, a.issued_by]
    }
}

impl Listed for pb::Incident {
    type View = incidents::Incident;

    fn view(&self) -> incidents::Incident {
        incidents::Incident::from(self)
    }

    fn columns(wide: bool) -> Vec<&'static str> {
        with_wide(
            wide,
            &["ID", "SEVERITY", "STATUS", "LAST SEEN", "EVENTS", "TITLE"],
            &["ATTACK PATH", "ATT&CK"],
        )
    }

    fn cells(&self, wide: bool) -> Vec<String> {
        let mut row = vec![
            self.id.clone(),
            self.severity.to_uppercase(),
            if self.drill {
                format!("{} (drill)", self.status)
            } else {
                self.status.clone()
            },
            output::age(self.last_seen_ms),
            self.event_count.to_string(),
            self.title.clone(),
        ];
        if wide {
            row.push(incidents::path_line(self));
            row.push(self.techniques.join(","));
        }
        row
    }
}

/// A suppression as `-o json|yaml` prints it.
#[derive(Debug, Serialize)]
pub struct Suppression {
    name: String,
    selector: BTreeMap<String, String>,
    source: String,
    process: String,
    template: String,
    expires: String,
    suppressed: u64,
}

impl Listed for pb::Suppression {
    type View = Suppression;

    fn view(&self) -> Suppression {
        Suppression {
            name: self.name.clone(),
            selector: sorted(&self.selector),
            source: self.source.clone(),
            process: self.process.clone(),
            template: self.template.clone(),
            expires: if self.expires_ms > 0 {
                output::time(self.expires_ms)
            } else {
                "never".into()
            },
            suppressed: self.suppressed,
        }
    }

    fn columns(_: bool) -> Vec<&'static str> {
        vec![
            "NAME",
            "SOURCE",
            "PROCESS",
            "TEMPLATE",
            "SELECTOR",
            "EXPIRES",
            "SUPPRESSED",
        ]
    }

    fn cells(&self, _: bool) -> Vec<String> {
        let s = self.view();
        vec![
            s.name,
            any(&s.source),
            any(&s.process),
            any(&s.template),
            output::labels(&s.selector),
            s.expires,
            s.suppressed.to_string(),
        ]
    }
}

/// One output, as `get outputs -o json|yaml` shows it.
#[derive(Debug, Serialize)]
pub struct Output {
    name: String,
    kind: String,
    queued: u32,
    delivered: u64,
    failures: u64,
    last_delivered: String,
    last_failed: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    last_error: String,
}

/// A time, or "never" for none.
fn when(ms: i64) -> String {
    if ms == 0 {
        "never".to_owned()
    } else {
        output::time(ms)
    }
}

impl Listed for pb::Output {
    type View = Output;

    fn view(&self) -> Output {
        Output {
            name: self.name.clone(),
            kind: self.kind.clone(),
            queued: self.queued,
            delivered: self.delivered,
            failures: self.failures,
            last_delivered: when(self.last_delivered_ms),
            last_failed: when(self.last_failed_ms),
            last_error: self.last_error.clone(),
        }
    }

    fn columns(wide: bool) -> Vec<&'static str> {
        with_wide(
            wide,
            &["NAME", "KIND", "QUEUED", "LAST DELIVERY", "LAST ERROR"],
            &["DELIVERED", "FAILURES", "LAST FAILURE"],
        )
    }

    fn cells(&self, wide: bool) -> Vec<String> {
        let mut row = vec![
            self.name.clone(),
            self.kind.clone(),
            self.queued.to_string(),
            when(self.last_delivered_ms),
            if self.last_error.is_empty() {
                "-".into()
            } else {
                self.last_error.clone()
            },
        ];
        if wide {
            row.extend([
                self.delivered.to_string(),
                self.failures.to_string(),
                when(self.last_failed_ms),
            ]);
        }
        row
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every row has one cell per column, in the table and in `-o wide`.
    fn agrees<T: Listed + Default>() {
        for wide in [false, true] {
            assert_eq!(
                T::default().cells(wide).len(),
                T::columns(wide).len(),
                "{} (wide: {wide})",
                std::any::type_name::<T>()
            );
        }
    }

    #[test]
    fn every_row_has_a_cell_per_column() {
        agrees::<pb::Agent>();
        agrees::<pb::Token>();
        agrees::<pb::AuditRecord>();
        agrees::<pb::LureEvent>();
        agrees::<pb::Campaign>();
        agrees::<pb::AllowRule>();
        agrees::<pb::Decoy>();
        agrees::<pb::Lure>();
        agrees::<pb::Admin>();
        agrees::<pb::Incident>();
        agrees::<pb::Suppression>();
        agrees::<pb::Output>();
    }

    #[test]
    fn wide_agent_rows_keep_labels_last() {
        let agent = pb::Agent {
            id: "a1".into(),
            os: "linux".into(),
            labels: [("site".to_owned(), "icu".to_owned())].into(),
            ..Default::default()
        };
        let cells = agent.cells(true);
        assert_eq!(cells.first().map(String::as_str), Some("a1"));
        assert_eq!(cells.last().map(String::as_str), Some("site=icu"));
        assert_eq!(cells[4], "linux");
    }
}
