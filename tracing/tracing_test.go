package tracing

import (
	"context"
	"testing"

	"github.com/nats-io/nats.go"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
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
