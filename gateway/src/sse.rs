//! Server-sent events: an incremental parser for upstream streams and the framing we emit.
//!
//! Upstreams split events across network reads arbitrarily, so the parser buffers bytes until
//! a blank line ends an event and hands back whole events, each with its raw bytes so an
//! OpenAI-compatible stream can be forwarded byte for byte.

use bytes::{Bytes, BytesMut};

/// One parsed event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SseEvent {
    /// The `event:` field, if any (Anthropic names its events; OpenAI does not).
    pub event: Option<String>,
    /// The `data:` lines joined by `\n`, valid UTF-8: a slice of `raw` when the event has one
    /// `data:` line (the usual case), so most events cost no copy.
    data: Bytes,
    /// The event exactly as received, including its terminating blank line.
    pub raw: Bytes,
}

impl SseEvent {
    /// The `data:` lines joined by `\n` (empty for a comment-only block).
    pub fn data(&self) -> &str {
        // Checked (or made lossy) when the event was parsed, so this never falls back.
        std::str::from_utf8(&self.data).unwrap_or_default()
    }

    /// The same as bytes, for a caller that only searches them (no UTF-8 check).
    pub fn data_bytes(&self) -> &[u8] {
        &self.data
    }

    pub fn into_data(self) -> String {
        self.data().to_owned()
    }

    pub fn is_done(&self) -> bool {
        &self.data[..] == b"[DONE]"
    }
}

/// Reassembles events from network reads. Reads are kept as `Bytes` and events are sliced
/// out of them; bytes are copied only when an event spans two reads.
#[derive(Debug, Default)]
pub struct SseParser {
    buffer: Bytes,
}

impl SseParser {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds bytes from the network.
    pub fn push(&mut self, chunk: impl Into<Bytes>) {
        let chunk = chunk.into();
        if self.buffer.is_empty() {
            self.buffer = chunk;
        } else if !chunk.is_empty() {
            let mut joined = BytesMut::with_capacity(self.buffer.len() + chunk.len());
            joined.extend_from_slice(&self.buffer);
            joined.extend_from_slice(&chunk);
            self.buffer = joined.freeze();
        }
    }

    /// Adds bytes from a borrowed slice (copied).
    pub fn push_slice(&mut self, chunk: &[u8]) {
        self.push(Bytes::copy_from_slice(chunk));
    }

    /// The next complete event, if one is buffered. Comment-only blocks (keep-alives such as
    /// `: ping`) come back as events with empty data so a forwarder may pass them on.
    pub fn next_event(&mut self) -> Option<SseEvent> {
        let (end, terminator) = find_event_end(&self.buffer)?;
        let raw = self.buffer.split_to(end + terminator);
        let (event, data) = parse_fields(&raw, end);
        Some(SseEvent { event, data, raw })
    }

    /// Whatever is left when the upstream closes without a final blank line.
    pub fn finish(&mut self) -> Option<SseEvent> {
        if self.buffer.iter().all(|b| b.is_ascii_whitespace()) {
            self.buffer.clear();
            return None;
        }
        self.push(Bytes::from_static(b"\n\n"));
        self.next_event()
    }
}

/// The `event:` field and the `data:` lines (joined by `\n`) of `raw[..end]`, one event's
/// text. Works on bytes: `:` and `\n` never occur inside a multi-byte UTF-8 sequence.
fn parse_fields(raw: &Bytes, end: usize) -> (Option<String>, Bytes) {
    let mut event = None;
    let mut data: Option<Bytes> = None;
    let mut joined: Option<Vec<u8>> = None;
    let mut start = 0;
    while start <= end {
        let line_end = memchr::memchr(b'\n', &raw[start..end]).map_or(end, |i| start + i);
        let line = &raw[start..line_end];
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let (field, value) = match memchr::memchr(b':', line) {
            Some(colon) => {
                let value = &line[colon + 1..];
                (&line[..colon], value.strip_prefix(b" ").unwrap_or(value))
            }
            None => (line, &line[line.len()..]),
        };
        match field {
            b"data" => match (&data, &mut joined) {
                (None, _) => data = Some(raw.slice_ref(value)),
                (Some(first), None) => {
                    let mut all = Vec::with_capacity(first.len() + 1 + value.len());
                    all.extend_from_slice(first);
                    all.push(b'\n');
                    all.extend_from_slice(value);
                    joined = Some(all);
                }
                (Some(_), Some(all)) => {
                    all.push(b'\n');
                    all.extend_from_slice(value);
                }
            },
            b"event" => event = Some(String::from_utf8_lossy(value).into_owned()),
            _ => {}
        }
        start = line_end + 1;
    }
    let data = match joined {
        Some(all) => Bytes::from(all),
        None => data.unwrap_or_default(),
    };
    let data = match std::str::from_utf8(&data) {
        Ok(_) => data,
        Err(_) => Bytes::from(String::from_utf8_lossy(&data).into_owned()),
    };
    (event, data)
}

/// Position of the blank line ending the first event and the terminator's length.
fn find_event_end(buffer: &[u8]) -> Option<(usize, usize)> {
    for i in memchr::memchr_iter(b'\n', buffer) {
        match buffer.get(i + 1..) {
            Some([b'\n', ..]) => return Some((i, 2)),
            Some([b'\r', b'\n', ..]) => return Some((i, 3)),
            _ => {}
        }
    }
    None
}

/// Frames a JSON payload as an SSE data event.
pub fn data_event(json: &str) -> Bytes {
    let mut out = String::with_capacity(json.len() + 8);
    out.push_str("data: ");
    out.push_str(json);
    out.push_str("\n\n");
    Bytes::from(out)
}

pub const DONE_EVENT: &[u8] = b"data: [DONE]\n\n";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_split_across_reads_are_reassembled() {
        let mut parser = SseParser::new();
        parser.push_slice(b"data: {\"a\"");
        assert!(parser.next_event().is_none());
        parser.push_slice(b":1}\n\ndata: [DONE]\n");
        let first = parser.next_event().expect("one event");
        assert_eq!(first.data(), "{\"a\":1}");
        assert_eq!(&first.raw[..], b"data: {\"a\":1}\n\n");
        assert!(parser.next_event().is_none());
        parser.push_slice(b"\n");
        assert!(parser.next_event().expect("done").is_done());
    }

    #[test]
    fn named_events_and_crlf() {
        let mut parser = SseParser::new();
        parser.push_slice(b"event: message_start\r\ndata: {}\r\n\r\n: ping\n\n");
        let event = parser.next_event().expect("event");
        assert_eq!(event.event.as_deref(), Some("message_start"));
        assert_eq!(event.data(), "{}");
        let comment = parser.next_event().expect("comment");
        assert_eq!(comment.data(), "");
    }

    #[test]
    fn multi_line_data_is_joined() {
        let mut parser = SseParser::new();
        parser.push_slice(b"data: a\ndata: b\n\n");
        assert_eq!(parser.next_event().expect("event").data(), "a\nb");
    }

    #[test]
    fn trailing_event_without_blank_line() {
        let mut parser = SseParser::new();
        parser.push_slice(b"data: x");
        assert!(parser.next_event().is_none());
        assert_eq!(parser.finish().expect("event").data(), "x");
        assert!(parser.finish().is_none());
    }

    #[test]
    fn events_of_one_read_are_slices_of_it() {
        let read = Bytes::from_static(b"data: {\"a\":1}\n\ndata: {\"b\":2}\n\ndata: [DONE]\n\n");
        let range = read.as_ptr_range();
        let mut parser = SseParser::new();
        parser.push(read.clone());
        let mut datas = Vec::new();
        while let Some(event) = parser.next_event() {
            assert!(range.contains(&event.raw.as_ptr()), "raw bytes copied");
            if !event.data().is_empty() {
                assert!(range.contains(&event.data().as_ptr()), "data copied");
            }
            datas.push(event.data().to_owned());
        }
        assert_eq!(datas, ["{\"a\":1}", "{\"b\":2}", "[DONE]"]);
    }

    #[test]
    fn invalid_utf8_is_replaced_not_dropped() {
        let mut parser = SseParser::new();
        parser.push_slice(b"data: caf\xc3\n\n");
        let event = parser.next_event().expect("event");
        assert_eq!(event.data(), "caf\u{fffd}");
        assert_eq!(&event.raw[..], b"data: caf\xc3\n\n");
    }

    #[test]
    fn an_event_split_over_three_reads_keeps_its_bytes() {
        let mut parser = SseParser::new();
        for part in [&b"event: x\r\nda"[..], b"ta: 1\r\ndata: 2", b"\r\n\r\ndata: 3\n\n"] {
            parser.push_slice(part);
        }
        let first = parser.next_event().expect("first");
        assert_eq!((first.event.as_deref(), first.data()), (Some("x"), "1\n2"));
        assert_eq!(&first.raw[..], b"event: x\r\ndata: 1\r\ndata: 2\r\n\r\n");
        assert_eq!(parser.next_event().expect("second").data(), "3");
        assert!(parser.next_event().is_none());
    }
}
