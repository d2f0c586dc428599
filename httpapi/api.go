// Package httpapi is jetmail's HTTP API (contract §6): producers that do
// not speak NATS publish requests and read their results over HTTP. It is
// built on package producer, and admits requests with the same
// config.Admission as the workers, so that it refuses what a worker would
// refuse. Every worker mounts it beside its metrics and probes, and
// `jetmail gateway` serves it alone.
package httpapi

import (
	"cmp"
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"
	"golang.org/x/time/rate"

	"github.com/jetmail/jetmail/config"
	"github.com/jetmail/jetmail/producer"
	"github.com/jetmail/jetmail/schema"
	"github.com/jetmail/jetmail/search"
	"github.com/jetmail/jetmail/suppress"
	"github.com/jetmail/jetmail/tracing"
)

// Config configures the HTTP API.
type Config struct {
	// Names are the subjects and streams; zero fields take the contract's
	// defaults. They must match the workers'.
	Names schema.Names
	// Admission decides which requests are published: the limits, the
	// templates and the connections' sender policies, as the workers have
	// them, so that the API refuses (400, 403, 413) what a worker would.
	// Nil admits every request valid under schema.DefaultLimits(), and leaves
	// Template, Connection and From to the workers. The body is also
	// bounded by the NATS server's max_payload.
	Admission *config.Admission
	// Tokens are the bearer tokens that may call the API. Empty means no
	// authentication. They are compared in constant time and never logged.
	Tokens []string
	// PublishTimeout bounds the wait for JetStream to store a request.
	// Default 10s.
	PublishTimeout time.Duration
	// MaxBatchBytes bounds the body of POST /v1/messages/batch. Default
	// 32 MiB.
	MaxBatchBytes int64
	// Cancelled, when set, counts the messages the API cancelled (the
	// worker's jetmail_cancelled_total, when the API is served beside it).
	Cancelled prometheus.Counter
	// Tracer makes the spans of the API's answers. Default:
	// tracing.Tracer(), a no-op one unless tracing.Setup installed an
	// exporter.
	Tracer trace.Tracer
	// Suppressions is the suppression list (contract §9). When set,
	// GET /v1/suppressions and GET, PUT and DELETE
	// /v1/suppressions/{address} are served, behind the bearer tokens.
	Suppressions *suppress.Store
	// Unsubscribe reads the one-click unsubscribe tokens. When set (it
	// needs Suppressions), GET and POST /v1/unsubscribe/{token} are served
	// without bearer tokens, since recipients use them; the POST adds the
	// address and publishes the unsubscribe event (suppress.Store.
	// Unsubscribe).
	Unsubscribe *suppress.Tokens
	// UnsubscribeLimit is how many requests a second one client address
	// (an IPv6 /64) may make to /v1/unsubscribe/, in bursts of up to
	// UnsubscribeBurst; more are answered 429. Defaults 5 and 50.
	UnsubscribeLimit rate.Limit
	// UnsubscribeBurst: see UnsubscribeLimit.
	UnsubscribeBurst int
	// Search is the index GET /v1/messages searches; the caller runs and
	// closes it. Nil: GET /v1/messages answers 503, search is not enabled.
	Search *search.Index
}

// Response is the JSON body of every answer of POST /v1/messages, and of
// the error answers of GET /v1/messages/{Id} (whose 200 is the result event
// itself): {"Id": …, "Status": 202} for a stored request, {"Status": 4xx or
// 500, "Error": …} otherwise, with Fields for an invalid request.
type Response struct {
	// Id is the request's Id, on 202.
	Id string `json:"Id,omitempty"`
	// Status is the HTTP status code of the answer.
	Status int `json:"Status"`
	// Duplicate is true on a 202 when JetStream already held a request
	// with this Id within its duplicate window, and stored nothing new.
	Duplicate bool `json:"Duplicate,omitempty"`
	// Error says what is wrong, on every answer but 202.
	Error string `json:"Error,omitempty"`
	// Fields are the broken rules of an invalid request (400, and 413
	// when the body could be read).
	Fields []schema.FieldError `json:"Fields,omitempty"`
}

// API serves POST /v1/messages and GET /v1/messages/{Id}: it validates a
// request as a worker would, publishes it unchanged with producer.PublishJSON
// and answers 202 once JetStream has stored it; it reads a message's latest
// result event from the result stream. It is safe for concurrent use.
//
// With curl, against a worker on the default address:
//
//	curl -i http://localhost:8080/v1/messages \
//	  -H 'Authorization: Bearer s3cret' -H 'Content-Type: application/json' \
//	  -H 'Idempotency-Key: order-1234' \
//	  -d '{"To": "jan@example.com", "Subject": "Hello", "Body": "Hi Jan"}'
//	HTTP/1.1 202 Accepted
//	Location: /v1/messages/order-1234
//	{"Id":"order-1234","Status":202}
//
//	curl http://localhost:8080/v1/messages/order-1234 -H 'Authorization: Bearer s3cret'
//	{"Id":"order-1234","Status":200,"State":"sent","Attempt":1,…}
//
// schema/openapi.yaml documents the API.
type API struct {
	names     schema.Names
	admission *config.Admission
	tokens    [][sha256.Size]byte // digests, so that comparing takes the same time whatever the length
	timeout   time.Duration
	maxBatch  int64
	cancelled prometheus.Counter
	tracer    trace.Tracer
	js        jetstream.JetStream
	producer  *producer.Producer
	search    *search.Index
	log       *slog.Logger
	sup       suppressAPI // suppressions.go, unsubscribe.go
}

// New returns the API for js. A nil logger discards logs. It fails on an
// invalid subject prefix or stream name, or an empty token.
func New(cfg Config, js jetstream.JetStream, logger *slog.Logger) (*API, error) {
	if js == nil {
		return nil, errors.New("httpapi: New needs a JetStream, got nil")
	}
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	a := &API{
		names:     cfg.Names.WithDefaults(),
		admission: cfg.Admission,
		timeout:   cfg.PublishTimeout,
		maxBatch:  cmp.Or(cfg.MaxBatchBytes, 32<<20),
		cancelled: cfg.Cancelled,
		tracer:    cmp.Or[trace.Tracer](cfg.Tracer, tracing.Tracer()),
		js:        js,
		search:    cfg.Search,
		log:       logger,
	}
	if a.admission == nil {
		a.admission = &config.Admission{}
	}
	if a.timeout <= 0 {
		a.timeout = 10 * time.Second
	}
	for i, t := range cfg.Tokens {
		if t == "" {
			return nil, fmt.Errorf("httpapi config: token %d is empty", i+1)
		}
		a.tokens = append(a.tokens, sha256.Sum256([]byte(t)))
	}
	p, err := producer.New(js,
		producer.WithSubjectPrefix(a.names.Prefix),
		producer.WithResultStream(a.names.ResultStream),
		producer.WithLimits(a.admission.Limits))
	if err != nil {
		return nil, fmt.Errorf("httpapi config: %w", err)
	}
	a.producer = p
	if err := a.sup.init(cfg); err != nil {
		return nil, err
	}
	return a, nil
}

// Handler returns a handler that serves the API's routes (and answers
// 404 to every other path).
func (a *API) Handler() http.Handler {
	mux := http.NewServeMux()
	a.Register(mux)
	return a.traced(mux)
}

// traced wraps h, a ServeMux, in a server span that continues the
// caller's trace (its traceparent header), so that a request published by
// a handler carries the trace on to the worker (contract §12). The span is
// named after the route the mux chose, such as "GET
// /v1/suppressions/{address}", never the path, which holds addresses and
// unsubscribe tokens (nor does any attribute hold the path); after the
// method alone when no route matched.
func (a *API) traced(h http.Handler) http.Handler {
	return http.HandlerFunc(func(rw http.ResponseWriter, r *http.Request) {
		ctx := tracing.Propagator.Extract(r.Context(), propagation.HeaderCarrier(r.Header))
		ctx, span := a.tracer.Start(ctx, r.Method, trace.WithSpanKind(trace.SpanKindServer),
			trace.WithAttributes(attribute.String("http.request.method", r.Method)))
		defer span.End()
		sw := &statusWriter{ResponseWriter: rw, status: http.StatusOK}
		// The mux sets the Pattern of the request it is given, this copy.
		r = r.WithContext(ctx)
		r.Pattern = ""
		h.ServeHTTP(sw, r)
		if r.Pattern != "" {
			span.SetName(r.Pattern)
			span.SetAttributes(attribute.String("http.route", route(r.Pattern)))
		}
		span.SetAttributes(attribute.Int("http.response.status_code", sw.status))
		if sw.status >= 500 {
			span.SetStatus(codes.Error, http.StatusText(sw.status))
		}
	})
}

// route is the path of a ServeMux pattern ("/v1/messages/{id}" of
// "GET /v1/messages/{id}"), for the http.route attribute.
func route(pattern string) string {
	if i := strings.IndexByte(pattern, '/'); i >= 0 {
		return pattern[i:]
	}
	return pattern
}

// statusWriter remembers the status of an answer, for the span.
type statusWriter struct {
	http.ResponseWriter
	status int
}

func (w *statusWriter) WriteHeader(status int) {
	w.status = status
	w.ResponseWriter.WriteHeader(status)
}

// Register mounts the API's routes on mux: sending (POST /v1/messages,
// /v1/messages/batch), reading (GET /v1/messages/{Id}, its /events, and the
// search GET /v1/messages), cancelling (DELETE /v1/messages/{Id},
// /v1/batches/{BatchId}), and the suppression list's and the one-click
// unsubscribe's routes when they are configured.
func (a *API) Register(mux *http.ServeMux) {
	mux.HandleFunc("POST /v1/messages", a.authorized(a.post))
	mux.HandleFunc("POST /v1/messages/batch", a.authorized(a.postBatch))
	mux.HandleFunc("GET /v1/messages/{id}", a.authorized(a.get))
	mux.HandleFunc("DELETE /v1/messages/{id}", a.authorized(a.cancel))
	mux.HandleFunc("DELETE /v1/batches/{batch}", a.authorized(a.cancelBatch))
	a.registerSuppressions(mux)
	a.registerUnsubscribe(mux)
	a.registerSearch(mux)
}

// authorized answers 401 unless no tokens are configured or the request
// carries one of them as a bearer token.
func (a *API) authorized(h http.HandlerFunc) http.HandlerFunc {
	if len(a.tokens) == 0 {
		return h
	}
	return func(rw http.ResponseWriter, r *http.Request) {
		given, ok := bearerToken(r.Header.Get("Authorization"))
		if ok && a.validToken(given) {
			h(rw, r)
			return
		}
		challenge := `Bearer realm="jetmail"`
		if ok {
			challenge += `, error="invalid_token"`
		}
		rw.Header().Set("WWW-Authenticate", challenge)
		a.fail(rw, r, http.StatusUnauthorized, "missing or invalid bearer token", nil)
	}
}

// bearerToken returns the token of an "Authorization: Bearer <token>"
// header (the scheme in any case, RFC 9110).
func bearerToken(h string) (string, bool) {
	scheme, tok, ok := strings.Cut(strings.TrimSpace(h), " ")
	tok = strings.TrimSpace(tok)
	if !ok || !strings.EqualFold(scheme, "Bearer") || tok == "" {
		return "", false
	}
	return tok, true
}

// validToken compares the digest of tok with every configured token's,
// without stopping at a match, in constant time.
func (a *API) validToken(tok string) bool {
	d := sha256.Sum256([]byte(tok))
	match := 0
	for i := range a.tokens {
		match |= subtle.ConstantTimeCompare(d[:], a.tokens[i][:])
	}
	return match == 1
}

// bodyLimit is the largest body the API reads: Limits.MaxRequestBytes, or
// the NATS server's max_payload when that is smaller (a larger message
// could not be published); -1 for none.
func (a *API) bodyLimit() int64 {
	limit := int64(a.admission.Limits.WithDefaults().MaxRequestBytes)
	if nc := a.js.Conn(); nc != nil {
		if mp := nc.MaxPayload(); mp > 0 && (limit < 0 || mp < limit) {
			limit = mp
		}
	}
	return limit
}

// readBody reads the request body up to limit bytes (-1: none), answering
// 413 or 400 itself when it cannot; ok is false then.
func (a *API) readBody(rw http.ResponseWriter, r *http.Request, limit int64) (data []byte, ok bool) {
	tooLarge := fmt.Sprintf("request body is larger than the limit of %d bytes", limit)
	if limit >= 0 && r.ContentLength > limit {
		a.fail(rw, r, http.StatusRequestEntityTooLarge, tooLarge, nil)
		return nil, false
	}
	body := r.Body
	if limit >= 0 {
		body = http.MaxBytesReader(rw, r.Body, limit)
	}
	data, err := io.ReadAll(body)
	if err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			a.fail(rw, r, http.StatusRequestEntityTooLarge, tooLarge, nil)
			return nil, false
		}
		a.fail(rw, r, http.StatusBadRequest, "cannot read the request body: "+err.Error(), nil)
		return nil, false
	}
	return data, true
}

// refusal is the HTTP answer to a request that admission refused: 413 for
// a size limit, 400 for another broken rule, 403 for a sender that is not
// allowed.
func refusal(err error) (status int, fields []schema.FieldError) {
	var ve *schema.ValidationError
	var na *config.SenderNotAllowedError
	switch {
	case errors.As(err, &ve) && ve.TooLarge():
		return http.StatusRequestEntityTooLarge, ve.Fields
	case errors.As(err, &ve):
		return http.StatusBadRequest, ve.Fields
	case errors.As(err, &na):
		return http.StatusForbidden, nil
	}
	return http.StatusBadRequest, nil
}

// post validates a request and publishes it unchanged.
func (a *API) post(rw http.ResponseWriter, r *http.Request) {
	data, ok := a.readBody(rw, r, a.bodyLimit())
	if !ok {
		return
	}
	req, err := a.admission.Admit(data)
	if err == nil {
		err = idempotencyKey(req, r.Header.Get("Idempotency-Key"))
	}
	if err != nil {
		status, fields := refusal(err)
		a.fail(rw, r, status, err.Error(), fields)
		return
	}

	var opts []producer.PublishOption
	if key := r.Header.Get("Idempotency-Key"); req.Id == "" && key != "" {
		// PublishJSON sends the Id of a payload without one only in the
		// Nats-Msg-Id header, which workers take as the Id (contract §2).
		opts = append(opts, producer.WithID(key))
	}
	ctx, cancel := context.WithTimeout(r.Context(), a.timeout)
	defer cancel()
	id, ack, err := a.producer.PublishJSON(ctx, data, opts...)
	if err != nil {
		var ve *schema.ValidationError
		switch {
		case errors.As(err, &ve):
			// Only when Limits are looser than schema.DefaultLimits(),
			// which PublishJSON applies.
			status := http.StatusBadRequest
			if ve.TooLarge() {
				status = http.StatusRequestEntityTooLarge
			}
			a.fail(rw, r, status, ve.Error(), ve.Fields)
		case errors.Is(err, nats.ErrMaxPayload), errors.Is(err, jetstream.ErrStreamMessageExceedsMaximum):
			a.fail(rw, r, http.StatusRequestEntityTooLarge, "request is larger than JetStream takes: "+err.Error(), nil)
		default:
			a.log.ErrorContext(r.Context(), "http api: request not stored", "id", id, "error", err)
			a.fail(rw, r, http.StatusInternalServerError, err.Error(), nil)
		}
		return
	}
	a.log.DebugContext(r.Context(), "http api: request stored", "id", id, "seq", ack.Sequence, "duplicate", ack.Duplicate)
	rw.Header().Set("Location", "/v1/messages/"+id)
	writeJSON(rw, http.StatusAccepted, Response{Id: id, Status: http.StatusAccepted, Duplicate: ack.Duplicate})
}

// idempotencyKey checks the Idempotency-Key header against the request: a
// valid Id, and the body's Id when it has one.
func idempotencyKey(req *schema.Request, key string) error {
	switch {
	case key == "":
		return nil
	case !schema.ValidID(key):
		return &schema.ValidationError{Fields: []schema.FieldError{{
			Field: "Idempotency-Key", Message: "header must match [A-Za-z0-9_-]{1,128}"}}}
	case req.Id != "" && req.Id != key:
		return &schema.ValidationError{Fields: []schema.FieldError{{
			Field: "Id", Message: fmt.Sprintf("%q differs from the Idempotency-Key header %q", req.Id, key)}}}
	}
	return nil
}

// get answers the latest result event of an Id, as stored.
func (a *API) get(rw http.ResponseWriter, r *http.Request) {
	id := r.PathValue("id")
	if !schema.ValidID(id) {
		a.fail(rw, r, http.StatusNotFound, "unknown Id", nil)
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), a.timeout)
	defer cancel()
	s, err := a.js.Stream(ctx, a.names.ResultStream)
	if err != nil {
		if errors.Is(err, jetstream.ErrStreamNotFound) {
			err = fmt.Errorf("no JetStream stream %s: is a worker running?", a.names.ResultStream)
		}
		a.log.ErrorContext(r.Context(), "http api: result stream unreachable", "error", err)
		a.fail(rw, r, http.StatusInternalServerError, err.Error(), nil)
		return
	}
	m, err := s.GetLastMsgForSubject(ctx, a.names.ResultSubject(id))
	switch {
	case errors.Is(err, jetstream.ErrMsgNotFound):
		a.fail(rw, r, http.StatusNotFound, "unknown Id", nil)
		return
	case err != nil:
		a.log.ErrorContext(r.Context(), "http api: status look-up failed", "id", id, "error", err)
		a.fail(rw, r, http.StatusInternalServerError, "status of "+id+": "+err.Error(), nil)
		return
	case !json.Valid(m.Data):
		a.log.ErrorContext(r.Context(), "http api: result event is not JSON", "id", id, "seq", m.Sequence)
		a.fail(rw, r, http.StatusInternalServerError, fmt.Sprintf("result event %d of %s is not JSON", m.Sequence, id), nil)
		return
	}
	setJSONHeaders(rw)
	rw.WriteHeader(http.StatusOK)
	_, _ = rw.Write(m.Data)
}

// fail writes an error answer.
func (a *API) fail(rw http.ResponseWriter, r *http.Request, status int, msg string, fields []schema.FieldError) {
	if status < 500 {
		a.log.DebugContext(r.Context(), "http api: refused", "method", r.Method, "path", r.URL.Path, "status", status, "error", msg)
	}
	writeJSON(rw, status, Response{Status: status, Error: msg, Fields: fields})
}

func setJSONHeaders(rw http.ResponseWriter) {
	h := rw.Header()
	h.Set("Content-Type", "application/json")
	h.Set("Cache-Control", "no-store")
	h.Set("X-Content-Type-Options", "nosniff")
}

func writeJSON(rw http.ResponseWriter, status int, v any) {
	data, err := json.Marshal(v)
	if err != nil { // not with Response
		status, data = http.StatusInternalServerError, []byte(`{"Status":500,"Error":"cannot encode the answer"}`)
	}
	setJSONHeaders(rw)
	rw.WriteHeader(status)
	_, _ = rw.Write(append(data, '\n'))
}
