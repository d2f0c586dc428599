package tracing

import (
	"context"
	"testing"

	"github.com/nats-io/nats.go"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"
	"go.opentelemetry.io/otel/trace/noop"
)

// TestHeaderCarrier: the W3C names are written in lower case, as the
// contract has them in NATS headers, and found in any case.
func TestHeaderCarrier(t *testing.T) {
	t.Parallel()
	tp := sdktrace.NewTracerProvider()
	ctx, span := tp.Tracer("t").Start(context.Background(), "s")
	defer span.End()
	h := nats.Header{}
	Inject(ctx, h)
	if len(h["traceparent"]) != 1 || len(h["Traceparent"]) != 0 {
		t.Fatalf("headers %v, want a lower-case traceparent", h)
	}
	for _, key := range []string{"traceparent", "Traceparent", "TRACEPARENT"} {
		in := nats.Header{key: h["traceparent"]}
		got := Extract(context.Background(), in)
		if sc := spanContext(got); sc.TraceID() != span.SpanContext().TraceID() {
			t.Errorf("%s: extracted trace %s, want %s", key, sc.TraceID(), span.SpanContext().TraceID())
		}
	}
	empty := nats.Header{}
	Inject(context.Background(), empty)
	Inject(nil, empty) //nolint:staticcheck // a nil context is allowed: the async publishes have none
	if len(empty) != 0 {
		t.Errorf("a context without a span wrote %v", empty)
	}
	h2 := Header{"TraceParent": {"x"}}
	h2.Set("traceparent", "y")
	if len(h2) != 1 || h2.Get("traceparent") != "y" {
		t.Errorf("Set left %v", h2)
	}
}

// BenchmarkDeliverySpans is what tracing costs a delivery: extract from
// the request's headers, a delivery and an SMTP span, inject into a result
// event's headers. "off" is the default (no exporter configured).
func BenchmarkDeliverySpans(b *testing.B) {
	parent, span := sdktrace.NewTracerProvider().Tracer("t").Start(context.Background(), "p")
	in := nats.Header{}
	Inject(parent, in)
	span.End()
	run := func(b *testing.B, tracer trace.Tracer) {
		b.ReportAllocs()
		for range b.N {
			ctx := Extract(context.Background(), in)
			ctx, d := tracer.Start(ctx, "deliver normal")
			_, s := tracer.Start(ctx, "smtp send")
			s.End()
			out := nats.Header{}
			Inject(ctx, out)
			d.End()
		}
	}
	b.Run("off", func(b *testing.B) { run(b, noop.NewTracerProvider().Tracer(Name)) })
	b.Run("recording", func(b *testing.B) { run(b, sdktrace.NewTracerProvider().Tracer(Name)) })
}

func spanContext(ctx context.Context) trace.SpanContext { return trace.SpanContextFromContext(ctx) }

// TestStartSendWithoutExporter: with tracing off, StartSend still gives a
// valid, random trace context, which Inject writes as a traceparent; it
// records nothing, and is flagged sampled so that a worker exporting with
// the SDK's default (ParentBased) sampler records the delivery under it.
func TestStartSendWithoutExporter(t *testing.T) {
	t.Parallel()
	for name, tracer := range map[string]trace.Tracer{
		"global": Tracer(), // no provider installed: the no-op one
		"noop":   noop.NewTracerProvider().Tracer(Name),
	} {
		ctx, span := startSend(context.Background(), tracer, "jetmail send")
		sc := span.SpanContext()
		if !sc.IsValid() || !sc.IsSampled() || span.IsRecording() || !spanContext(ctx).Equal(sc) {
			t.Fatalf("%s: span context %v (recording %t), want a valid sampled one that records nothing", name, sc, span.IsRecording())
		}
		span.End()
		h := nats.Header{}
		Inject(ctx, h)
		if want := "00-" + sc.TraceID().String() + "-" + sc.SpanID().String() + "-01"; h.Get("traceparent") != want {
			t.Errorf("%s: traceparent %q, want %q", name, h.Get("traceparent"), want)
		}
		if _, other := startSend(context.Background(), tracer, "jetmail send"); other.SpanContext().TraceID() == sc.TraceID() {
			t.Errorf("%s: two sends share trace %s", name, sc.TraceID())
		}
		// A span under it (the no-op tracer's) stays in its trace.
		if _, child := tracer.Start(ctx, "child"); child.SpanContext().TraceID() != sc.TraceID() {
			t.Errorf("%s: a child span left the trace", name)
		}
		// A trace already in ctx is continued, not replaced.
		if _, cont := startSend(ctx, tracer, "again"); cont.SpanContext().TraceID() != sc.TraceID() {
			t.Errorf("%s: a trace in ctx was replaced", name)
		}
		// The worker, exporting with the default sampler, records the
		// delivery in the sender's trace.
		rec := sdktrace.NewTracerProvider()
		_, d := rec.Tracer("worker").Start(Extract(context.Background(), h), "deliver normal")
		if !d.IsRecording() || d.SpanContext().TraceID() != sc.TraceID() {
			t.Errorf("%s: the worker's span records %t in trace %s, want recording in %s", name, d.IsRecording(), d.SpanContext().TraceID(), sc.TraceID())
		}
		d.End()
	}
}

// TestStartSendRecording: with an exporter, StartSend is the tracer's own
// producer span.
func TestStartSendRecording(t *testing.T) {
	t.Parallel()
	rec := tracetest.NewSpanRecorder()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(rec))
	ctx, span := startSend(context.Background(), tp.Tracer(Name), "jetmail send")
	span.End()
	ended := rec.Ended()
	if len(ended) != 1 || ended[0].SpanKind() != trace.SpanKindProducer || !spanContext(ctx).Equal(ended[0].SpanContext()) {
		t.Fatalf("recorded %v, want the one producer span of ctx", ended)
	}
}

// BenchmarkStartSend is what StartSend costs `jetmail send` with tracing
// off: a random trace and span Id.
func BenchmarkStartSend(b *testing.B) {
	b.ReportAllocs()
	for range b.N {
		ctx, span := StartSend(context.Background(), "jetmail send")
		Inject(ctx, nats.Header{})
		span.End()
	}
}
