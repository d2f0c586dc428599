package httpapi

import (
	"context"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"go.opentelemetry.io/otel/propagation"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"

	"github.com/jetmail/jetmail/config"
	"github.com/jetmail/jetmail/internal/jstest"
	"github.com/jetmail/jetmail/schema"
	"github.com/jetmail/jetmail/suppress"
	"github.com/jetmail/jetmail/worker"
)

// TestTraceContextFlows: a POST with a traceparent continues its trace in
// the API's span, the request published on NATS carries it in a lower-case
// traceparent header, the worker's delivery and SMTP spans continue it,
// and the result events carry the delivery's context.
func TestTraceContextFlows(t *testing.T) {
	t.Parallel()
	rec := tracetest.NewSpanRecorder()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(rec))
	tracer := tp.Tracer("test")
	sub, w := tracedWorker(t, tracer)

	caller, callerSpan := tracer.Start(context.Background(), "caller")
	callerSpan.End()
	req, _ := http.NewRequest(http.MethodPost, "/v1/messages", strings.NewReader(`{"Id": "traced-1", "To": "a@example.com"}`))
	propagation.TraceContext{}.Inject(caller, propagation.HeaderCarrier(req.Header))
	rw := httptest.NewRecorder()
	w.Handler().ServeHTTP(rw, req)
	if rw.Code != http.StatusAccepted {
		t.Fatalf("POST answered %d", rw.Code)
	}
	traceID := callerSpan.SpanContext().TraceID()
	var published, event string
	deadline := time.Now().Add(10 * time.Second)
	for (published == "" || event == "") && time.Now().Before(deadline) {
		m, err := sub.NextMsg(time.Until(deadline))
		if err != nil {
			break
		}
		switch {
		case m.Subject == "mail.send":
			published = m.Header.Get("traceparent")
		case strings.HasPrefix(m.Subject, "mail.result.") && strings.Contains(string(m.Data), `"sent"`):
			event = m.Header.Get("traceparent")
		}
	}
	if !strings.Contains(published, traceID.String()) {
		t.Errorf("the published request's traceparent %q is not of the caller's trace %s", published, traceID)
	}
	var deliver, smtp sdktrace.ReadOnlySpan
	jstest.Eventually(t, 10*time.Second, func() bool {
		for _, s := range rec.Ended() {
			switch {
			case strings.HasPrefix(s.Name(), "deliver "):
				deliver = s
			case s.Name() == "smtp send":
				smtp = s
			}
		}
		return deliver != nil && smtp != nil
	})
	if deliver.SpanContext().TraceID() != traceID || deliver.SpanKind() != trace.SpanKindConsumer {
		t.Errorf("the delivery span is in trace %s (%v), want the caller's %s", deliver.SpanContext().TraceID(), deliver.SpanKind(), traceID)
	}
	if smtp.Parent().SpanID() != deliver.SpanContext().SpanID() {
		t.Error("the SMTP span is not a child of the delivery span")
	}
	if !strings.Contains(event, deliver.SpanContext().SpanID().String()) {
		t.Errorf("the sent event's traceparent %q does not name the delivery span %s", event, deliver.SpanContext().SpanID())
	}
}

// TestTraceContextFlowsBatch: every request of a POST /v1/messages/batch
// continues the caller's trace, as a single POST does: the published
// requests carry it, and so do the result events of their deliveries.
func TestTraceContextFlowsBatch(t *testing.T) {
	t.Parallel()
	tracer := sdktrace.NewTracerProvider().Tracer("test")
	sub, w := tracedWorker(t, tracer)

	caller, callerSpan := tracer.Start(context.Background(), "caller")
	callerSpan.End()
	traceID := callerSpan.SpanContext().TraceID().String()
	body := `{"Id": "batch-traced-1", "To": "a@example.com"}` + "\n" + `{"Id": "batch-traced-2", "To": "b@example.com"}`
	req, _ := http.NewRequest(http.MethodPost, "/v1/messages/batch", strings.NewReader(body))
	propagation.TraceContext{}.Inject(caller, propagation.HeaderCarrier(req.Header))
	rw := httptest.NewRecorder()
	w.Handler().ServeHTTP(rw, req)
	if rw.Code != http.StatusAccepted || strings.Count(rw.Body.String(), `"Status":202`) != 2 {
		t.Fatalf("POST answered %d: %s", rw.Code, rw.Body)
	}
	published, sent := map[string]string{}, map[string]string{}
	deadline := time.Now().Add(10 * time.Second)
	for (len(published) < 2 || len(sent) < 2) && time.Now().Before(deadline) {
		m, err := sub.NextMsg(time.Until(deadline))
		if err != nil {
			break
		}
		switch {
		case m.Subject == "mail.bulk":
			published[m.Header.Get("Nats-Msg-Id")] = m.Header.Get("traceparent")
		case strings.HasPrefix(m.Subject, "mail.result.") && strings.Contains(string(m.Data), `"sent"`):
			sent[strings.TrimPrefix(m.Subject, "mail.result.")] = m.Header.Get("traceparent")
		}
	}
	for _, id := range []string{"batch-traced-1", "batch-traced-2"} {
		if tp := published[id]; !strings.Contains(tp, traceID) {
			t.Errorf("%s: the published request's traceparent %q is not of the caller's trace %s", id, tp, traceID)
		}
		if tp := sent[id]; !strings.Contains(tp, traceID) {
			t.Errorf("%s: the sent event's traceparent %q is not of the caller's trace %s", id, tp, traceID)
		}
	}
}

// TestSpanNamesAreRoutes: the API's spans are named after the route, so
// that no recipient address or unsubscribe token ends up in a span name;
// after the method alone when no route matched. The API is mounted on an
// outer mux, as the worker and the gateway do.
func TestSpanNamesAreRoutes(t *testing.T) {
	t.Parallel()
	rec := tracetest.NewSpanRecorder()
	tracer := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(rec)).Tracer("test")
	srv := jstest.Start(t)
	_, js := srv.Connect(t)
	jstest.EnsureStreams(t, js, schema.Names{})
	store, err := suppress.Open(t.Context(), js, schema.Names{}, suppress.Options{})
	if err != nil {
		t.Fatal(err)
	}
	tokens, err := suppress.NewTokens([]byte("test secret of the one-click links"))
	if err != nil {
		t.Fatal(err)
	}
	api, err := New(Config{Tracer: tracer, Suppressions: store, Unsubscribe: tokens}, js, nil)
	if err != nil {
		t.Fatal(err)
	}
	outer := http.NewServeMux()
	outer.Handle("/", api.Handler())
	for _, c := range []struct{ method, path, span, route string }{
		{http.MethodGet, "/v1/suppressions/jan.kowalski@example.com", "GET /v1/suppressions/{address}", "/v1/suppressions/{address}"},
		{http.MethodGet, "/v1/unsubscribe/secret-token-123", "GET /v1/unsubscribe/{token}", "/v1/unsubscribe/{token}"},
		{http.MethodGet, "/v1/nowhere/jan.kowalski@example.com", "GET", ""},
		{http.MethodPatch, "/v1/suppressions/jan.kowalski@example.com", "PATCH", ""},
	} {
		before := len(rec.Ended())
		rw := httptest.NewRecorder()
		outer.ServeHTTP(rw, httptest.NewRequest(c.method, c.path, nil))
		ended := rec.Ended()
		if len(ended) != before+1 {
			t.Fatalf("%s %s: %d spans ended, want 1", c.method, c.path, len(ended)-before)
		}
		s := ended[before]
		if s.Name() != c.span || strings.Contains(s.Name(), "kowalski") || strings.Contains(s.Name(), "secret-token") {
			t.Errorf("%s %s (answered %d): span %q, want %q", c.method, c.path, rw.Code, s.Name(), c.span)
		}
		var route string
		for _, kv := range s.Attributes() {
			if kv.Key == "http.route" {
				route = kv.Value.AsString()
			}
			if v := kv.Value.Emit(); strings.Contains(v, "kowalski") || strings.Contains(v, "secret-token") {
				t.Errorf("%s %s: attribute %s = %q holds the path", c.method, c.path, kv.Key, v)
			}
		}
		if route != c.route {
			t.Errorf("%s %s: http.route %q, want %q", c.method, c.path, route, c.route)
		}
	}
}

// tracedWorker starts JetStream and a worker whose API and deliveries
// trace with tracer, and subscribes to everything under mail.> (the
// requests and their result events, with their headers).
func tracedWorker(t *testing.T, tracer trace.Tracer) (*nats.Subscription, *worker.Worker) {
	t.Helper()
	srv := jstest.Start(t)
	nc, js := srv.Connect(t)
	sub, err := nc.SubscribeSync("mail.>")
	if err != nil {
		t.Fatal(err)
	}
	adm, _ := config.NewAdmission(schema.Limits{}, "", nil)
	api, err := New(Config{Admission: adm, Tracer: tracer}, js, nil)
	if err != nil {
		t.Fatal(err)
	}
	w, err := worker.New(worker.Config{Outbox: t.TempDir(), API: api.Handler(), Tracer: tracer}, js, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	jstest.Serve(t, w.Run, w.Ready)
	return sub, w
}
