package httpapi

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"mime"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/getkin/kin-openapi/openapi3"
	"github.com/getkin/kin-openapi/openapi3filter"
	"github.com/getkin/kin-openapi/routers"
	"github.com/getkin/kin-openapi/routers/gorillamux"
	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/jetmail/jetmail/config"
	"github.com/jetmail/jetmail/internal/jstest"
	"github.com/jetmail/jetmail/schema"
	"github.com/jetmail/jetmail/worker"
	"github.com/jetmail/jetmail/worker/smtptest"
)

// The tests of the HTTP API run as subtests of TestAPI. Every response
// they get goes through openAPI.check, which validates it against
// schema/openapi.yaml (status documented, headers, body schema) and, for a
// 202, the request as well; when all subtests have run, TestAPI fails for
// each response the document lists that no test got, so that the server
// and the document can not drift apart, and every status code has a test.

const openAPIPath = "../schema/openapi.yaml"

// openAPI is schema/openapi.yaml loaded with kin-openapi, and the
// responses checked against it so far.
type openAPI struct {
	doc    *openapi3.T
	router routers.Router
	server *url.URL // the document's first server, for route matching

	mu   sync.Mutex
	seen map[string]int // "operationId status" → responses checked
}

func loadOpenAPI(t testing.TB) *openAPI {
	t.Helper()
	loader := openapi3.NewLoader()
	loader.IsExternalRefsAllowed = true // request.schema.json, result.schema.json
	doc, err := loader.LoadFromFile(openAPIPath)
	if err != nil {
		t.Fatalf("load %s: %v", openAPIPath, err)
	}
	if err := doc.Validate(loader.Context); err != nil {
		t.Fatalf("%s is not a valid OpenAPI document: %v", openAPIPath, err)
	}
	router, err := gorillamux.NewRouter(validationDoc(t))
	if err != nil {
		t.Fatal(err)
	}
	if len(doc.Servers) == 0 {
		t.Fatal("no servers in the document")
	}
	server, err := url.Parse(doc.Servers[0].URL)
	if err != nil {
		t.Fatal(err)
	}
	return &openAPI{doc: doc, router: router, server: server, seen: map[string]int{}}
}

// check validates one exchange against the document and records it.
func (oa *openAPI) check(t testing.TB, req *http.Request, reqBody []byte, res httpResult) {
	t.Helper()
	// Match the route as if the request went to the documented server.
	r := req.Clone(context.Background())
	r.URL.Scheme, r.URL.Host, r.Host = oa.server.Scheme, oa.server.Host, oa.server.Host
	r.Body = io.NopCloser(bytes.NewReader(reqBody))
	route, params, err := oa.router.FindRoute(r)
	if err != nil {
		t.Errorf("%s %s: no such operation in %s: %v", req.Method, req.URL.Path, openAPIPath, err)
		return
	}
	if reqBody != nil && !documentsMediaType(route, r.Header.Get("Content-Type")) {
		// The document takes the body as JSON whatever its media type,
		// unless it describes that media type (NDJSON for a batch).
		r.Header.Set("Content-Type", "application/json")
	}
	in := &openapi3filter.RequestValidationInput{
		Request: r, PathParams: params, Route: route,
		Options: &openapi3filter.Options{AuthenticationFunc: openapi3filter.NoopAuthenticationFunc},
	}
	out := &openapi3filter.ResponseValidationInput{
		RequestValidationInput: in,
		Status:                 res.status,
		Header:                 res.header,
		Options:                &openapi3filter.Options{IncludeResponseStatus: true, MultiError: true},
	}
	out.SetBodyBytes(res.body)
	if err := openapi3filter.ValidateResponse(context.Background(), out); err != nil {
		t.Errorf("%s %s → %d %s\ndoes not conform to %s: %v", req.Method, req.URL.Path, res.status, res.body, openAPIPath, err)
	}
	if res.status/100 == 2 {
		// What the server took must be what the document describes.
		if err := openapi3filter.ValidateRequest(context.Background(), in); err != nil {
			t.Errorf("%s %s with %s was answered %d, but the request does not conform to %s: %v", req.Method, req.URL.Path, reqBody, res.status, openAPIPath, err)
		}
	}
	oa.mu.Lock()
	oa.seen[fmt.Sprintf("%s %d", route.Operation.OperationID, res.status)]++
	oa.mu.Unlock()
}

// documentsMediaType reports whether the route's request body documents
// the media type of contentType (parameters ignored).
func documentsMediaType(route *routers.Route, contentType string) bool {
	mt, _, err := mime.ParseMediaType(contentType)
	if err != nil || route.Operation.RequestBody == nil || route.Operation.RequestBody.Value == nil {
		return false
	}
	_, ok := route.Operation.RequestBody.Value.Content[mt]
	return ok
}

// documented lists "operationId status" for every response of the
// document.
func (oa *openAPI) documented() []string {
	var out []string
	for path, item := range oa.doc.Paths.Map() {
		for method, op := range item.Operations() {
			if op.OperationID == "" {
				out = append(out, fmt.Sprintf("%s %s: no operationId", method, path))
				continue
			}
			for code := range op.Responses.Map() {
				out = append(out, op.OperationID+" "+code)
			}
		}
	}
	slices.Sort(out)
	return out
}

// httpResult is a response, read.
type httpResult struct {
	status int
	header http.Header
	body   []byte
}

// answer decodes an Response body.
func (r httpResult) answer(t testing.TB) Response {
	t.Helper()
	var a Response
	if err := json.Unmarshal(r.body, &a); err != nil {
		t.Fatalf("answer %d is not JSON: %v: %s", r.status, err, r.body)
	}
	if a.Status != r.status {
		t.Errorf("answer %d has Status %d", r.status, a.Status)
	}
	return a
}

// reqOption changes a request of send.
type reqOption func(*http.Request)

func withHeader(k, v string) reqOption { return func(r *http.Request) { r.Header.Set(k, v) } }

func withToken(tok string) reqOption { return withHeader("Authorization", "Bearer "+tok) }

// chunked sends the body without a Content-Length.
func chunked() reqOption {
	return func(r *http.Request) {
		r.ContentLength = -1
		body := r.Body
		r.Body = io.NopCloser(struct{ io.Reader }{body})
	}
}

// send makes one request to the API, reads the answer and checks the
// exchange against the document.
func (oa *openAPI) send(t testing.TB, method, url string, body []byte, opts ...reqOption) httpResult {
	t.Helper()
	var rd io.Reader
	if body != nil {
		rd = bytes.NewReader(body)
	}
	req, err := http.NewRequest(method, url, rd)
	if err != nil {
		t.Fatal(err)
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	for _, o := range opts {
		o(req)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, url, err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("%s %s: reading the answer: %v", method, url, err)
	}
	res := httpResult{status: resp.StatusCode, header: resp.Header, body: data}
	oa.check(t, req, body, res)
	return res
}

func (oa *openAPI) post(t testing.TB, base string, body string, opts ...reqOption) httpResult {
	t.Helper()
	return oa.send(t, http.MethodPost, base+"/v1/messages", []byte(body), opts...)
}

func (oa *openAPI) get(t testing.TB, base, id string, opts ...reqOption) httpResult {
	t.Helper()
	return oa.send(t, http.MethodGet, base+"/v1/messages/"+id, nil, opts...)
}

// wantStatus fails the test unless res has the status.
func wantStatus(t testing.TB, res httpResult, status int) {
	t.Helper()
	if res.status != status {
		t.Fatalf("status %d, want %d: %s", res.status, status, res.body)
	}
}

// finalStatus polls GET /v1/messages/{id} until it answers a final result
// event, and returns it.
func (oa *openAPI) finalStatus(t testing.TB, base, id string, opts ...reqOption) schema.Result {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		res := oa.send(t, http.MethodGet, base+"/v1/messages/"+id, nil, opts...)
		if res.status == http.StatusOK {
			var r schema.Result
			if err := json.Unmarshal(res.body, &r); err != nil {
				t.Fatalf("result not JSON: %v: %s", err, res.body)
			}
			if r.Final() {
				return r
			}
		} else if res.status != http.StatusNotFound {
			t.Fatalf("GET %s: %d %s", id, res.status, res.body)
		}
		if time.Now().After(deadline) {
			t.Fatalf("no final result for %s within 20s (last answer %d %s)", id, res.status, res.body)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// subscribeSend records what is published on mail.send, headers included.
func subscribeSend(t testing.TB, nc *nats.Conn) *nats.Subscription {
	t.Helper()
	sub, err := nc.SubscribeSync("mail.send")
	if err != nil {
		t.Fatal(err)
	}
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	return sub
}

func nextPublished(t testing.TB, sub *nats.Subscription) *nats.Msg {
	t.Helper()
	m, err := sub.NextMsg(5 * time.Second)
	if err != nil {
		t.Fatalf("nothing published on mail.send: %v", err)
	}
	return m
}

// TestAPI runs every test of the HTTP API, then checks that every response
// in schema/openapi.yaml was given by one of them.
func TestAPI(t *testing.T) {
	t.Parallel()
	oa := loadOpenAPI(t)
	tests := []struct {
		name string
		run  func(*testing.T, *openAPI)
	}{
		{"Accepted", testAPIAccepted},
		{"AcceptedIdempotencyKey", testAPIAcceptedIdempotencyKey},
		{"AcceptedGeneratedId", testAPIAcceptedGeneratedID},
		{"Duplicate", testAPIDuplicate},
		{"Invalid", testAPIInvalid},
		{"Unauthorized", testAPIUnauthorized},
		{"UnauthorizedStandalone", testAPIUnauthorizedStandalone},
		{"SendersAgreeWithWorker", testAPISendersAgreeWithWorker},
		{"TooLarge", testAPITooLarge},
		{"TooLargeForNATS", testAPITooLargeForNATS},
		{"NoStream", testAPINoStream},
		{"NATSClosed", testAPINATSClosed},
		{"NotFound", testAPINotFound},
		{"Suppressions", testAPISuppressions},
		{"SuppressionsInvalid", testAPISuppressionsInvalid},
		{"SuppressionsUnauthorized", testAPISuppressionsUnauthorized},
		{"SuppressionsNATSClosed", testAPISuppressionsNATSClosed},
		{"Unsubscribe", testAPIUnsubscribe},
		{"UnsubscribePage", testAPIUnsubscribePage},
		{"UnsubscribeBadToken", testAPIUnsubscribeBadToken},
		{"UnsubscribeRateLimit", testAPIUnsubscribeRateLimit},
		{"UnsubscribeNATSClosed", testAPIUnsubscribeNATSClosed},
		{"Batch", testAPIBatch},
		{"BatchPriority", testAPIBatchPriority},
		{"BatchNDJSON", testAPIBatchNDJSON},
		{"BatchDuplicate", testAPIBatchDuplicate},
		{"BatchTooMany", testAPIBatchTooMany},
		{"BatchTooLarge", testAPIBatchTooLarge},
		{"BatchItemTooLarge", testAPIBatchItemTooLarge},
		{"BatchSenders", testAPIBatchSenders},
		{"BatchInvalid", testAPIBatchInvalid},
		{"BatchNATSClosed", testAPIBatchNATSClosed},
		{"NewRoutesUnauthorized", testAPINewRoutesUnauthorized},
		{"CancelScheduled", testAPICancelScheduled},
		{"CancelDeferred", testAPICancelDeferred},
		{"CancelTooLate", testAPICancelTooLate},
		{"CancelWhileSending", testAPICancelWhileSending},
		{"CancelUnknown", testAPICancelUnknown},
		{"CancelBatch", testAPICancelBatch},
		{"CancelBatchInvalid", testAPICancelBatchInvalid},
		{"CancelNATSError", testAPICancelNATSError},
		// search_test.go
		{"Search", testAPISearch},
		{"SearchPaging", testAPISearchPaging},
		{"SearchBadQuery", testAPISearchBadQuery},
		{"SearchDisabled", testAPISearchDisabled},
		{"SearchUnauthorized", testAPISearchUnauthorized},
		{"SearchFailed", testAPISearchFailed},
		{"Events", testAPIEvents},
		{"EventsNotFound", testAPIEventsNotFound},
	}
	var ran atomic.Int32
	t.Run("cases", func(t *testing.T) {
		for _, tc := range tests {
			t.Run(tc.name, func(t *testing.T) {
				t.Parallel()
				ran.Add(1)
				tc.run(t, oa)
			})
		}
	})
	if int(ran.Load()) < len(tests) || t.Failed() {
		return // a -run pattern chose some; or the cases already failed
	}
	for _, key := range oa.documented() {
		if oa.seen[key] == 0 {
			t.Errorf("%s documents response %q, and no test got it", openAPIPath, key)
		}
	}
	t.Logf("responses checked against %s: %v", openAPIPath, oa.seen)
}

// TestOpenAPIDocument checks the document itself: valid OpenAPI 3.1 (with
// its examples valid against their schemas), the operations and status
// codes of contract §6, bearer security.
func TestOpenAPIDocument(t *testing.T) {
	t.Parallel()
	oa := loadOpenAPI(t)
	if !oa.doc.IsOpenAPI31OrLater() {
		t.Errorf("openapi %s, want 3.1 (its schemas are JSON Schema 2020-12)", oa.doc.OpenAPI)
	}
	want := []string{
		"cancelBatch 200", "cancelBatch 400", "cancelBatch 401", "cancelBatch 500",
		"cancelMessage 200", "cancelMessage 401", "cancelMessage 404", "cancelMessage 409", "cancelMessage 500",
		"getMessage 200", "getMessage 401", "getMessage 404", "getMessage 500",
		"sendBatch 202", "sendBatch 400", "sendBatch 401", "sendBatch 413",
		"getMessageEvents 200", "getMessageEvents 401", "getMessageEvents 404", "getMessageEvents 500",
		"searchMessages 200", "searchMessages 400", "searchMessages 401", "searchMessages 500", "searchMessages 503",
		"sendMessage 202", "sendMessage 400", "sendMessage 401", "sendMessage 403", "sendMessage 413", "sendMessage 500",
	}
	want = append(want, suppressionResponses...)
	slices.Sort(want)
	if got := oa.documented(); !slices.Equal(got, want) {
		t.Errorf("documented responses\n got %v\nwant %v", got, want)
	}
	post := oa.doc.Paths.Find("/v1/messages").Post
	if post == nil || post.Parameters.GetByInAndName("header", "Idempotency-Key") == nil {
		t.Error("POST /v1/messages does not document the Idempotency-Key header")
	}
	ss := oa.doc.Components.SecuritySchemes["bearerAuth"]
	if ss == nil || ss.Value.Type != "http" || ss.Value.Scheme != "bearer" {
		t.Errorf("no http bearer security scheme bearerAuth: %+v", ss)
	}
	// The request body is the request schema itself.
	body := post.RequestBody.Value.Content.Get("application/json")
	if body == nil || body.Schema.Ref != "request.schema.json" {
		t.Errorf("POST body schema is not request.schema.json: %+v", body)
	}
	get := oa.doc.Paths.Find("/v1/messages/{Id}").Get
	if r := get.Responses.Status(200).Value.Content.Get("application/json"); r == nil || r.Schema.Ref != "result.schema.json" {
		t.Errorf("GET 200 schema is not result.schema.json: %+v", r)
	}
}

// testAPIAccepted: a valid request is published unchanged with its Id as
// Nats-Msg-Id, answered 202 with Location, delivered by the worker, and
// its final result read back with GET.
func testAPIAccepted(t *testing.T, oa *openAPI) {
	b := setup(t, worker.Config{})
	base := serveWorker(t, b)
	sub := subscribeSend(t, b.nc)
	body := `{"to": "Jan <jan@example.com>", "Subject": "Zażółć", "Body": "<p>hi</p>", "IsHtml": "true",
		"Id": "api-accepted-1", "Metadata": {"order": "1234"}}`
	res := oa.post(t, base, body)
	wantStatus(t, res, http.StatusAccepted)
	if a := res.answer(t); a.Id != "api-accepted-1" || a.Duplicate {
		t.Errorf("answer %+v", a)
	}
	if loc := res.header.Get("Location"); loc != "/v1/messages/api-accepted-1" {
		t.Errorf("Location %q", loc)
	}
	m := nextPublished(t, sub)
	if got := m.Header.Get(jetstream.MsgIDHeader); got != "api-accepted-1" {
		t.Errorf("Nats-Msg-Id %q", got)
	}
	if string(m.Data) != body {
		t.Errorf("published payload changed:\n got %s\nwant %s", m.Data, body)
	}
	fin := oa.finalStatus(t, base, "api-accepted-1")
	if fin.State != schema.StateSent || fin.Status != schema.Status200 || fin.Metadata["order"] != "1234" {
		t.Errorf("final result %+v", fin)
	}
	// GET answers the event exactly as the worker stored it.
	stream, err := b.js.Stream(context.Background(), "JETMAIL_RESULTS")
	if err != nil {
		t.Fatal(err)
	}
	stored, err := stream.GetLastMsgForSubject(context.Background(), "mail.result.api-accepted-1")
	if err != nil {
		t.Fatal(err)
	}
	got := oa.get(t, base, "api-accepted-1")
	wantStatus(t, got, http.StatusOK)
	if !bytes.Equal(got.body, stored.Data) {
		t.Errorf("GET answered\n%s\nthe stored event is\n%s", got.body, stored.Data)
	}
	if ct := got.header.Get("Content-Type"); ct != "application/json" {
		t.Errorf("Content-Type %q", ct)
	}
}

// testAPIAcceptedIdempotencyKey: without an Id in the body, the
// Idempotency-Key header is the Id (sent as Nats-Msg-Id, the body
// unchanged), and the worker takes it. This is the README's curl example.
func testAPIAcceptedIdempotencyKey(t *testing.T, oa *openAPI) {
	b := setup(t, worker.Config{}, "s3cret")
	base := serveWorker(t, b)
	sub := subscribeSend(t, b.nc)
	body := `{"To": "jan@example.com", "Subject": "Hello", "Body": "Hi Jan"}`
	res := oa.post(t, base, body, withToken("s3cret"), withHeader("Idempotency-Key", "order-1234"))
	wantStatus(t, res, http.StatusAccepted)
	if string(res.body) != `{"Id":"order-1234","Status":202}`+"\n" {
		t.Errorf("answer %s", res.body)
	}
	if loc := res.header.Get("Location"); loc != "/v1/messages/order-1234" {
		t.Errorf("Location %q", loc)
	}
	m := nextPublished(t, sub)
	if got := m.Header.Get(jetstream.MsgIDHeader); got != "order-1234" || string(m.Data) != body {
		t.Errorf("published Nats-Msg-Id %q, payload %s", got, m.Data)
	}
	fin, _ := b.results.Final(t, "order-1234")
	if fin.Status != schema.Status200 {
		t.Errorf("final %+v", fin)
	}
	if r := oa.finalStatus(t, base, "order-1234", withToken("s3cret")); r.Id != "order-1234" {
		t.Errorf("GET %+v", r)
	}
	// The same key as the body's Id is fine, and a duplicate.
	res = oa.post(t, base, `{"To": "jan@example.com", "Id": "order-1234"}`, withToken("s3cret"), withHeader("Idempotency-Key", "order-1234"))
	wantStatus(t, res, http.StatusAccepted)
	if a := res.answer(t); !a.Duplicate || a.Id != "order-1234" {
		t.Errorf("answer %+v, want a duplicate", a)
	}
}

// testAPIAcceptedGeneratedId: without Id and key, the API answers the Id
// it generated, which is the Nats-Msg-Id the worker takes.
func testAPIAcceptedGeneratedID(t *testing.T, oa *openAPI) {
	b := setup(t, worker.Config{})
	base := serveWorker(t, b)
	sub := subscribeSend(t, b.nc)
	// No Content-Type: the API is lenient about it.
	res := oa.post(t, base, `{"To": ["a@example.com", "b@example.org"]}`, withHeader("Content-Type", ""))
	wantStatus(t, res, http.StatusAccepted)
	id := res.answer(t).Id
	if !schema.ValidID(id) {
		t.Fatalf("generated Id %q", id)
	}
	if got := nextPublished(t, sub).Header.Get(jetstream.MsgIDHeader); got != id {
		t.Errorf("Nats-Msg-Id %q, answered Id %q", got, id)
	}
	if fin := oa.finalStatus(t, base, id); fin.Status != schema.Status200 {
		t.Errorf("final %+v", fin)
	}
}

// testAPIDuplicate: the same Id twice is 202 both times, stored and sent
// once.
func testAPIDuplicate(t *testing.T, oa *openAPI) {
	b := setup(t, worker.Config{})
	base := serveWorker(t, b)
	body := `{"To": "jan@example.com", "Id": "api-dup-1"}`
	first := oa.post(t, base, body)
	wantStatus(t, first, http.StatusAccepted)
	second := oa.post(t, base, body)
	wantStatus(t, second, http.StatusAccepted)
	if a, b := first.answer(t), second.answer(t); a.Duplicate || !b.Duplicate || a.Id != b.Id {
		t.Errorf("answers %+v then %+v", a, b)
	}
	b.results.Final(t, "api-dup-1")
	oa.finalStatus(t, base, "api-dup-1")
	wantRequestLastSeq(t, b.js, 1)
}

// wantRequestLastSeq checks that the request stream holds exactly n
// publishes: duplicates were not stored again.
func wantRequestLastSeq(t *testing.T, js jetstream.JetStream, n uint64) {
	t.Helper()
	st, err := js.Stream(context.Background(), "JETMAIL_REQUESTS")
	if err != nil {
		t.Fatal(err)
	}
	if si, err := st.Info(context.Background()); err != nil || si.State.LastSeq != n {
		t.Errorf("request stream last sequence %d (%v), want %d", si.State.LastSeq, err, n)
	}
}

// testAPIInvalid: 400 with every broken rule in Fields; nothing published.
func testAPIInvalid(t *testing.T, oa *openAPI) {
	b := setup(t, worker.Config{})
	base := serveWorker(t, b)
	sub := subscribeSend(t, b.nc)
	cases := []struct {
		name, body string
		opts       []reqOption
		fields     []string // Field of each FieldError
		message    string   // in the first FieldError's Message
	}{
		{"bad address", `{"To": "jan@;ok@example.com", "From": "nope"}`, nil, []string{"To[0]", "From"}, "not a valid email address"},
		{"no recipient", `{"Subject": "hi"}`, nil, []string{""}, "no recipient"},
		{"not JSON", `To: jan@example.com`, nil, []string{""}, "not valid JSON"},
		{"empty body", ``, nil, []string{""}, "not valid JSON"},
		{"not an object", `["jan@example.com"]`, nil, []string{""}, "want a JSON object"},
		{"CRLF in header", `{"To": "a@example.com", "Headers": {"X-A": "1\r\nBcc: x@evil.test"}}`, nil, []string{`Headers["X-A"]`}, "CR or LF"},
		{"bad base64", `{"To": "a@example.com", "Attachments": [{"FileName": "a.txt", "ContentData": "!!", "ContentTransferEncoding": "base64"}]}`, nil, []string{"Attachments[0].ContentData"}, "base64"},
		{"unknown connection", `{"To": "a@example.com", "Connection": "eu"}`, nil, []string{"Connection"}, `unknown connection "eu"`},
		{"unknown template", `{"To": "a@example.com", "Template": "welcome"}`, nil, []string{"Template"}, "unknown template"},
		{"bad Idempotency-Key", `{"To": "a@example.com"}`, []reqOption{withHeader("Idempotency-Key", "a.b")}, []string{"Idempotency-Key"}, "must match"},
		{"Idempotency-Key differs from Id", `{"To": "a@example.com", "Id": "one"}`, []reqOption{withHeader("Idempotency-Key", "two")}, []string{"Id"}, "differs"},
		{"form instead of JSON", `to=a%40example.com`, []reqOption{withHeader("Content-Type", "application/x-www-form-urlencoded")}, []string{""}, "not valid JSON"},
	}
	for _, c := range cases {
		res := oa.post(t, base, c.body, c.opts...)
		if res.status != http.StatusBadRequest {
			t.Errorf("%s: status %d, want 400: %s", c.name, res.status, res.body)
			continue
		}
		a := res.answer(t)
		var fields []string
		for _, f := range a.Fields {
			fields = append(fields, f.Field)
		}
		if !slices.Equal(fields, c.fields) || !strings.Contains(a.Fields[0].Message, c.message) || !strings.HasPrefix(a.Error, "invalid request: ") {
			t.Errorf("%s: answer %s, want fields %q and %q", c.name, res.body, c.fields, c.message)
		}
	}
	if m, err := sub.NextMsg(100 * time.Millisecond); err == nil {
		t.Errorf("an invalid request was published: %s", m.Data)
	}
}

// testAPIUnauthorized: with tokens, both routes answer 401 with a Bearer
// challenge to a missing, malformed or wrong token, before looking at the
// request.
func testAPIUnauthorized(t *testing.T, oa *openAPI) {
	b := setup(t, worker.Config{}, "s3cret", "second-token")
	base := serveWorker(t, b)
	body := `{"To": "a@example.com", "Id": "api-auth-1"}`
	for _, c := range []struct {
		name, auth, challenge string
	}{
		{"missing", "", `Bearer realm="jetmail"`},
		{"wrong token", "Bearer s3cret2", `Bearer realm="jetmail", error="invalid_token"`},
		{"prefix of a token", "Bearer s3cre", `Bearer realm="jetmail", error="invalid_token"`},
		{"basic", "Basic czNjcmV0", `Bearer realm="jetmail"`},
		{"no token", "Bearer ", `Bearer realm="jetmail"`},
	} {
		var opts []reqOption
		if c.auth != "" {
			opts = append(opts, withHeader("Authorization", c.auth))
		}
		for _, res := range []httpResult{
			oa.post(t, base, body, opts...),
			oa.post(t, base, `not even JSON`, opts...),
			oa.get(t, base, "api-auth-1", opts...),
		} {
			if res.status != http.StatusUnauthorized {
				t.Errorf("%s: status %d, want 401: %s", c.name, res.status, res.body)
				continue
			}
			if got := res.header.Get("WWW-Authenticate"); got != c.challenge {
				t.Errorf("%s: WWW-Authenticate %q, want %q", c.name, got, c.challenge)
			}
			if a := res.answer(t); a.Error != "missing or invalid bearer token" {
				t.Errorf("%s: answer %+v", c.name, a)
			}
		}
	}
	// Either token works, with the scheme in any case; health and metrics
	// stay open.
	wantStatus(t, oa.post(t, base, body, withHeader("Authorization", "bearer second-token")), http.StatusAccepted)
	oa.finalStatus(t, base, "api-auth-1", withToken("s3cret"))
	for _, path := range []string{"/healthz", "/metrics"} {
		resp, err := http.Get(base + path)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			t.Errorf("GET %s: %d", path, resp.StatusCode)
		}
	}
}

// testAPIUnauthorizedStandalone: a gateway's API (NewAPI) with tokens,
// logging at debug level, never logs a token.
func testAPIUnauthorizedStandalone(t *testing.T, oa *openAPI) {
	b := setup(t, worker.Config{})
	var logs syncBuffer
	logger := slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	base := serveAPI(t, Config{Tokens: []string{"gateway-s3cret"}}, b.js, logger)
	wantStatus(t, oa.post(t, base, `{"To": "a@example.com"}`, withToken("gateway-s3cret-wrong")), http.StatusUnauthorized)
	wantStatus(t, oa.get(t, base, "x", withToken("wrong")), http.StatusUnauthorized)
	wantStatus(t, oa.post(t, base, `{"To": "nope"}`, withToken("gateway-s3cret")), http.StatusBadRequest)
	res := oa.post(t, base, `{"To": "a@example.com"}`, withToken("gateway-s3cret"))
	wantStatus(t, res, http.StatusAccepted)
	oa.finalStatus(t, base, res.answer(t).Id, withToken("gateway-s3cret"))
	if strings.Contains(logs.String(), "s3cret") {
		t.Errorf("a token was logged:\n%s", logs.String())
	}
	if !strings.Contains(logs.String(), "status=401") {
		t.Errorf("refusals not logged at debug level:\n%s", logs.String())
	}
	if _, err := New(Config{Tokens: []string{"a", ""}}, b.js, nil); err == nil {
		t.Error("New took an empty token")
	}
}

// syncBuffer is a bytes.Buffer for concurrent writers.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// testAPISendersAgreeWithWorker: for connections, senders and templates the
// API answers what the worker decides about the same payload published
// straight to NATS: 403 for a sender the connection does not allow, 400
// (with the same Fields) for an unknown connection, a connection without a
// default sender, or a template that can not be executed, and 202 (then
// sent) otherwise. Both with the worker's API and with a gateway's API
// configured with the same connections and templates.
func testAPISendersAgreeWithWorker(t *testing.T, oa *openAPI) {
	tmpl := t.TempDir()
	for name, src := range map[string]string{
		"welcome.subject.tmpl": "Welcome, {{.Name}}",
		"welcome.text.tmpl":    "Hello {{.Name}}",
	} {
		if err := os.WriteFile(filepath.Join(tmpl, name), []byte(src), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	smtpSrv := smtptest.NewServer(t)
	cfg := worker.Config{
		Templates: tmpl,
		Connections: map[string]config.SMTP{
			"default": {From: "noreply@example.com", AllowedSenders: []string{"@example.com", "Ops@Partner.test"}},
			"bare":    {URL: smtpSrv.URL()},
		},
	}
	b := smtpBundle(t, smtpSrv, cfg)
	// A gateway configured by hand with the same senders and templates.
	templates, err := config.LoadTemplates(tmpl)
	if err != nil {
		t.Fatal(err)
	}
	gateway := serveAPI(t, Config{Admission: &config.Admission{
		Templates: templates,
		Senders: map[string]config.Sender{
			"default": {DefaultFrom: "noreply@example.com", Allowed: []string{"@example.com", "Ops@Partner.test"}},
			"bare":    {},
		},
	}}, b.js, nil)
	for i, base := range []string{serveWorker(t, b), gateway} {
		for j, c := range []struct {
			name, body string
			status     int // the API's answer; the worker's result is 200 for 202
		}{
			{"default sender", `{"To": "a@example.org"}`, 202},
			{"allowed domain", `{"To": "a@example.org", "From": "Sales <sales@example.com>"}`, 202},
			{"allowed address in another case", `{"To": "a@example.org", "From": "ops@partner.TEST"}`, 202},
			{"sender not allowed", `{"To": "a@example.org", "From": "mallory@evil.test"}`, 403},
			{"subdomain not allowed", `{"To": "a@example.org", "From": "x@mail.example.community"}`, 403},
			{"unknown connection", `{"To": "a@example.org", "Connection": "eu"}`, 400},
			{"no default sender", `{"To": "a@example.org", "Connection": "bare"}`, 400},
			{"any sender without a list", `{"To": "a@example.org", "Connection": "bare", "From": "x@anywhere.test"}`, 202},
			{"template", `{"To": "a@example.org", "Template": "welcome", "TemplateData": {"Name": "Jan"}}`, 202},
			{"template data missing", `{"To": "a@example.org", "Template": "welcome", "TemplateData": {"Nom": "Jan"}}`, 400},
			{"bad address", `{"To": "a@example.org, b@"}`, 400},
		} {
			id := fmt.Sprintf("agree-%d-%d", i, j)
			res := oa.post(t, base, c.body, withHeader("Idempotency-Key", "api-"+id))
			if res.status != c.status {
				t.Errorf("%s: API answered %d, want %d: %s", c.name, res.status, c.status, res.body)
				continue
			}
			b.publishRaw(t, []byte(c.body), "nats-"+id)
			direct, _ := b.results.Final(t, "nats-"+id)
			switch c.status {
			case 202:
				fin, _ := b.results.Final(t, "api-"+id)
				if fin.Status != schema.Status200 || direct.Status != schema.Status200 {
					t.Errorf("%s: final results %d (API) and %d (NATS), want 200", c.name, fin.Status, direct.Status)
				}
			case 403:
				a := res.answer(t)
				if direct.Status != schema.Status403 || direct.Error != a.Error {
					t.Errorf("%s: the worker decided %d %q, the API 403 %q", c.name, direct.Status, direct.Error, a.Error)
				}
			case 400:
				a := res.answer(t)
				if direct.Status != schema.Status400 || !slices.Equal(direct.Fields, a.Fields) {
					t.Errorf("%s: the worker decided %d %+v, the API 400 %+v", c.name, direct.Status, direct.Fields, a.Fields)
				}
			}
		}
	}
}

// testAPITooLarge: 413 for a body over MaxRequestBytes (with and without
// Content-Length) and for a request over another limit; a body under the
// limit is taken. (One of exactly MaxRequestBytes is not: the request
// stream's MaxMsgSize is MaxRequestBytes and counts the Nats-Msg-Id header
// too, and the API answers 413 for what JetStream refuses as too large.)
func testAPITooLarge(t *testing.T, oa *openAPI) {
	b := setup(t, worker.Config{Limits: schema.Limits{MaxRequestBytes: 4096, MaxRecipients: 3}})
	base := serveWorker(t, b)
	pad := func(body string, n int) string { return body + strings.Repeat(" ", n-len(body)) }
	over := pad(`{"To": "a@example.com"}`, 4097)
	for _, opts := range [][]reqOption{nil, {chunked()}} {
		res := oa.post(t, base, over, opts...)
		wantStatus(t, res, http.StatusRequestEntityTooLarge)
		if a := res.answer(t); !strings.Contains(a.Error, "larger than the limit of 4096 bytes") {
			t.Errorf("answer %+v", a)
		}
	}
	res := oa.post(t, base, `{"To": "a@example.com;b@example.com;c@example.com;d@example.com", "From": "bad"}`)
	wantStatus(t, res, http.StatusRequestEntityTooLarge)
	if a := res.answer(t); len(a.Fields) != 2 || !strings.Contains(a.Error, "4 recipients, more than the limit of 3") {
		t.Errorf("answer %+v, want the size limit and the bad From", a)
	}
	res = oa.post(t, base, pad(`{"To": "a@example.com", "Id": "api-under-limit"}`, 4000), chunked())
	wantStatus(t, res, http.StatusAccepted)
	if fin, _ := b.results.Final(t, "api-under-limit"); fin.Status != schema.Status200 {
		t.Errorf("final %+v", fin)
	}
}

// testAPITooLargeForNATS: a body that the limits allow but the NATS
// server's max_payload does not is 413 too, whether it is over max_payload
// itself or only with the Nats-Msg-Id header.
func testAPITooLargeForNATS(t *testing.T, oa *openAPI) {
	srv := jstest.Start(t, func(o *server.Options) { o.MaxPayload = 4096 })
	b := setupOn(t, srv, worker.Config{})
	base := serveWorker(t, b)
	pad := func(body string, n int) string { return body + strings.Repeat(" ", n-len(body)) }
	res := oa.post(t, base, pad(`{"To": "a@example.com"}`, 5000))
	wantStatus(t, res, http.StatusRequestEntityTooLarge)
	if a := res.answer(t); !strings.Contains(a.Error, "limit of 4096 bytes") {
		t.Errorf("answer %+v", a)
	}
	res = oa.post(t, base, pad(`{"To": "a@example.com", "Id": "api-just-under"}`, 4090))
	wantStatus(t, res, http.StatusRequestEntityTooLarge)
	if a := res.answer(t); !strings.Contains(a.Error, "maximum payload") {
		t.Errorf("answer %+v", a)
	}
}

// testAPINoStream: a gateway whose JetStream has no request stream (no
// worker ever ran) answers 500, and so does GET without a result stream.
func testAPINoStream(t *testing.T, oa *openAPI) {
	_, js := jstest.Start(t).Connect(t)
	base := serveAPI(t, Config{}, js, nil)
	res := oa.post(t, base, `{"To": "a@example.com"}`)
	wantStatus(t, res, http.StatusInternalServerError)
	if a := res.answer(t); !strings.Contains(a.Error, "no JetStream stream") {
		t.Errorf("answer %+v", a)
	}
	res = oa.get(t, base, "some-id")
	wantStatus(t, res, http.StatusInternalServerError)
	if a := res.answer(t); !strings.Contains(a.Error, "no JetStream stream JETMAIL_RESULTS") {
		t.Errorf("answer %+v", a)
	}
	// Invalid requests are still 400: nothing needs NATS for them.
	wantStatus(t, oa.post(t, base, `{}`), http.StatusBadRequest)
}

// testAPINATSClosed: NATS errors are 500.
func testAPINATSClosed(t *testing.T, oa *openAPI) {
	b := setup(t, worker.Config{})
	nc, js := b.nats.Connect(t)
	base := serveAPI(t, Config{}, js, nil)
	nc.Close()
	res := oa.post(t, base, `{"To": "a@example.com"}`)
	wantStatus(t, res, http.StatusInternalServerError)
	if a := res.answer(t); !strings.Contains(a.Error, "connection closed") {
		t.Errorf("answer %+v", a)
	}
	wantStatus(t, oa.get(t, base, "some-id"), http.StatusInternalServerError)
}

// testAPINotFound: 404 for an Id without results, or not an Id at all.
func testAPINotFound(t *testing.T, oa *openAPI) {
	b := setup(t, worker.Config{})
	base := serveWorker(t, b)
	for _, id := range []string{"never-posted", "bad.id", "has%20space", strings.Repeat("x", 129)} {
		res := oa.get(t, base, id)
		wantStatus(t, res, http.StatusNotFound)
		if a := res.answer(t); a.Error != "unknown Id" {
			t.Errorf("%s: answer %+v", id, a)
		}
	}
}
