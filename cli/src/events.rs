//! `rusectl watch events`: follow lure events live, resuming where a
//! dropped stream left off.

use anyhow::bail;

use ruse_proto::admin::v1 as pb;

use crate::Client;
use crate::args::EventArgs;
use crate::output::{self, Format};

/// Prints events as they arrive until interrupted: a table row each, or
/// one JSON object per line with `-o json`. When the stream breaks (the
/// controller restarts) it reconnects and resumes after the last event
/// shown, so nothing is missed or shown twice (of the events other
/// controllers sharing the database ingested while it was away, `rusectl
/// get events` has the ones it did not show).
pub async fn watch_events(
    client: &mut Client,
    format: Format,
    args: &EventArgs,
    after: u64,
) -> anyhow::Result<()> {
    use std::io::Write;
    let filter = args.filter()?;
    let wide = format == Format::Wide;
    if matches!(format, Format::Table | Format::Wide) {
        let mut headers = output::EVENT_HEADERS.to_vec();
        if wide {
            headers.extend(output::EVENT_WIDE_HEADERS);
        }
        println!("{}", headers.join("   "));
        // Piped output (`| tee`) sees the header at once.
        std::io::stdout().flush()?;
    }
    let mut last = after;
    let mut retry = std::time::Duration::from_millis(500);
    loop {
        let request = pb::WatchEventsRequest {
            filter: Some(filter.clone()),
            after_cursor: last,
        };
        let mut stream = match client.watch_events(request).await {
            Ok(s) => s.into_inner(),
            Err(e) if last > 0 && e.code() == tonic::Code::Unavailable => {
                tokio::time::sleep(retry).await;
                retry = (retry * 2).min(std::time::Duration::from_secs(10));
                continue;
            }
            Err(e) => return Err(e.into()),
        };
        retry = std::time::Duration::from_millis(500);
        loop {
            let item = match stream.message().await {
                Ok(Some(item)) => item,
                Ok(None) => break,
                Err(e) if e.code() == tonic::Code::Unavailable => {
                    eprintln!("rusectl: {}; resuming after event {last}", e.message());
                    break;
                }
                Err(e) => return Err(e.into()),
            };
            if item.missed > 0 {
                eprintln!(
                    "rusectl: {} events were deleted by the controller's retention before this watch read them",
                    item.missed
                );
            }
            if item.missed_from_others > 0 {
                eprintln!(
                    "rusectl: {} events of other controllers were not shown (this terminal read too slowly); `rusectl get events` has them",
                    item.missed_from_others
                );
            }
            let Some(e) = item.event else { continue };
            // Another controller's cursor is not in order with this one's.
            if !item.from_other_controller {
                last = last.max(e.cursor);
            }
            let mut out = std::io::stdout().lock();
            match format {
                Format::Json => {
                    writeln!(out, "{}", serde_json::to_string(&output::Event::from(&e))?)?;
                }
                Format::Yaml => write!(
                    out,
                    "---\n{}",
                    serde_norway::to_string(&output::Event::from(&e))?
                )?,
                _ => writeln!(out, "{}", output::event_row(&e, wide).join("   "))?,
            }
            out.flush()?;
        }
        if last == 0 {
            bail!("the controller closed the event stream");
        }
    }
}
