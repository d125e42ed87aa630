//! Export: a device's raw readings as CSV or NDJSON, with no row cap and in
//! constant memory; `http::export` serves it as a download.
//!
//! A producer task reads the database one page (by key, not offset) at a
//! time and hands text chunks to the response through a small bounded
//! channel, so a slow download holds back the reads instead of piling rows
//! up in memory, and a closed download stops them.

use app::model::Reading;
use bytes::Bytes;
use chrono::{DateTime, SecondsFormat};
use serde::Deserialize;
use tokio::sync::mpsc;

use crate::names::valid_name;
use crate::store::{Store, StoreError};

/// Rows read from the database per query.
const PAGE_ROWS: u64 = 5_000;

/// Text per chunk handed to the response.
const CHUNK_BYTES: usize = 64 * 1024;

/// Chunks that may wait for a slow client before reads pause.
const CHUNKS_IN_FLIGHT: usize = 4;

/// The query string of an export.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ExportQuery {
    /// One metric; every metric of the device when absent.
    pub metric: Option<String>,
    /// Epoch milliseconds, inclusive; the beginning of time when absent.
    pub from: Option<i64>,
    /// Epoch milliseconds, inclusive; the end of time when absent.
    pub to: Option<i64>,
    /// `csv` (the default) or `ndjson`.
    pub format: Option<String>,
}

/// What an export is written as.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Format {
    Csv,
    Ndjson,
}

/// Why an export query was refused, in words for the person who sent it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct BadQuery(pub &'static str);

/// A checked export request.
#[derive(Debug, Clone, PartialEq)]
pub struct Export {
    device: String,
    metric: Option<String>,
    from: i64,
    to: i64,
    format: Format,
}

impl Export {
    /// Checks a query for device `device`.
    pub fn parse(device: String, q: ExportQuery) -> Result<Self, BadQuery> {
        let format = match q.format.as_deref() {
            None | Some("csv") => Format::Csv,
            Some("ndjson") => Format::Ndjson,
            Some(_) => return Err(BadQuery("format must be csv or ndjson")),
        };
        let (from, to) = (q.from.unwrap_or(i64::MIN), q.to.unwrap_or(i64::MAX));
        if from > to {
            return Err(BadQuery("from is after to"));
        }
        if q.metric.as_deref().is_some_and(|m| !valid_name(m)) {
            return Err(BadQuery("invalid metric name"));
        }
        Ok(Self {
            device,
            metric: q.metric,
            from,
            to,
            format,
        })
    }

    /// The download's media type.
    pub fn content_type(&self) -> &'static str {
        match self.format {
            Format::Csv => "text/csv; charset=utf-8",
            Format::Ndjson => "application/x-ndjson",
        }
    }

    /// The file name offered for the download. Device ids and metric names
    /// are restricted to characters that are safe inside a quoted file
    /// name.
    pub fn file_name(&self) -> String {
        let extension = match self.format {
            Format::Csv => "csv",
            Format::Ndjson => "ndjson",
        };
        match &self.metric {
            Some(m) => format!("{}-{m}.{extension}", self.device),
            None => format!("{}.{extension}", self.device),
        }
    }

    /// Starts reading in the background and returns the text as it comes,
    /// in chunks; `None` if the device is unknown. Dropping the receiver
    /// stops the reads.
    pub async fn start(self, store: &Store) -> Result<Option<mpsc::Receiver<Bytes>>, StoreError> {
        let Some(series) = store
            .series_of(&self.device, self.metric.as_deref())
            .await?
        else {
            return Ok(None);
        };
        let (tx, rx) = mpsc::channel::<Bytes>(CHUNKS_IN_FLIGHT);
        let store = store.clone();
        tokio::spawn(async move {
            let Self {
                device,
                from,
                to,
                format,
                ..
            } = self;
            if let Err(e) = produce(&store, &device, &series, from, to, format, &tx).await {
                // The status line has gone out already; ending the body
                // early is how the client learns, and the log says why.
                tracing::error!(device, "export stopped: {e}");
            }
        });
        Ok(Some(rx))
    }
}

/// Why producing stopped early.
#[derive(Debug, thiserror::Error)]
enum ProduceError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("the client went away")]
    Gone,
}

async fn produce(
    store: &Store,
    device: &str,
    series: &[(i64, String)],
    from: i64,
    to: i64,
    format: Format,
    tx: &mpsc::Sender<Bytes>,
) -> Result<(), ProduceError> {
    let mut chunk = String::with_capacity(CHUNK_BYTES + 256);
    if format == Format::Csv {
        chunk.push_str("device,metric,ts,time,value\n");
    }
    for (series_id, metric) in series {
        let mut after = None;
        loop {
            let page = store
                .readings_page(*series_id, from, to, after, PAGE_ROWS)
                .await?;
            for &(ts, _, value) in &page {
                write_row(&mut chunk, format, device, metric, ts, value);
                if chunk.len() >= CHUNK_BYTES {
                    send(tx, &mut chunk).await?;
                }
            }
            match page.last() {
                Some(&(ts, id, _)) if page.len() as u64 == PAGE_ROWS => after = Some((ts, id)),
                _ => break,
            }
        }
    }
    if !chunk.is_empty() {
        send(tx, &mut chunk).await?;
    }
    Ok(())
}

async fn send(tx: &mpsc::Sender<Bytes>, chunk: &mut String) -> Result<(), ProduceError> {
    let full = std::mem::replace(chunk, String::with_capacity(CHUNK_BYTES + 256));
    tx.send(Bytes::from(full))
        .await
        .map_err(|_| ProduceError::Gone)
}

/// Appends one reading. CSV carries the time twice: as epoch milliseconds
/// for programs and as RFC 3339 UTC for people, so no time zone is implied.
fn write_row(out: &mut String, format: Format, device: &str, metric: &str, ts: i64, value: f64) {
    use std::fmt::Write as _;
    match format {
        Format::Csv => {
            let time = DateTime::from_timestamp_millis(ts)
                .map(|t| t.to_rfc3339_opts(SecondsFormat::Millis, true))
                .unwrap_or_default();
            let _ = writeln!(out, "{device},{metric},{ts},{time},{value}");
        }
        Format::Ndjson => {
            let reading = Reading {
                device: device.to_owned(),
                metric: metric.to_owned(),
                ts,
                value,
            };
            if let Ok(line) = serde_json::to_string(&reading) {
                out.push_str(&line);
                out.push('\n');
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_carry_utc_time_and_round_trip_as_json() {
        let mut out = String::new();
        write_row(&mut out, Format::Csv, "D1", "temp", 1_700_000_000_123, 21.5);
        assert_eq!(out, "D1,temp,1700000000123,2023-11-14T22:13:20.123Z,21.5\n");
        out.clear();
        write_row(&mut out, Format::Ndjson, "D1", "temp", 5, -0.25);
        let back: Reading = serde_json::from_str(out.trim_end()).expect("json");
        assert_eq!((back.ts, back.value), (5, -0.25));
    }
    #[test]
    fn a_query_is_checked_before_anything_is_read() {
        let q = |format: Option<&str>, from, to, metric: Option<&str>| ExportQuery {
            metric: metric.map(str::to_owned),
            from,
            to,
            format: format.map(str::to_owned),
        };
        let ok =
            Export::parse("D1".into(), q(Some("ndjson"), None, None, Some("temp"))).expect("valid");
        assert_eq!(ok.file_name(), "D1-temp.ndjson");
        assert_eq!(ok.content_type(), "application/x-ndjson");
        let all = Export::parse("D1".into(), q(None, Some(1), Some(1), None)).expect("valid");
        assert_eq!(all.file_name(), "D1.csv");
        for (bad, why) in [
            (
                q(Some("xml"), None, None, None),
                "format must be csv or ndjson",
            ),
            (q(None, Some(2), Some(1), None), "from is after to"),
            (q(None, None, None, Some("a b")), "invalid metric name"),
        ] {
            assert_eq!(Export::parse("D1".into(), bad), Err(BadQuery(why)));
        }
    }
}
