//! W3C trace context on `tracing`'s spans: one transfer is one trace from the POST to
//! its completion. A command records the `traceparent` of the span it runs in with its
//! events ([`crate::EventMetadata::traceparent`]); the tailer publishes each in a span
//! of its own and puts that span's `traceparent` in the envelope; a river's delivery
//! continues it, and what the delivery causes records the delivery's.
//!
//! A span has a trace context only while an OpenTelemetry layer is installed
//! (`service_kit::telemetry`, with `OTEL_EXPORTER_OTLP_ENDPOINT` set); otherwise
//! [`traceparent`] is `None` and nothing is recorded.

use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::TraceContextExt;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use std::collections::HashMap;
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// The header (and envelope field) that carries the trace context.
pub const TRACEPARENT: &str = "traceparent";

/// The `traceparent` of `span`, when it has a trace context.
pub fn traceparent(span: &tracing::Span) -> Option<String> {
    let context = span.context();
    if !context.span().span_context().is_valid() {
        return None;
    }
    let mut carrier = HashMap::new();
    TraceContextPropagator::new().inject_context(&context, &mut carrier);
    carrier.remove(TRACEPARENT)
}

/// The `traceparent` of the span the caller runs in.
pub fn current() -> Option<String> {
    traceparent(&tracing::Span::current())
}

/// The parent a `traceparent` names, when it is well formed (W3C Trace Context).
pub fn parse(traceparent: &str) -> Option<opentelemetry::Context> {
    let carrier = HashMap::from([(TRACEPARENT.to_owned(), traceparent.to_owned())]);
    let context = TraceContextPropagator::new().extract(&carrier);
    context.span().span_context().is_valid().then_some(context)
}

/// `traceparent` as this crate writes it (version 00, lower-case hex), when it is well
/// formed; what is passed on of a caller's, never its raw text.
pub fn canonical(traceparent: &str) -> Option<String> {
    let mut carrier = HashMap::new();
    TraceContextPropagator::new().inject_context(&parse(traceparent)?, &mut carrier);
    carrier.remove(TRACEPARENT)
}

/// Makes the span `traceparent` names the parent of `span`, which must not have been
/// entered yet. An absent or malformed one leaves `span` where it is (a trace of its
/// own, or its `tracing` parent's).
pub fn continue_from(span: &tracing::Span, traceparent: Option<&str>) {
    if let Some(parent) = traceparent.and_then(parse) {
        let _ = span.set_parent(parent);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_well_formed_traceparent_is_a_parent() {
        assert!(parse("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01").is_some());
        for bad in [
            "",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331",
            "00-00000000000000000000000000000000-b7ad6b7169203331-01",
            "00-0af7651916cd43dd8448eb211c80319c-0000000000000000-01",
            "zz-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            "00-0AF7651916CD43DD8448EB211C80319C-b7ad6b7169203331-01",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01'; drop table es.events; --",
        ] {
            assert!(parse(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn what_is_passed_on_is_rewritten_not_copied() {
        let raw = "01-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-'; drop table es.events; --";
        assert_eq!(canonical(raw).as_deref(), Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"));
        assert_eq!(
            canonical("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00").as_deref(),
            Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00")
        );
        assert_eq!(canonical("nonsense"), None);
    }

    #[test]
    fn without_an_opentelemetry_layer_a_span_has_no_traceparent() {
        let span = tracing::info_span!("request");
        continue_from(&span, Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"));
        assert_eq!(traceparent(&span), None);
    }
}
