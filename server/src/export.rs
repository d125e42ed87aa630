//! Export: `GET /api/devices/{id}/export` streams a device's raw readings as
//! CSV or NDJSON, with no row cap and in constant memory.
//!
//! A producer task reads the database one page (by key, not offset) at a
//! time and hands text chunks to the response through a small bounded
//! channel, so a slow download holds back the reads instead of piling rows
//! up in memory, and a closed download stops them.

use app::model::Reading;
use axum::body::{Body, Bytes};
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, SecondsFormat};
use serde::Deserialize;
use tokio::sync::mpsc;

use crate::http::{AppState, HttpError};
use crate::ingest::decode::valid_name;
use crate::store::Store;

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
    metric: Option<String>,
    /// Epoch milliseconds, inclusive; the beginning of time when absent.
    from: Option<i64>,
    /// Epoch milliseconds, inclusive; the end of time when absent.
    to: Option<i64>,
    /// `csv` (the default) or `ndjson`.
    format: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Format {
    Csv,
    Ndjson,
}

/// `GET /api/devices/{id}/export?metric=&from=&to=&format=csv|ndjson`.
#[utoipa::path(get, path = "/api/devices/{id}/export", tag = "devices",
    security(("session" = []), ("token" = [])),
    extensions(("x-required-role" = json!("viewer"))),
    params(("id" = String, Path, description = "Device id"), ExportQuery),
    responses((status = 200, description = "Raw readings, streamed: `ts,metric,value` rows or one JSON object per line",
            content((String = "text/csv"), (String = "application/x-ndjson"))),
        (status = 400, description = "Invalid query", body = crate::http::openapi::ErrorBody),
        (status = 404, description = "No such device", body = crate::http::openapi::ErrorBody),
        crate::http::openapi::Refused))]
pub async fn export(
    State(state): State<AppState>,
    Path(id): Path<String>,
    query: Result<Query<ExportQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, HttpError> {
    let Query(q) = query.map_err(|e| HttpError::BadRequest(e.body_text()))?;
    let format = match q.format.as_deref() {
        None | Some("csv") => Format::Csv,
        Some("ndjson") => Format::Ndjson,
        Some(_) => return Err(HttpError::BadRequest("format must be csv or ndjson".into())),
    };
    let (from, to) = (q.from.unwrap_or(i64::MIN), q.to.unwrap_or(i64::MAX));
    if from > to {
        return Err(HttpError::BadRequest("from is after to".into()));
    }
    if let Some(m) = &q.metric {
        if !valid_name(m) {
            return Err(HttpError::BadRequest("invalid metric name".into()));
        }
    }
    let series = state
        .store
        .series_of(&id, q.metric.as_deref())
        .await?
        .ok_or(HttpError::NotFound)?;
    let (tx, mut rx) = mpsc::channel::<Bytes>(CHUNKS_IN_FLIGHT);
    let store = state.store.clone();
    let device = id.clone();
    tokio::spawn(async move {
        if let Err(e) = produce(&store, &device, &series, from, to, format, &tx).await {
            // The status line has gone out already; ending the body early
            // is how the client learns, and the log says why.
            tracing::error!(device, "export stopped: {e}");
        }
    });
    let body = futures_util::stream::poll_fn(move |cx| {
        rx.poll_recv(cx)
            .map(|chunk| chunk.map(Ok::<_, std::io::Error>))
    });
    let (content_type, extension) = match format {
        Format::Csv => ("text/csv; charset=utf-8", "csv"),
        Format::Ndjson => ("application/x-ndjson", "ndjson"),
    };
    let name = match &q.metric {
        Some(m) => format!("{id}-{m}.{extension}"),
        None => format!("{id}.{extension}"),
    };
    let mut response = Body::from_stream(body).into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    // Device ids and metric names are restricted to characters that are
    // safe inside a quoted file name.
    if let Ok(v) = HeaderValue::from_str(&format!("attachment; filename=\"{name}\"")) {
        headers.insert(header::CONTENT_DISPOSITION, v);
    }
    *response.status_mut() = StatusCode::OK;
    Ok(response)
}

/// Why producing stopped early.
#[derive(Debug, thiserror::Error)]
enum ProduceError {
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
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
}
