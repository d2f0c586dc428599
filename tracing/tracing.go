// Package tracing carries W3C trace context through jetmail (contract §12)
// and sets up OpenTelemetry from the standard OTEL_* environment
// variables.
//
// The trace context travels in NATS headers, traceparent and tracestate:
// `jetmail send`, the producer package and the HTTP API set them on each
// request (the API continuing an incoming request's trace, `jetmail send`
// even when it exports nothing: see StartSend), the worker
// continues the trace in its spans (the delivery and its SMTP transaction)
// and sets it on the result events it publishes. NATS headers are
// case-sensitive, while propagation.HeaderCarrier would write
// "Traceparent": Header writes the lower-case W3C names and reads any
// case.
//
// Export is configured by OTEL_TRACES_EXPORTER (otlp, console or none; the
// default is none, which installs nothing and costs next to nothing) and
// the other OTEL_* variables of the OTLP exporters.
package tracing

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"strings"

	"github.com/nats-io/nats.go"
	"go.opentelemetry.io/contrib/exporters/autoexport"
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/sdk/resource"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/trace"
)

// Name is the instrumentation scope of jetmail's spans.
const Name = "github.com/jetmail/jetmail"

// Tracer is jetmail's tracer from the global provider: a no-op one until
// Setup installs an exporter.
func Tracer() trace.Tracer { return otel.Tracer(Name) }

// Propagator is the W3C trace-context propagator jetmail uses, whatever
// the global one is.
var Propagator propagation.TextMapPropagator = propagation.TraceContext{}

// Header adapts a NATS header to a propagation.TextMapCarrier: Set writes
// the key as given (the W3C names are lower case), Get finds a key in any
// case.
type Header nats.Header

// Get returns the first value of key, matched without regard to case.
func (h Header) Get(key string) string {
	if v := h[key]; len(v) > 0 {
		return v[0]
	}
	for k, v := range h {
		if len(v) > 0 && strings.EqualFold(k, key) {
			return v[0]
		}
	}
	return ""
}

// Set replaces key's values by value, removing other spellings of key.
func (h Header) Set(key, value string) {
	for k := range h {
		if k != key && strings.EqualFold(k, key) {
			delete(h, k)
		}
	}
	h[key] = []string{value}
}

// Keys lists the header's keys.
func (h Header) Keys() []string {
	keys := make([]string, 0, len(h))
	for k := range h {
		keys = append(keys, k)
	}
	return keys
}

// Inject writes the trace context of ctx into h (nothing when ctx is nil
// or has no span).
func Inject(ctx context.Context, h nats.Header) {
	if ctx == nil || h == nil || !trace.SpanContextFromContext(ctx).IsValid() {
		return
	}
	Propagator.Inject(ctx, Header(h))
}

// StartSend starts the span of a command that publishes requests, such as
// `jetmail send`, with Tracer(). Unlike Tracer().Start, the context it
// returns always has a valid span context, so that Inject writes a
// traceparent and the worker's spans and result events of every attempt
// share one trace (contract §12) even when this process exports nothing:
// when the span has none (tracing off, the no-op provider, and no trace in
// ctx) it is given a random trace and span Id that nothing records. Such a
// context is flagged sampled, since the flag is what a ParentBased sampler
// (the SDK's default) on the worker decides by: unsampled, an exporting
// worker would drop the spans of every request sent without tracing, which
// it records when a request has no traceparent at all. End the span on the
// way out, as usual.
func StartSend(ctx context.Context, name string, opts ...trace.SpanStartOption) (context.Context, trace.Span) {
	return startSend(ctx, Tracer(), name, opts...)
}

// startSend is StartSend with tracer t.
func startSend(ctx context.Context, t trace.Tracer, name string, opts ...trace.SpanStartOption) (context.Context, trace.Span) {
	ctx, span := t.Start(ctx, name, append([]trace.SpanStartOption{trace.WithSpanKind(trace.SpanKindProducer)}, opts...)...)
	if span.SpanContext().IsValid() {
		return ctx, span
	}
	// A span that records nothing and whose End does nothing, as the
	// no-op one, but with an Id.
	ctx = trace.ContextWithSpanContext(ctx, trace.NewSpanContext(trace.SpanContextConfig{
		TraceID:    randomTraceID(),
		SpanID:     randomSpanID(),
		TraceFlags: trace.FlagsSampled,
	}))
	return ctx, trace.SpanFromContext(ctx)
}

// randomTraceID is a random, non-zero trace Id. math/rand/v2's generator
// (ChaCha8, seeded by the runtime) takes a few nanoseconds.
func randomTraceID() trace.TraceID {
	var id trace.TraceID
	for !id.IsValid() {
		binary.BigEndian.PutUint64(id[:8], rand.Uint64())
		binary.BigEndian.PutUint64(id[8:], rand.Uint64())
	}
	return id
}

// randomSpanID is a random, non-zero span Id.
func randomSpanID() trace.SpanID {
	var id trace.SpanID
	for !id.IsValid() {
		binary.BigEndian.PutUint64(id[:], rand.Uint64())
	}
	return id
}

// Extract returns ctx with the remote trace context found in h, if any.
func Extract(ctx context.Context, h nats.Header) context.Context {
	if h == nil {
		return ctx
	}
	return Propagator.Extract(ctx, Header(h))
}

// Setup installs a tracer provider exporting as the OTEL_* environment
// variables say, for a process named service (such as "jetmail-worker").
// With OTEL_TRACES_EXPORTER unset or "none" it installs nothing. The
// returned function flushes and stops the exporter; call it on the way
// out.
func Setup(ctx context.Context, service string) (shutdown func(context.Context) error, err error) {
	exp := strings.TrimSpace(os.Getenv("OTEL_TRACES_EXPORTER"))
	if exp == "" || exp == "none" {
		return func(context.Context) error { return nil }, nil
	}
	exporter, err := autoexport.NewSpanExporter(ctx)
	if err != nil {
		return nil, fmt.Errorf("OTEL_TRACES_EXPORTER=%s: %w", exp, err)
	}
	if os.Getenv("OTEL_SERVICE_NAME") == "" {
		_ = os.Setenv("OTEL_SERVICE_NAME", service)
	}
	res, err := resource.New(ctx, resource.WithFromEnv(), resource.WithTelemetrySDK(), resource.WithHost())
	if err != nil && !errors.Is(err, resource.ErrPartialResource) {
		return nil, fmt.Errorf("tracing resource: %w", err)
	}
	tp := sdktrace.NewTracerProvider(sdktrace.WithBatcher(exporter), sdktrace.WithResource(res))
	otel.SetTracerProvider(tp)
	otel.SetTextMapPropagator(propagation.NewCompositeTextMapPropagator(propagation.TraceContext{}, propagation.Baggage{}))
	return tp.Shutdown, nil
}
