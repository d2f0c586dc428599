package worker

import (
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

	"github.com/jetmail/jetmail/producer"
	"github.com/jetmail/jetmail/schema"
)

// APIConfig configures the HTTP API (contract §6), served by a worker or,
// for deployments that separate them, by `jetmail gateway` alone.
type APIConfig struct {
	// Names are the subjects and streams; zero fields take the contract's
	// defaults. They must match the workers'.
	Names schema.Names
	// Limits bound requests; zero fields take schema.DefaultLimits. The
	// body is also bounded by the NATS server's max_payload.
	Limits schema.Limits
	// Tokens are the bearer tokens that may call the API. Empty means no
	// authentication. They are compared in constant time and never logged.
	Tokens []string
	// Connections are the named connections the workers deliver through,
	// with what they say about senders, so that the API refuses what a
	// worker would refuse: an unknown Connection (400) and a sender the
	// connection does not allow (403). Nil means the API does not check
	// Connection and From; the workers still do, and publish the result.
	Connections map[string]APISender
	// Templates is the workers' folder of message templates, so that the
	// API refuses (400) an unknown Template, or TemplateData that a
	// template can not be executed with, as a worker would. Empty means
	// the API does not check Template; the workers still do.
	Templates string
	// PublishTimeout bounds the wait for JetStream to store a request.
	// Default 10s.
	PublishTimeout time.Duration
}

// APISender is what a connection says about senders.
type APISender struct {
	// DefaultFrom is the sender of requests without From.
	DefaultFrom string
	// AllowedSenders, when not empty, lists the only senders the
	// connection accepts: addresses, or "@domain" for a whole domain.
	AllowedSenders []string
}

// APIResponse is the JSON body of every answer of POST /v1/messages, and of
// the error answers of GET /v1/messages/{Id} (whose 200 is the result event
// itself): {"Id": …, "Status": 202} for a stored request, {"Status": 4xx or
// 500, "Error": …} otherwise, with Fields for an invalid request.
type APIResponse struct {
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
	names    schema.Names
	limits   schema.Limits
	tokens   [][sha256.Size]byte     // digests, so that comparing takes the same time whatever the length
	senders  map[string]senderPolicy // nil: not checked
	tmpl     templates               // nil: not checked
	timeout  time.Duration
	js       jetstream.JetStream
	producer *producer.Producer
	log      *slog.Logger
}

// NewAPI returns the API for js. A nil logger discards logs. It fails on an
// invalid subject prefix or stream name, an empty token, or an invalid
// connection name.
func NewAPI(cfg APIConfig, js jetstream.JetStream, logger *slog.Logger) (*API, error) {
	var senders map[string]senderPolicy
	if cfg.Connections != nil {
		senders = make(map[string]senderPolicy, len(cfg.Connections))
		for name, s := range cfg.Connections {
			if !schema.ValidToken(name) {
				return nil, fmt.Errorf("api config: connection name %q is not valid", name)
			}
			senders[name] = senderPolicy{defaultFrom: s.DefaultFrom, allowed: s.AllowedSenders}
		}
	}
	var tmpl templates
	if cfg.Templates != "" {
		var err error
		if tmpl, err = loadTemplates(cfg.Templates); err != nil {
			return nil, fmt.Errorf("api config: %w", err)
		}
	}
	return newAPI(cfg, js, logger, senders, tmpl)
}

// newAPI is NewAPI with the connections and templates as a worker holds
// them (nil: not checked).
func newAPI(cfg APIConfig, js jetstream.JetStream, logger *slog.Logger, senders map[string]senderPolicy, tmpl templates) (*API, error) {
	if js == nil {
		return nil, errors.New("api: NewAPI needs a JetStream, got nil")
	}
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	// The worker's defaults, so that the two can not disagree.
	names := Config{Names: cfg.Names}.withDefaults().Names
	a := &API{
		names:   names,
		limits:  cfg.Limits.WithDefaults(),
		senders: senders,
		tmpl:    tmpl,
		timeout: cfg.PublishTimeout,
		js:      js,
		log:     logger,
	}
	if a.timeout <= 0 {
		a.timeout = 10 * time.Second
	}
	for i, t := range cfg.Tokens {
		if t == "" {
			return nil, fmt.Errorf("api config: token %d is empty", i+1)
		}
		a.tokens = append(a.tokens, sha256.Sum256([]byte(t)))
	}
	p, err := producer.New(js, a.producerOptions()...)
	if err != nil {
		return nil, fmt.Errorf("api config: %w", err)
	}
	a.producer = p
	return a, nil
}

func (a *API) producerOptions(extra ...producer.Option) []producer.Option {
	return append([]producer.Option{
		producer.WithSubjectPrefix(a.names.Prefix),
		producer.WithResultStream(a.names.ResultStream),
	}, extra...)
}

// Handler returns a handler that serves the API's two routes (and answers
// 404 to every other path).
func (a *API) Handler() http.Handler {
	mux := http.NewServeMux()
	a.Register(mux)
	return mux
}

// Register mounts POST /v1/messages and GET /v1/messages/{Id} on mux.
func (a *API) Register(mux *http.ServeMux) {
	mux.HandleFunc("POST /v1/messages", a.authorized(a.post))
	mux.HandleFunc("GET /v1/messages/{id}", a.authorized(a.get))
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
	limit := int64(a.limits.MaxRequestBytes)
	if nc := a.js.Conn(); nc != nil {
		if mp := nc.MaxPayload(); mp > 0 && (limit < 0 || mp < limit) {
			limit = mp
		}
	}
	return limit
}

// post validates a request and publishes it unchanged.
func (a *API) post(rw http.ResponseWriter, r *http.Request) {
	limit := a.bodyLimit()
	tooLarge := fmt.Sprintf("request body is larger than the limit of %d bytes", limit)
	if limit >= 0 && r.ContentLength > limit {
		a.fail(rw, r, http.StatusRequestEntityTooLarge, tooLarge, nil)
		return
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
			return
		}
		a.fail(rw, r, http.StatusBadRequest, "cannot read the request body: "+err.Error(), nil)
		return
	}

	req, err := a.parse(data)
	if err == nil {
		err = idempotencyKey(req, r.Header.Get("Idempotency-Key"))
	}
	if err == nil && a.senders != nil {
		_, err = checkSender(a.senders, req)
	}
	if err != nil {
		var ve *schema.ValidationError
		var na *senderNotAllowedError
		switch {
		case errors.As(err, &ve) && ve.TooLarge():
			a.fail(rw, r, http.StatusRequestEntityTooLarge, ve.Error(), ve.Fields)
		case errors.As(err, &ve):
			a.fail(rw, r, http.StatusBadRequest, ve.Error(), ve.Fields)
		case errors.As(err, &na):
			a.fail(rw, r, http.StatusForbidden, na.Error(), nil)
		default:
			a.fail(rw, r, http.StatusBadRequest, err.Error(), nil)
		}
		return
	}

	p := a.producer
	if req.Id == "" && r.Header.Get("Idempotency-Key") != "" {
		// PublishJSON sends an Id it generates only in the Nats-Msg-Id
		// header, which workers take as the Id (contract §2): let it
		// "generate" the key.
		key := r.Header.Get("Idempotency-Key")
		if p, err = producer.New(a.js, a.producerOptions(producer.WithIDFunc(func() string { return key }))...); err != nil {
			a.fail(rw, r, http.StatusInternalServerError, err.Error(), nil)
			return
		}
	}
	ctx, cancel := context.WithTimeout(r.Context(), a.timeout)
	defer cancel()
	id, ack, err := p.PublishJSON(ctx, data)
	if err != nil {
		var ve *schema.ValidationError
		switch {
		case errors.As(err, &ve):
			// Only when Limits are looser than schema.DefaultLimits,
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
	writeJSON(rw, http.StatusAccepted, APIResponse{Id: id, Status: http.StatusAccepted, Duplicate: ack.Duplicate})
}

// parse decodes and validates a request as Worker.parse does, rendering
// its Template (into req, which is not published) when templates are known.
func (a *API) parse(data []byte) (*schema.Request, error) {
	return prepare(data, a.limits, a.tmpl)
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
	writeJSON(rw, status, APIResponse{Status: status, Error: msg, Fields: fields})
}

func setJSONHeaders(rw http.ResponseWriter) {
	h := rw.Header()
	h.Set("Content-Type", "application/json")
	h.Set("Cache-Control", "no-store")
	h.Set("X-Content-Type-Options", "nosniff")
}

func writeJSON(rw http.ResponseWriter, status int, v any) {
	data, err := json.Marshal(v)
	if err != nil { // not with APIResponse
		status, data = http.StatusInternalServerError, []byte(`{"Status":500,"Error":"cannot encode the answer"}`)
	}
	setJSONHeaders(rw)
	rw.WriteHeader(status)
	_, _ = rw.Write(append(data, '\n'))
}

// senderNotAllowedError is a sender that a connection refuses (403).
type senderNotAllowedError struct{ from, conn string }

func (e *senderNotAllowedError) Error() string {
	return fmt.Sprintf("sender %s is not allowed on connection %q", e.from, e.conn)
}

// checkSender decides about a valid request's connection and sender what a
// worker decides before it builds the message (Worker.deliver and Build):
// an unknown connection, or no usable sender, makes the request invalid (a
// *schema.ValidationError, Status 400); a sender that the connection does
// not allow is a *senderNotAllowedError (Status 403). It returns the
// sender's bare address.
func checkSender(senders map[string]senderPolicy, req *schema.Request) (string, error) {
	conn := connName(req.Connection)
	policy, ok := senders[conn]
	if !ok {
		return "", &schema.ValidationError{Fields: []schema.FieldError{{
			Field: "Connection", Message: fmt.Sprintf("unknown connection %q", req.Connection)}}}
	}
	from := req.From
	if from == "" {
		from = policy.defaultFrom
	}
	if from == "" {
		return "", &schema.ValidationError{Fields: []schema.FieldError{{Field: "From", Message: errNoSender.Error()}}}
	}
	addr, err := schema.ParseAddress(from)
	if err != nil {
		return "", &schema.ValidationError{Fields: []schema.FieldError{{Field: "From", Message: fmt.Sprintf("from: %v", err)}}}
	}
	if !policy.allows(addr.Address) {
		return "", &senderNotAllowedError{from: addr.Address, conn: conn}
	}
	return addr.Address, nil
}
