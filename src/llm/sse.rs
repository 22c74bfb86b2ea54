//! Server-sent events: an incremental parser for provider streams and the
//! encoder for what the gateway sends on.
//!
//! Our own parser rather than a crate's so a stream can be read one event
//! at a time with a deadline on the first, and so a malformed stream is an
//! error the router can act on instead of something skipped silently.

use bytes::{Bytes, BytesMut};

/// One event: its `event:` name (if any) and its `data:` lines joined.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SseEvent {
    /// The `event:` field.
    pub event: Option<String>,
    /// The `data:` field(s), joined by newlines.
    pub data: String,
}

impl SseEvent {
    /// An event with a name.
    pub fn named(event: &str, data: String) -> SseEvent {
        SseEvent {
            event: Some(event.to_owned()),
            data,
        }
    }

    /// An event without a name (OpenAI's chunks).
    pub fn data(data: String) -> SseEvent {
        SseEvent { event: None, data }
    }

    /// The wire form, ending with the blank line.
    pub fn encode(&self) -> Bytes {
        let mut out = String::with_capacity(self.data.len() + 32);
        if let Some(e) = &self.event {
            out.push_str("event: ");
            out.push_str(e);
            out.push('\n');
        }
        for line in self.data.split('\n') {
            out.push_str("data: ");
            out.push_str(line);
            out.push('\n');
        }
        out.push('\n');
        Bytes::from(out)
    }
}

/// Longest event the parser buffers; a provider sending more without a
/// blank line is broken (or hostile) and the stream is failed.
const MAX_EVENT_BYTES: usize = 8 * 1024 * 1024;

/// Incremental parser: feed bytes, take complete events.
#[derive(Default)]
pub struct SseParser {
    buf: BytesMut,
    event: Option<String>,
    data: Option<String>,
}

/// The stream is not valid SSE.
#[derive(Debug, thiserror::Error)]
#[error("malformed event stream: {0}")]
pub struct SseError(pub &'static str);

impl SseParser {
    /// Appends bytes received from the network.
    pub fn feed(&mut self, bytes: &[u8]) -> Result<(), SseError> {
        self.buf.extend_from_slice(bytes);
        if self.buf.len() > MAX_EVENT_BYTES {
            return Err(SseError("event larger than 8 MiB"));
        }
        Ok(())
    }

    /// The next complete event, if the buffer holds one.
    pub fn next_event(&mut self) -> Result<Option<SseEvent>, SseError> {
        loop {
            let Some(end) = memchr::memchr(b'\n', &self.buf) else {
                return Ok(None);
            };
            let line = self.buf.split_to(end + 1);
            let line = line.strip_suffix(b"\n").unwrap_or(&line);
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            let line = std::str::from_utf8(line).map_err(|_| SseError("not UTF-8"))?;
            if line.is_empty() {
                if let Some(data) = self.data.take() {
                    return Ok(Some(SseEvent {
                        event: self.event.take(),
                        data,
                    }));
                }
                self.event = None;
                continue;
            }
            if line.starts_with(':') {
                continue;
            }
            let (field, value) = line.split_once(':').unwrap_or((line, ""));
            let value = value.strip_prefix(' ').unwrap_or(value);
            match field {
                "event" => self.event = Some(value.to_owned()),
                "data" => match &mut self.data {
                    Some(d) => {
                        d.push('\n');
                        d.push_str(value);
                    }
                    None => self.data = Some(value.to_owned()),
                },
                _ => {}
            }
        }
    }

    /// True when bytes of an unfinished event are still buffered.
    pub fn has_partial(&self) -> bool {
        !self.buf.iter().all(|b| b.is_ascii_whitespace()) || self.data.is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_split_events_with_crlf_and_comments() {
        let mut p = SseParser::default();
        p.feed(b": keepalive\r\nevent: message_start\r\ndata: {\"a\":")
            .unwrap();
        assert_eq!(p.next_event().unwrap(), None);
        p.feed(b"1}\r\n\r\ndata: x\ndata: y\n\n").unwrap();
        assert_eq!(
            p.next_event().unwrap(),
            Some(SseEvent::named("message_start", "{\"a\":1}".into()))
        );
        assert_eq!(p.next_event().unwrap(), Some(SseEvent::data("x\ny".into())));
        assert_eq!(p.next_event().unwrap(), None);
        assert!(!p.has_partial());
    }

    #[test]
    fn encode_round_trips() {
        let e = SseEvent::named("error", "{\"x\":\n1}".into());
        let mut p = SseParser::default();
        p.feed(&e.encode()).unwrap();
        assert_eq!(p.next_event().unwrap(), Some(e));
    }
}
