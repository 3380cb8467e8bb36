//! Outcome rows into Postgres by binary `COPY`.
//!
//! Why not only `INSERT … SELECT * FROM UNNEST(…) ON CONFLICT DO NOTHING`: for every row that
//! statement runs the unnest function, projects a tuple and does a speculative insertion (probe
//! the primary key, insert, confirm), and sqlx first copies every field into 24 column arrays.
//! `COPY … FROM STDIN (FORMAT binary)` hands Postgres the rows already in its wire format and
//! lets it fill heap pages in bulk. With Postgres on the gateway's own cores that server work
//! is most of what the log costs a request: the machine's CPU per passthrough row fell from
//! 26 to 19 µs in `cargo bench -p gateway --bench log_writer` (bench/README.md).
//!
//! `COPY` has no `ON CONFLICT`: a batch holding an id already stored (a retried batch whose
//! first attempt committed after its timeout) fails whole with a unique violation, and the
//! store then inserts it again with the `UNNEST` statement, which skips such ids. Any other
//! failure is returned as it is, so the writer's retry / set-aside handling is unchanged.

use chrono::{DateTime, Utc};

use super::{LogRow, LOG_COLUMNS};

/// `COPY request_log (<LOG_COLUMNS>) FROM STDIN (FORMAT binary)`.
pub(super) static COPY_STATEMENT: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    format!("COPY request_log ({}) FROM STDIN (FORMAT binary)", LOG_COLUMNS.join(", "))
});

/// Signature, flags and header-extension length of a binary `COPY` stream.
const HEADER: &[u8] = b"PGCOPY\n\xff\r\n\0\0\0\0\0\0\0\0\0";
/// The tuple count that ends the stream.
const TRAILER: [u8; 2] = (-1i16).to_be_bytes();
/// jsonb's binary format: a version byte, then the JSON text.
const JSONB_VERSION: u8 = 1;

/// Why a row could not be encoded (a timestamp outside what Postgres stores, JSON that
/// does not serialise).
#[derive(Debug, thiserror::Error)]
#[error("encoding an outcome row for COPY: {0}")]
pub(super) struct EncodeError(String);

/// The `COPY` stream of `rows`: header, one tuple per row in [`LOG_COLUMNS`] order, trailer.
pub(super) fn encode(rows: &[LogRow]) -> Result<Vec<u8>, EncodeError> {
    // Passthrough rows take ~250 bytes; routed ones add a 1.5 KB embedding and the decision.
    let mut out = Vec::with_capacity(HEADER.len() + rows.len() * 320 + TRAILER.len());
    out.extend_from_slice(HEADER);
    for row in rows {
        encode_row(&mut out, row)?;
    }
    out.extend_from_slice(&TRAILER);
    Ok(out)
}

fn encode_row(out: &mut Vec<u8>, row: &LogRow) -> Result<(), EncodeError> {
    let fields = i16::try_from(LOG_COLUMNS.len()).map_err(|e| EncodeError(e.to_string()))?;
    out.extend_from_slice(&fields.to_be_bytes());
    // In LOG_COLUMNS order; the test below checks the count against the column list.
    field(out, Some(row.id.as_bytes().as_slice()))?;
    field(out, Some(&timestamptz(row.created_at)?.to_be_bytes()))?;
    text(out, row.tenant.as_deref())?;
    field(out, row.key_id.as_ref().map(|id| id.as_bytes().as_slice()))?;
    text(out, row.route.as_deref())?;
    text(out, Some(&row.provider))?;
    text(out, Some(&row.model))?;
    field(out, Some(&[u8::from(row.stream)]))?;
    match &row.candidates {
        Some(decision) => {
            let at = begin_field(out);
            out.push(JSONB_VERSION);
            serde_json::to_writer(&mut *out, decision).map_err(|e| EncodeError(e.to_string()))?;
            end_field(out, at)?;
        }
        None => null(out),
    }
    field(out, row.propensity.map(f64::to_be_bytes).as_ref().map(|b| b.as_slice()))?;
    text(out, row.checkpoint_version.as_deref())?;
    text(out, row.shadow_choice.as_deref())?;
    text(out, row.prompt_hash.as_deref())?;
    field(out, row.embedding.as_deref())?;
    text(out, row.prompt_text.as_deref())?;
    text(out, row.answer_text.as_deref())?;
    field(out, row.prompt_tokens.map(i64::to_be_bytes).as_ref().map(|b| b.as_slice()))?;
    field(out, row.completion_tokens.map(i64::to_be_bytes).as_ref().map(|b| b.as_slice()))?;
    field(out, row.cost_usd.map(f64::to_be_bytes).as_ref().map(|b| b.as_slice()))?;
    field(out, Some(&row.latency_ms.to_be_bytes()))?;
    field(out, row.first_token_ms.map(f64::to_be_bytes).as_ref().map(|b| b.as_slice()))?;
    field(out, Some(&row.status.to_be_bytes()))?;
    text(out, row.error_class.as_deref())?;
    text(out, row.cache_result.as_deref())?;
    Ok(())
}

/// Microseconds since 2000-01-01 00:00 UTC (Postgres' epoch), as sqlx encodes a `timestamptz`.
fn timestamptz(at: DateTime<Utc>) -> Result<i64, EncodeError> {
    /// 2000-01-01 00:00 UTC in microseconds since the Unix epoch.
    const POSTGRES_EPOCH_MICROS: i64 = 946_684_800_000_000;
    at.timestamp_micros()
        .checked_sub(POSTGRES_EPOCH_MICROS)
        .ok_or_else(|| EncodeError(format!("timestamp {at} out of range")))
}

fn null(out: &mut Vec<u8>) {
    out.extend_from_slice(&(-1i32).to_be_bytes());
}

/// A field: its length, then its bytes; `None` is SQL NULL.
fn field(out: &mut Vec<u8>, value: Option<&[u8]>) -> Result<(), EncodeError> {
    match value {
        Some(bytes) => {
            let len = i32::try_from(bytes.len()).map_err(|_| EncodeError("a field over 2 GiB".into()))?;
            out.extend_from_slice(&len.to_be_bytes());
            out.extend_from_slice(bytes);
        }
        None => null(out),
    }
    Ok(())
}

fn text(out: &mut Vec<u8>, value: Option<&str>) -> Result<(), EncodeError> {
    field(out, value.map(str::as_bytes))
}

/// Reserves a field's length; [`end_field`] fills it in once the value is written.
fn begin_field(out: &mut Vec<u8>) -> usize {
    let at = out.len();
    out.extend_from_slice(&0i32.to_be_bytes());
    at
}

fn end_field(out: &mut [u8], at: usize) -> Result<(), EncodeError> {
    let len = i32::try_from(out.len() - at - 4).map_err(|_| EncodeError("a JSON value over 2 GiB".into()))?;
    out[at..at + 4].copy_from_slice(&len.to_be_bytes());
    Ok(())
}

#[cfg(test)]
#[allow(clippy::expect_used)]
mod tests {
    use chrono::TimeZone;

    use super::*;

    #[test]
    fn a_row_has_one_field_per_column_and_the_stream_is_framed() {
        let row = LogRow {
            id: uuid::Uuid::now_v7(),
            created_at: Utc.with_ymd_and_hms(2000, 1, 1, 0, 0, 1).single().expect("time"),
            tenant: None,
            key_id: None,
            route: None,
            provider: "p".into(),
            model: "m".into(),
            stream: true,
            candidates: None,
            propensity: None,
            checkpoint_version: None,
            shadow_choice: None,
            prompt_hash: None,
            embedding: None,
            prompt_text: None,
            answer_text: None,
            prompt_tokens: Some(7),
            completion_tokens: None,
            cost_usd: None,
            latency_ms: 1.5,
            first_token_ms: None,
            status: 200,
            error_class: None,
            cache_result: None,
        };
        let bytes = encode(std::slice::from_ref(&row)).expect("encode");
        assert!(bytes.starts_with(HEADER) && bytes.ends_with(&TRAILER));
        // Walk the tuple: a field count, then that many (length, bytes) fields.
        let mut at = HEADER.len();
        let count = i16::from_be_bytes([bytes[at], bytes[at + 1]]);
        assert_eq!(usize::try_from(count).expect("count"), LOG_COLUMNS.len());
        at += 2;
        let mut fields = Vec::new();
        for _ in 0..count {
            let len = i32::from_be_bytes(bytes[at..at + 4].try_into().expect("len"));
            at += 4;
            match usize::try_from(len) {
                Ok(len) => {
                    fields.push(Some(bytes[at..at + len].to_vec()));
                    at += len;
                }
                // -1: NULL
                Err(_) => fields.push(None),
            }
        }
        assert_eq!(at + TRAILER.len(), bytes.len(), "nothing between the tuple and the trailer");
        assert_eq!(fields[0].as_deref(), Some(row.id.as_bytes().as_slice()));
        assert_eq!(fields[1].as_deref(), Some(1_000_000i64.to_be_bytes().as_slice()));
        assert_eq!(fields[2], None);
        assert_eq!(fields[7].as_deref(), Some([1u8].as_slice()));
        let column = |name: &str| LOG_COLUMNS.iter().position(|c| *c == name).expect("column");
        assert_eq!(fields[column("prompt_tokens")].as_deref(), Some(7i64.to_be_bytes().as_slice()));
        assert_eq!(fields[column("status")].as_deref(), Some(200i32.to_be_bytes().as_slice()));
        assert_eq!(fields[column("latency_ms")].as_deref(), Some(1.5f64.to_be_bytes().as_slice()));
    }
}
