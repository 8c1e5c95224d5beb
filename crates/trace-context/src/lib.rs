//! One trace per order. The W3C `traceparent` (<https://www.w3.org/TR/trace-context/>) is
//! parsed and formatted here, and carried by the helpers below: the gateway forwards it to
//! the upstream ([`forward_headers`]), a request span or an inbox span continues it
//! ([`continue_trace`]), and a message sent from inside such a span carries a child of it
//! ([`outgoing`]). The spans are `tracing` spans; the OpenTelemetry layer installed by
//! [`crate::telemetry::init`] gives them their ids and exports them when configured.

use std::fmt;

use http::{HeaderMap, HeaderName, HeaderValue, Request};
use opentelemetry::{
    Context,
    trace::{SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState},
};
use tracing::Span;
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// The header (HTTP) and the message header (AMQP, outbox rows) that carry the trace.
pub const TRACEPARENT: &str = "traceparent";

/// [`TRACEPARENT`] as a header name: looking a `&str` up in a `HeaderMap` parses it first.
const TRACEPARENT_HEADER: HeaderName = HeaderName::from_static(TRACEPARENT);

/// A valid `traceparent`: neither id is zero.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceParent {
    pub trace_id: u128,
    /// The span of the sender, the parent of the receiver's span.
    pub parent_id: u64,
    pub flags: u8,
}

impl TraceParent {
    /// Parses a `traceparent`; `None` for anything the specification says to ignore
    /// (then the receiver starts a new trace).
    pub fn parse(value: &str) -> Option<Self> {
        let mut fields = value.trim().split('-');
        let (version, trace, parent, flags) = (
            fields.next()?,
            fields.next()?,
            fields.next()?,
            fields.next()?,
        );
        // Version 00 has exactly four fields; a later version may append more.
        let valid_version = hex(version, 2) && version != "ff";
        if !valid_version || (version == "00" && fields.next().is_some()) {
            return None;
        }
        if !(hex(trace, 32) && hex(parent, 16) && hex(flags, 2)) {
            return None;
        }
        let parsed = TraceParent {
            trace_id: u128::from_str_radix(trace, 16).ok()?,
            parent_id: u64::from_str_radix(parent, 16).ok()?,
            flags: u8::from_str_radix(flags, 16).ok()?,
        };
        (parsed.trace_id != 0 && parsed.parent_id != 0).then_some(parsed)
    }

    /// A new trace, sampled.
    pub fn new_root() -> Self {
        TraceParent {
            trace_id: nonzero(rand::random),
            parent_id: nonzero(rand::random),
            flags: TraceFlags::SAMPLED.to_u8(),
        }
    }

    /// The same trace, from a new span.
    pub fn child(&self) -> Self {
        TraceParent {
            parent_id: nonzero(rand::random),
            ..*self
        }
    }

    /// The trace id as logs and collectors show it: 32 lowercase hex digits.
    pub fn trace_id_hex(&self) -> String {
        format!("{:032x}", self.trace_id)
    }

    fn span_context(&self) -> SpanContext {
        SpanContext::new(
            TraceId::from(self.trace_id),
            SpanId::from(self.parent_id),
            TraceFlags::new(self.flags),
            true,
            TraceState::default(),
        )
    }

    fn of_span(span: &Span) -> Option<Self> {
        let cx = span.context();
        let sc = cx.span().span_context().clone();
        sc.is_valid().then(|| TraceParent {
            trace_id: u128::from_be_bytes(sc.trace_id().to_bytes()),
            parent_id: u64::from_be_bytes(sc.span_id().to_bytes()),
            flags: sc.trace_flags().to_u8(),
        })
    }
}

impl TraceParent {
    /// The header's text, `00-<trace>-<parent>-<flags>` in lowercase hex, written without
    /// the formatting machinery: the gateway writes one per request, and `{:032x}` through
    /// `fmt` cost it 4,000 instructions.
    fn encode(&self) -> [u8; TRACEPARENT_LEN] {
        let mut out = [b'-'; TRACEPARENT_LEN];
        out[..2].copy_from_slice(b"00");
        hex_into(&mut out[3..35], self.trace_id);
        hex_into(&mut out[36..52], u128::from(self.parent_id));
        hex_into(&mut out[53..55], u128::from(self.flags));
        out
    }

    /// The `traceparent` header's value.
    pub fn header_value(&self) -> HeaderValue {
        let text = self.encode();
        // Hex digits and dashes only: always a valid header value.
        HeaderValue::from_bytes(&text).expect("a traceparent is visible ASCII")
    }
}

/// The length of a version-00 `traceparent`.
const TRACEPARENT_LEN: usize = 55;

/// The last `out.len()` hex digits of `value`, lowercase, most significant first.
fn hex_into(out: &mut [u8], mut value: u128) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for byte in out.iter_mut().rev() {
        *byte = DIGITS[(value & 0xf) as usize];
        value >>= 4;
    }
}

impl fmt::Display for TraceParent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let text = self.encode();
        // Hex digits and dashes only.
        f.write_str(std::str::from_utf8(&text).map_err(|_| fmt::Error)?)
    }
}

/// Lowercase only: the specification forbids uppercase hex.
fn hex(s: &str, len: usize) -> bool {
    s.len() == len && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

fn nonzero<T: Default + PartialEq>(mut random: impl FnMut() -> T) -> T {
    loop {
        let v = random();
        if v != T::default() {
            return v;
        }
    }
}

/// The valid `traceparent` of an HTTP request, if any.
pub fn from_http(headers: &HeaderMap) -> Option<TraceParent> {
    TraceParent::parse(headers.get(&TRACEPARENT_HEADER)?.to_str().ok()?)
}

/// The valid `traceparent` of a message's headers (an outbox row's or an inbox message's).
pub fn from_message(headers: &serde_json::Value) -> Option<TraceParent> {
    TraceParent::parse(headers.get(TRACEPARENT)?.as_str()?)
}

/// Makes `span` continue `parent` (or start a trace when there is none) and records the
/// trace id in its `trace_id` field, which every log line inside the span then carries.
/// Call it before the span is entered: a started span cannot change its parent.
pub fn continue_trace(span: &Span, parent: Option<&TraceParent>) {
    if let Some(parent) = parent {
        let cx = Context::new().with_remote_span_context(parent.span_context());
        // Fails only when the span is disabled or tracing is not set up: then the field
        // below still names the trace.
        let _ = span.set_parent(cx);
    }
    let trace = TraceParent::of_span(span).or(parent.copied());
    if let Some(trace) = trace {
        span.record("trace_id", trace.trace_id_hex());
    }
}

/// The `traceparent` for what is sent from the current span: its trace and span id, or,
/// when the span has none (tracing not set up, the span filtered out), a child of `parent`,
/// or a new trace.
pub fn outgoing(parent: Option<&TraceParent>) -> TraceParent {
    let current = TraceParent::of_span(&Span::current())
        .filter(|c| parent.is_none_or(|p| p.trace_id == c.trace_id));
    current.unwrap_or_else(|| parent.map_or_else(TraceParent::new_root, TraceParent::child))
}

/// The span of one HTTP request, continuing the client's trace (a valid `traceparent`)
/// or starting one. The gateway and the services use it, so their access lines agree.
pub fn request_span<B>(request: &Request<B>) -> Span {
    const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
    // The fields are only evaluated for an enabled span.
    let span = tracing::info_span!(
        "request",
        method = %request.method(),
        uri = %request.uri(),
        request_id = request
            .headers()
            .get(&X_REQUEST_ID)
            .and_then(|id| id.to_str().ok())
            .unwrap_or_default(),
        trace_id = tracing::field::Empty,
    );
    // A disabled span (its level filtered out) has no parent to set and no field to record:
    // nothing to parse for it.
    if !span.is_disabled() {
        continue_trace(&span, from_http(request.headers()).as_ref());
    }
    span
}

/// Sets the `traceparent` of a request about to be forwarded: a child of the current span,
/// in the client's trace when it sent a valid one (an invalid one is replaced).
pub fn forward_headers(headers: &mut HeaderMap) {
    let trace = outgoing(from_http(headers).as_ref());
    headers.insert(TRACEPARENT_HEADER, trace.header_value());
}

#[cfg(test)]
mod tests {
    use super::*;

    const VALID: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn a_valid_traceparent_is_read_and_written_back_unchanged() {
        let tp = TraceParent::parse(VALID).unwrap();
        assert_eq!(tp.trace_id_hex(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(tp.parent_id, 0x00f0_67aa_0ba9_02b7);
        assert_eq!(tp.flags, 1);
        assert_eq!(tp.to_string(), VALID);
        // A later version is read by its first four fields.
        let v1 = format!("01{}-extra", &VALID[2..]);
        assert_eq!(TraceParent::parse(&v1).unwrap().trace_id, tp.trace_id);
    }

    #[test]
    fn the_written_traceparent_is_the_formatted_one() {
        for _ in 0..1000 {
            let tp = TraceParent {
                flags: rand::random(),
                ..TraceParent::new_root()
            };
            let formatted = format!(
                "00-{:032x}-{:016x}-{:02x}",
                tp.trace_id, tp.parent_id, tp.flags
            );
            assert_eq!(tp.to_string(), formatted);
            assert_eq!(tp.header_value(), formatted.as_str());
        }
        let edges = TraceParent {
            trace_id: u128::MAX,
            parent_id: 1,
            flags: 0,
        };
        assert_eq!(
            edges.to_string(),
            "00-ffffffffffffffffffffffffffffffff-0000000000000001-00"
        );
    }

    #[test]
    fn an_invalid_traceparent_is_refused() {
        for invalid in [
            // Version ff is forbidden, a version is two hex digits, 00 has four fields.
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "0g-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-x",
            // All-zero ids.
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            // Wrong lengths, uppercase, garbage.
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-1",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "",
            "not a traceparent",
        ] {
            assert_eq!(TraceParent::parse(invalid), None, "{invalid:?}");
        }
    }

    #[test]
    fn a_missing_or_invalid_traceparent_is_replaced_by_a_new_trace_and_a_valid_one_kept() {
        let mut headers = HeaderMap::new();
        forward_headers(&mut headers);
        let started = from_http(&headers).expect("a traceparent is started");

        headers.insert(TRACEPARENT, HeaderValue::from_static("00-zz-00-01"));
        forward_headers(&mut headers);
        let replaced = from_http(&headers).expect("an invalid one is replaced");
        assert_ne!(replaced.trace_id, started.trace_id);

        headers.insert(TRACEPARENT, HeaderValue::from_static(VALID));
        forward_headers(&mut headers);
        let kept = from_http(&headers).unwrap();
        let sent = TraceParent::parse(VALID).unwrap();
        // The same trace, from the forwarder's span.
        assert_eq!((kept.trace_id, kept.flags), (sent.trace_id, sent.flags));
        assert_ne!(kept.parent_id, sent.parent_id);
    }

    #[test]
    fn a_message_sent_from_a_continued_span_is_in_the_same_trace() {
        let parent = TraceParent::parse(VALID).unwrap();
        let headers = serde_json::json!({ TRACEPARENT: VALID });
        assert_eq!(from_message(&headers), Some(parent));
        assert_eq!(from_message(&serde_json::json!({})), None);

        // With the OpenTelemetry layer, as the services run.
        use tracing_subscriber::prelude::*;
        let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder().build();
        let tracer = opentelemetry::trace::TracerProvider::tracer(&provider, "test");
        let subscriber =
            tracing_subscriber::registry().with(tracing_opentelemetry::layer().with_tracer(tracer));
        tracing::subscriber::with_default(subscriber, || {
            let span = tracing::info_span!("inbox_receive", trace_id = tracing::field::Empty);
            continue_trace(&span, Some(&parent));
            let sent = span.in_scope(|| outgoing(Some(&parent)));
            assert_eq!(sent.trace_id, parent.trace_id);
            assert_ne!(sent.parent_id, parent.parent_id);
            assert_eq!(Some(sent), TraceParent::of_span(&span));

            let root = tracing::info_span!("request", trace_id = tracing::field::Empty);
            continue_trace(&root, None);
            assert!(TraceParent::of_span(&root).is_some());
        });
    }
}
