//! Server-sent events: an incremental parser for upstream streams and the framing we emit.
//!
//! Upstreams split events across network reads arbitrarily, so the parser buffers bytes until
//! a blank line ends an event and hands back whole events, each with its raw bytes so an
//! OpenAI-compatible stream can be forwarded byte for byte.

use std::borrow::Cow;
use std::ops::Range;

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
        if self.close() {
            self.next_event()
        } else {
            None
        }
    }

    /// Every complete event buffered, as one span of bytes (a slice of the read that brought
    /// them; copied only when an event spans two reads); `None` when none is complete. For a
    /// forwarder that passes events on unchanged: [`events`] walks the span.
    pub fn take_complete(&mut self) -> Option<Bytes> {
        let mut end = 0;
        while let Some((text_end, terminator)) = find_event_end(&self.buffer[end..]) {
            end += text_end + terminator;
        }
        (end > 0).then(|| self.buffer.split_to(end))
    }

    /// As [`take_complete`](Self::take_complete) when the upstream has closed: a last event
    /// without its blank line counts as complete.
    pub fn take_rest(&mut self) -> Option<Bytes> {
        self.close();
        self.take_complete()
    }

    /// Ends a last event that lacks its blank line; false (and an empty buffer) when only
    /// whitespace is left.
    fn close(&mut self) -> bool {
        if self.buffer.iter().all(|b| b.is_ascii_whitespace()) {
            self.buffer.clear();
            return false;
        }
        self.push(Bytes::from_static(b"\n\n"));
        true
    }
}

/// The events of a span of complete events ([`SseParser::take_complete`]): each event's range
/// in the span (its blank line included) and its `data:` value, borrowed from the span unless
/// the event has several `data:` lines. No UTF-8 check: for a caller that only searches bytes.
pub fn events(span: &[u8]) -> impl Iterator<Item = (Range<usize>, Cow<'_, [u8]>)> + '_ {
    let mut start = 0;
    std::iter::from_fn(move || {
        let (text_end, terminator) = find_event_end(&span[start..])?;
        let range = start..start + text_end + terminator;
        let (_, data) = fields(&span[start..start + text_end]);
        start = range.end;
        Some((range, data))
    })
}

/// The `event:` field and the `data:` lines (joined by `\n`) of one event's text (without its
/// blank line). Works on bytes: `:` and `\n` never occur inside a multi-byte UTF-8 sequence.
fn fields(text: &[u8]) -> (Option<&[u8]>, Cow<'_, [u8]>) {
    let mut event = None;
    let mut data: Option<Cow<'_, [u8]>> = None;
    let end = text.len();
    let mut start = 0;
    while start <= end {
        let line_end = memchr::memchr(b'\n', &text[start..end]).map_or(end, |i| start + i);
        let line = &text[start..line_end];
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let (field, value) = match memchr::memchr(b':', line) {
            Some(colon) => {
                let value = &line[colon + 1..];
                (&line[..colon], value.strip_prefix(b" ").unwrap_or(value))
            }
            None => (line, &line[line.len()..]),
        };
        match field {
            b"data" => match &mut data {
                None => data = Some(Cow::Borrowed(value)),
                Some(joined) => {
                    let joined = joined.to_mut();
                    joined.push(b'\n');
                    joined.extend_from_slice(value);
                }
            },
            b"event" => event = Some(value),
            _ => {}
        }
        start = line_end + 1;
    }
    (event, data.unwrap_or_default())
}

/// The `event:` field and the `data:` lines (joined by `\n`, valid UTF-8) of `raw[..end]`,
/// one event's text; the data is a slice of `raw` when the event has one `data:` line.
fn parse_fields(raw: &Bytes, end: usize) -> (Option<String>, Bytes) {
    let (event, data) = fields(&raw[..end]);
    let event = event.map(|name| String::from_utf8_lossy(name).into_owned());
    let data = match data {
        Cow::Borrowed([]) => Bytes::new(),
        Cow::Borrowed(value) => raw.slice_ref(value),
        Cow::Owned(joined) => Bytes::from(joined),
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

    #[test]
    fn complete_events_are_taken_as_one_span_of_the_read() {
        let read = Bytes::from_static(b"data: a\n\nevent: x\r\ndata: b\r\ndata: c\r\n\r\ndata: d");
        let mut parser = SseParser::new();
        parser.push(read.clone());
        let span = parser.take_complete().expect("two complete events");
        assert_eq!(span.as_ptr(), read.as_ptr(), "a slice of the read, not a copy");
        assert_eq!(&span[..], b"data: a\n\nevent: x\r\ndata: b\r\ndata: c\r\n\r\n");
        let parsed: Vec<(std::ops::Range<usize>, Vec<u8>)> = events(&span).map(|(range, data)| (range, data.into_owned())).collect();
        assert_eq!(parsed, [(0..9, b"a".to_vec()), (9..span.len(), b"b\nc".to_vec())]);
        assert!(parser.take_complete().is_none(), "`data: d` has no blank line yet");
        parser.push_slice(b"\n");
        assert!(parser.take_complete().is_none());
        let rest = parser.take_rest().expect("the last event, closed");
        assert_eq!(events(&rest).map(|(_, data)| data.into_owned()).collect::<Vec<_>>(), [b"d".to_vec()]);
        assert!(parser.take_rest().is_none());
    }
}
