//! Server-sent events: an incremental parser for upstream streams and the framing we emit.
//!
//! Upstreams split events across network reads arbitrarily, so the parser buffers bytes until
//! a blank line ends an event and hands back whole events, each with its raw bytes so an
//! OpenAI-compatible stream can be forwarded byte for byte.

use bytes::{Buf, Bytes, BytesMut};

/// One parsed event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SseEvent {
    /// The `event:` field, if any (Anthropic names its events; OpenAI does not).
    pub event: Option<String>,
    /// The `data:` lines joined by `\n`.
    pub data: String,
    /// The event exactly as received, including its terminating blank line.
    pub raw: Bytes,
}

impl SseEvent {
    pub fn is_done(&self) -> bool {
        self.data == "[DONE]"
    }
}

#[derive(Debug, Default)]
pub struct SseParser {
    buffer: BytesMut,
}

impl SseParser {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds bytes from the network.
    pub fn push(&mut self, chunk: &[u8]) {
        self.buffer.extend_from_slice(chunk);
    }

    /// The next complete event, if one is buffered. Comment-only blocks (keep-alives such as
    /// `: ping`) come back as events with empty data so a forwarder may pass them on.
    pub fn next_event(&mut self) -> Option<SseEvent> {
        let (end, terminator) = find_event_end(&self.buffer)?;
        let raw = self.buffer.split_to(end + terminator).freeze();
        // One UTF-8 check for the whole event (the common case), not one per line.
        let (event, data) = match std::str::from_utf8(&raw[..end]) {
            Ok(body) => parse_fields(body),
            Err(_) => parse_fields(&String::from_utf8_lossy(&raw[..end])),
        };
        Some(SseEvent { event, data, raw })
    }

    /// Whatever is left when the upstream closes without a final blank line.
    pub fn finish(&mut self) -> Option<SseEvent> {
        if self.buffer.iter().all(|b| b.is_ascii_whitespace()) {
            self.buffer.advance(self.buffer.len());
            return None;
        }
        self.buffer.extend_from_slice(b"\n\n");
        self.next_event()
    }
}

/// The `event:` field and the `data:` lines (joined by `\n`) of one event's text.
fn parse_fields(body: &str) -> (Option<String>, String) {
    let mut event = None;
    let mut data: Option<String> = None;
    for line in body.split('\n') {
        let line = line.strip_suffix('\r').unwrap_or(line);
        let (field, value) = match line.split_once(':') {
            Some((field, value)) => (field, value.strip_prefix(' ').unwrap_or(value)),
            None => (line, ""),
        };
        match field {
            "data" => match &mut data {
                Some(existing) => {
                    existing.push('\n');
                    existing.push_str(value);
                }
                None => data = Some(value.to_owned()),
            },
            "event" => event = Some(value.to_owned()),
            _ => {}
        }
    }
    (event, data.unwrap_or_default())
}

/// Position of the blank line ending the first event and the terminator's length.
fn find_event_end(buffer: &[u8]) -> Option<(usize, usize)> {
    let mut i = 0;
    while i + 1 < buffer.len() {
        if buffer[i] == b'\n' {
            if buffer[i + 1] == b'\n' {
                return Some((i, 2));
            }
            if buffer[i + 1] == b'\r' && buffer.get(i + 2) == Some(&b'\n') {
                return Some((i, 3));
            }
        }
        i += 1;
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
        parser.push(b"data: {\"a\"");
        assert!(parser.next_event().is_none());
        parser.push(b":1}\n\ndata: [DONE]\n");
        let first = parser.next_event().expect("one event");
        assert_eq!(first.data, "{\"a\":1}");
        assert_eq!(&first.raw[..], b"data: {\"a\":1}\n\n");
        assert!(parser.next_event().is_none());
        parser.push(b"\n");
        assert!(parser.next_event().expect("done").is_done());
    }

    #[test]
    fn named_events_and_crlf() {
        let mut parser = SseParser::new();
        parser.push(b"event: message_start\r\ndata: {}\r\n\r\n: ping\n\n");
        let event = parser.next_event().expect("event");
        assert_eq!(event.event.as_deref(), Some("message_start"));
        assert_eq!(event.data, "{}");
        let comment = parser.next_event().expect("comment");
        assert_eq!(comment.data, "");
    }

    #[test]
    fn multi_line_data_is_joined() {
        let mut parser = SseParser::new();
        parser.push(b"data: a\ndata: b\n\n");
        assert_eq!(parser.next_event().expect("event").data, "a\nb");
    }

    #[test]
    fn trailing_event_without_blank_line() {
        let mut parser = SseParser::new();
        parser.push(b"data: x");
        assert!(parser.next_event().is_none());
        assert_eq!(parser.finish().expect("event").data, "x");
        assert!(parser.finish().is_none());
    }
}
