//! JSON read without building a tree: a validator that agrees with `serde_json` on what is
//! JSON and indexes an object as byte ranges, and a walk over an object's members.
//!
//! Every request body and every non-stream answer passes through the gateway, and it acts on a
//! handful of their fields. serde_json reads strings a byte at a time (about five instructions
//! a byte, and more for a tree's allocations); here strings, where most of a body's bytes are,
//! are crossed with `memchr` and one vectorised check for control characters.

use std::borrow::Cow;
use std::ops::Range;

/// How deep arrays and objects may nest: serde_json's limit when it reads a value (127
/// levels), so that the two agree on every body, and the recursion here stays bounded.
const MAX_DEPTH: usize = 127;

/// Whether `bytes` is one JSON value (with whitespace around it): UTF-8, and what serde_json
/// accepts (its strict grammar, at most [`MAX_DEPTH`] levels of nesting; like serde_json
/// skipping a value, it does not judge numbers' range or `\u` escapes' code points).
pub fn is_valid(bytes: &[u8]) -> bool {
    index_object(bytes, b"").is_some()
}

/// A validating cursor; `None` means "not JSON" (the position is then meaningless).
struct Checker<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl Checker<'_> {
    fn peek(&self) -> Option<u8> {
        self.bytes.get(self.at).copied()
    }

    fn skip_whitespace(&mut self) {
        self.at = skip_whitespace(self.bytes, self.at);
    }

    fn expect(&mut self, byte: u8) -> Option<()> {
        (self.peek() == Some(byte)).then(|| self.at += 1)
    }

    fn value(&mut self, depth_left: usize) -> Option<()> {
        match self.peek()? {
            b'"' => self.string(),
            b'{' => self.object(depth_left),
            b'[' => self.array(depth_left),
            b't' => self.literal(b"true"),
            b'f' => self.literal(b"false"),
            b'n' => self.literal(b"null"),
            b'-' | b'0'..=b'9' => self.number(),
            _ => None,
        }
    }

    fn literal(&mut self, word: &[u8]) -> Option<()> {
        self.bytes.get(self.at..)?.starts_with(word).then(|| self.at += word.len())
    }

    /// `-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?`
    fn number(&mut self) -> Option<()> {
        if self.peek() == Some(b'-') {
            self.at += 1;
        }
        match self.peek()? {
            b'0' => self.at += 1,
            b'1'..=b'9' => self.digits(),
            _ => return None,
        }
        if self.peek() == Some(b'.') {
            self.at += 1;
            self.some_digits()?;
        }
        if matches!(self.peek(), Some(b'e' | b'E')) {
            self.at += 1;
            if matches!(self.peek(), Some(b'+' | b'-')) {
                self.at += 1;
            }
            self.some_digits()?;
        }
        Some(())
    }

    fn digits(&mut self) {
        while self.peek().is_some_and(|b| b.is_ascii_digit()) {
            self.at += 1;
        }
    }

    fn some_digits(&mut self) -> Option<()> {
        let start = self.at;
        self.digits();
        (self.at > start).then_some(())
    }

    /// A string from its opening quote: no raw control characters, only JSON's escapes.
    fn string(&mut self) -> Option<()> {
        self.at += 1;
        loop {
            let rest = self.bytes.get(self.at..)?;
            let stop = memchr::memchr2(b'"', b'\\', rest)?;
            // One pass the compiler vectorises; the common case finds none.
            if rest[..stop].iter().fold(false, |seen, b| seen | (*b < 0x20)) {
                return None;
            }
            self.at += stop + 1;
            if rest[stop] == b'"' {
                return Some(());
            }
            match self.peek()? {
                b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' => self.at += 1,
                b'u' => {
                    let hex = self.bytes.get(self.at + 1..self.at + 5)?;
                    if !hex.iter().all(u8::is_ascii_hexdigit) {
                        return None;
                    }
                    self.at += 5;
                }
                _ => return None,
            }
        }
    }

    fn object(&mut self, depth_left: usize) -> Option<()> {
        self.object_with(depth_left, |check, _key, depth_left| check.value(depth_left))
    }

    fn array(&mut self, depth_left: usize) -> Option<()> {
        self.array_with(depth_left, |check, depth_left| check.value(depth_left))
    }

    /// An object from its `{`, `depth_left` levels allowed from here; `member` reads each
    /// value (given its key's text range and the levels left below).
    fn object_with(&mut self, depth_left: usize, mut member: impl FnMut(&mut Self, Range<usize>, usize) -> Option<()>) -> Option<()> {
        if depth_left == 0 {
            return None;
        }
        self.at += 1;
        self.skip_whitespace();
        if self.expect(b'}').is_some() {
            return Some(());
        }
        loop {
            if self.peek()? != b'"' {
                return None;
            }
            let key_start = self.at + 1;
            self.string()?;
            let key = key_start..self.at - 1;
            self.skip_whitespace();
            self.expect(b':')?;
            self.skip_whitespace();
            member(self, key, depth_left - 1)?;
            if self.after_item(b'}')? {
                return Some(());
            }
        }
    }

    /// An array from its `[`; `element` reads each element.
    fn array_with(&mut self, depth_left: usize, mut element: impl FnMut(&mut Self, usize) -> Option<()>) -> Option<()> {
        if depth_left == 0 {
            return None;
        }
        self.at += 1;
        self.skip_whitespace();
        if self.expect(b']').is_some() {
            return Some(());
        }
        loop {
            element(self, depth_left - 1)?;
            if self.after_item(b']')? {
                return Some(());
            }
        }
    }

    /// After a member or element: `,` and the whitespace after it (another follows; `false`),
    /// or the closing bracket (`true`; the cursor just past it, so a value's range ends there).
    fn after_item(&mut self, close: u8) -> Option<bool> {
        self.skip_whitespace();
        let byte = self.peek()?;
        self.at += 1;
        match byte {
            b',' => {
                self.skip_whitespace();
                Some(false)
            }
            _ if byte == close => Some(true),
            _ => None,
        }
    }
}

/// A JSON object read in one pass, validated: where its members are, and where the members
/// of the objects in one of its arrays are (a chat request's `messages`).
#[derive(Debug)]
pub struct ObjectIndex {
    /// The object's members, in order (a repeated key appears each time).
    pub members: Vec<MemberSpan>,
    /// The elements of the arrays under the key asked for.
    pub items: Vec<ItemSpan>,
    /// The members of those elements that are objects, in order.
    pub item_members: Vec<MemberSpan>,
}

/// One element of an indexed array.
#[derive(Debug, Clone)]
pub struct ItemSpan {
    pub value: Range<usize>,
    /// Its members (a range of `item_members`), when it is an object.
    pub members: Option<Range<usize>>,
}

/// Validates `bytes` (UTF-8, JSON's grammar, [`MAX_DEPTH`]) and, when it is a JSON object,
/// indexes its members and the elements of the arrays under `array_key`. `None`: not JSON;
/// otherwise whether it is an object, and the index (empty when it is not).
pub fn index_object(bytes: &[u8], array_key: &[u8]) -> Option<(bool, ObjectIndex)> {
    std::str::from_utf8(bytes).ok()?;
    let mut check = Checker { bytes, at: 0 };
    // Room for a typical request without regrowing: a few members, a short conversation.
    let mut index = ObjectIndex { members: Vec::with_capacity(8), items: Vec::with_capacity(8), item_members: Vec::with_capacity(16) };
    check.skip_whitespace();
    let is_object = check.peek() == Some(b'{');
    if is_object {
        check.object_with(MAX_DEPTH, |check, key, depth_left| {
            let value_start = check.at;
            if check.peek() == Some(b'[') && text_of(&bytes[key.clone()]).as_ref() == array_key {
                check.array_with(depth_left, |check, depth_left| {
                    let start = check.at;
                    let members = if check.peek() == Some(b'{') {
                        let first = index.item_members.len();
                        check.object_with(depth_left, |check, key, depth_left| {
                            let start = check.at;
                            check.value(depth_left)?;
                            index.item_members.push(MemberSpan { key, value: start..check.at });
                            Some(())
                        })?;
                        Some(first..index.item_members.len())
                    } else {
                        check.value(depth_left)?;
                        None
                    };
                    index.items.push(ItemSpan { value: start..check.at, members });
                    Some(())
                })?;
            } else {
                check.value(depth_left)?;
            }
            index.members.push(MemberSpan { key, value: value_start..check.at });
            Some(())
        })?;
    } else {
        check.value(MAX_DEPTH)?;
    }
    check.skip_whitespace();
    (check.at == bytes.len()).then_some((is_object, index))
}

/// The text of a string written as `written` (between its quotes, valid JSON): itself when it
/// has no escapes (the usual case, no copy).
pub fn text_of(written: &[u8]) -> Cow<'_, [u8]> {
    if !written.contains(&b'\\') {
        return Cow::Borrowed(written);
    }
    let mut quoted = Vec::with_capacity(written.len() + 2);
    quoted.push(b'"');
    quoted.extend_from_slice(written);
    quoted.push(b'"');
    Cow::Owned(serde_json::from_slice::<String>(&quoted).map(String::into_bytes).unwrap_or_default())
}

/// One member of an object: where its key's text (between the quotes, escapes as written)
/// and its value's JSON are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberSpan {
    pub key: Range<usize>,
    pub value: Range<usize>,
}

/// The members of the object at the start of `bytes` (after whitespace), in order. On
/// bytes that are not JSON it stops early rather than fail, so it also serves to look
/// into answers not validated first. Ranges are into `bytes`.
pub fn members(bytes: &[u8]) -> Members<'_> {
    let at = skip_whitespace(bytes, 0);
    let open = bytes.get(at) == Some(&b'{');
    Members { bytes, at: at + 1, done: !open, closed: false }
}

pub struct Members<'a> {
    bytes: &'a [u8],
    at: usize,
    done: bool,
    closed: bool,
}

impl Iterator for Members<'_> {
    type Item = MemberSpan;

    fn next(&mut self) -> Option<MemberSpan> {
        if self.done {
            return None;
        }
        let member = self.read();
        if member.is_none() {
            self.done = true;
        }
        member
    }
}

impl Members<'_> {
    /// Whether the object's closing brace was reached (so every member was seen).
    pub fn reached_the_end(&self) -> bool {
        self.closed
    }

    fn read(&mut self) -> Option<MemberSpan> {
        let bytes = self.bytes;
        let mut at = skip_whitespace(bytes, self.at);
        if bytes.get(at) != Some(&b'"') {
            // `}` (an empty object), or not an object key
            self.closed = self.at == skip_whitespace(bytes, 0) + 1 && bytes.get(at) == Some(&b'}');
            return None;
        }
        let key_end = string_end(bytes, at)?;
        let key = at + 1..key_end - 1;
        at = skip_whitespace(bytes, key_end);
        if bytes.get(at) != Some(&b':') {
            return None;
        }
        at = skip_whitespace(bytes, at + 1);
        let value_end = value_end(bytes, at)?;
        let value = at..value_end;
        at = skip_whitespace(bytes, value_end);
        match bytes.get(at) {
            Some(b',') => self.at = at + 1,
            Some(b'}') => {
                self.done = true;
                self.closed = true;
            }
            _ => return None,
        }
        // After the closing brace there is nothing more to read, but this member is whole.
        Some(MemberSpan { key, value })
    }
}

/// JSON's whitespace (not `u8::is_ascii_whitespace`, which has form feed too).
fn is_json_whitespace(byte: &u8) -> bool {
    matches!(byte, b' ' | b'\t' | b'\n' | b'\r')
}

fn skip_whitespace(bytes: &[u8], mut at: usize) -> usize {
    while bytes.get(at).is_some_and(is_json_whitespace) {
        at += 1;
    }
    at
}

/// Just past the string that opens at `start` (a `"`), stepping over escapes.
fn string_end(bytes: &[u8], start: usize) -> Option<usize> {
    let mut at = start + 1;
    loop {
        at += memchr::memchr2(b'"', b'\\', bytes.get(at..)?)?;
        if bytes.get(at) == Some(&b'"') {
            return Some(at + 1);
        }
        at += 2;
    }
}

/// Just past the value that starts at `start`: a string, an object or array (to its matching
/// bracket, strings inside stepped over), or a number / literal (to the next delimiter).
fn value_end(bytes: &[u8], start: usize) -> Option<usize> {
    match bytes.get(start)? {
        b'"' => string_end(bytes, start),
        b'{' | b'[' => {
            let mut depth = 0usize;
            let mut at = start;
            loop {
                match bytes.get(at)? {
                    b'"' => {
                        at = string_end(bytes, at)?;
                        continue;
                    }
                    b'{' | b'[' => depth += 1,
                    b'}' | b']' => {
                        depth = depth.checked_sub(1)?;
                        if depth == 0 {
                            return Some(at + 1);
                        }
                    }
                    _ => {}
                }
                at += 1;
            }
        }
        _ => {
            let mut at = start;
            while bytes.get(at).is_some_and(|b| !matches!(b, b',' | b'}' | b']') && !is_json_whitespace(b)) {
                at += 1;
            }
            (at > start).then_some(at)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What the validator is held to: serde_json's grammar, and UTF-8.
    pub(crate) fn serde_accepts(bytes: &[u8]) -> bool {
        std::str::from_utf8(bytes).is_ok() && serde_json::from_slice::<serde::de::IgnoredAny>(bytes).is_ok()
    }

    #[test]
    fn validation_agrees_with_serde_json_on_edge_cases() {
        let cases: &[&[u8]] = &[
            b"{}", b" [ ] ", b"0", b"-0", b"01", b"1.", b"1.5e", b"1e+5", b"-", b"1.0E-3", b"\"\\u00e9\"", b"\"\\u00g9\"",
            b"\"\\x\"", b"\"a\nb\"", b"\"\x7f\"", b"tru", b"true false", b"{\"a\":}", b"{\"a\":1,}", b"[1,]", b"[,1]",
            b"{\"a\" 1}", b"{1:2}", b"\"\xff\"", b"\"\xc3\xa9\"", b"", b"   ", b"nul", b"{\"a\":[1,{\"b\":null}]}\n",
            b"\"\\ud800\"", b"[1]x", b"\x0c1", b"-01", b"\"abc", b"{\"a\":\"b\\\"}", b"1 2",
        ];
        for case in cases {
            assert_eq!(is_valid(case), serde_accepts(case), "{}", String::from_utf8_lossy(case));
        }
    }

    #[test]
    fn nesting_is_limited_where_serde_json_limits_it() {
        // serde_json skipping a value (`IgnoredAny`) has no limit; reading one has.
        for depth in [127, 128, 129, 200] {
            let text = format!("{}{}", "[".repeat(depth), "]".repeat(depth));
            assert_eq!(is_valid(text.as_bytes()), serde_json::from_str::<serde_json::Value>(&text).is_ok(), "depth {depth}");
        }
        assert!(is_valid(format!("{}{}", "[".repeat(127), "]".repeat(127)).as_bytes()));
        assert!(!is_valid(format!("{}{}", "[".repeat(128), "]".repeat(128)).as_bytes()));
        assert!(is_valid(format!("{}1{}", "{\"a\":".repeat(127), "}".repeat(127)).as_bytes()));
        assert!(!is_valid(format!("{}1{}", "{\"a\":".repeat(128), "}".repeat(128)).as_bytes()));
    }

    #[test]
    fn members_are_found_in_place() {
        let body = br#" { "a" : [1, {"x":"]"}] , "b\"c":"d", "e":-1.5e3,"f":null } "#;
        let found: Vec<(&[u8], &[u8])> = members(body).map(|m| (&body[m.key], &body[m.value])).collect();
        let expected: Vec<(&[u8], &[u8])> =
            vec![(b"a", br#"[1, {"x":"]"}]"#), (br#"b\"c"#, br#""d""#), (b"e", b"-1.5e3"), (b"f", b"null")];
        assert_eq!(found, expected);
        assert_eq!(members(b"{}").count(), 0);
        assert_eq!(members(b"[1]").count(), 0);
        // Cut short: the whole members only.
        assert_eq!(members(br#"{"a":1,"b":[2"#).count(), 1);
    }
}
