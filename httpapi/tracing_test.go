package httpapi

import (
	"context"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"go.opentelemetry.io/otel/propagation"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"

	"github.com/jetmail/jetmail/config"
	"github.com/jetmail/jetmail/internal/jstest"
	"github.com/jetmail/jetmail/schema"
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
	nats := jstest.Start(t)
	nc, js := nats.Connect(t)
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
