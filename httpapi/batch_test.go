package httpapi

import (
	"encoding/json"
	"net/http"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/jetmail/jetmail/config"
	"github.com/jetmail/jetmail/internal/jstest"
	"github.com/jetmail/jetmail/schema"
	"github.com/jetmail/jetmail/worker"
	"github.com/jetmail/jetmail/worker/smtptest"
)

// The tests of POST /v1/messages/batch, run by TestAPI.

// laneWatch records what is published on the three lanes' subjects, by
// Nats-Msg-Id, with core NATS subscriptions: what the API published, and
// on which subject, whatever the workers do with it.
type laneWatch struct {
	mu   sync.Mutex
	byID map[string][]*nats.Msg
	n    int
}

func watchLanes(t testing.TB, nc *nats.Conn) *laneWatch {
	t.Helper()
	lw := &laneWatch{byID: map[string][]*nats.Msg{}}
	for _, subj := range []string{"mail.urgent", "mail.urgent.>", "mail.send", "mail.send.>", "mail.bulk", "mail.bulk.>"} {
		sub, err := nc.Subscribe(subj, func(m *nats.Msg) {
			lw.mu.Lock()
			defer lw.mu.Unlock()
			id := m.Header.Get(jetstream.MsgIDHeader)
			lw.byID[id] = append(lw.byID[id], m)
			lw.n++
		})
		if err != nil {
			t.Fatal(err)
		}
		if err := sub.SetPendingLimits(-1, -1); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = sub.Unsubscribe() })
	}
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	return lw
}

// published waits up to 5 s for the publish of id, and returns it; it
// fails the test when id was published more than once.
func (lw *laneWatch) published(t testing.TB, id string) *nats.Msg {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		lw.mu.Lock()
		ms := lw.byID[id]
		lw.mu.Unlock()
		switch {
		case len(ms) > 1:
			t.Errorf("%s published %d times", id, len(ms))
			return ms[0]
		case len(ms) == 1:
			return ms[0]
		case time.Now().After(deadline):
			t.Fatalf("%s was not published on a lane subject within 5s", id)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// count is the number of publishes seen so far.
func (lw *laneWatch) count() int {
	lw.mu.Lock()
	defer lw.mu.Unlock()
	return lw.n
}

// none fails the test if anything is published within a short while.
func (lw *laneWatch) none(t testing.TB) {
	t.Helper()
	time.Sleep(200 * time.Millisecond)
	lw.mu.Lock()
	defer lw.mu.Unlock()
	if lw.n > 0 {
		t.Errorf("%d requests were published: %v", lw.n, sortedKeys(lw.byID))
	}
}

func sortedKeys[V any](m map[string]V) []string {
	var keys []string
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}

func (oa *openAPI) postBatch(t testing.TB, base, query, body string, opts ...reqOption) httpResult {
	t.Helper()
	return oa.send(t, http.MethodPost, base+"/v1/messages/batch"+query, []byte(body), opts...)
}

// ndjson sends the body as NDJSON.
func ndjson() reqOption { return withHeader("Content-Type", "application/x-ndjson") }

// batchResults decodes the Results of a 202.
func batchResults(t testing.TB, res httpResult) []BatchItem {
	t.Helper()
	wantStatus(t, res, http.StatusAccepted)
	var br BatchResponse
	if err := json.Unmarshal(res.body, &br); err != nil {
		t.Fatalf("batch answer is not JSON: %v: %s", err, res.body)
	}
	return br.Results
}

// itemWant is what one item of a batch answer should say: a stored
// request (Status 202, with its Id; "" for a generated one), or a refusal
// with its Fields' names and a piece of its Error.
type itemWant struct {
	status    int
	id        string
	duplicate bool
	fields    []string // refusals: the Field of each FieldError (nil: none)
	err       string   // refusals: in Error
}

// checkItems compares the answer's items with want, in order, and returns
// the Ids of the stored ones (generated ones included) by position.
func checkItems(t testing.TB, got []BatchItem, want []itemWant) map[int]string {
	t.Helper()
	if len(got) != len(want) {
		t.Fatalf("%d results, want %d: %+v", len(got), len(want), got)
	}
	ids := map[int]string{}
	for i, w := range want {
		g := got[i]
		if g.Status != w.status {
			t.Errorf("item %d: Status %d, want %d: %+v", i, g.Status, w.status, g)
			continue
		}
		if w.status == http.StatusAccepted {
			if g.Index != nil || g.Error != "" || g.Fields != nil || g.Duplicate != w.duplicate ||
				!schema.ValidID(g.Id) || (w.id != "" && g.Id != w.id) {
				t.Errorf("item %d: %+v, want Id %q, Duplicate %v", i, g, w.id, w.duplicate)
			}
			ids[i] = g.Id
			continue
		}
		var fields []string
		for _, f := range g.Fields {
			fields = append(fields, f.Field)
		}
		if g.Index == nil || *g.Index != i || g.Id != "" || !strings.Contains(g.Error, w.err) || !slices.Equal(fields, w.fields) {
			t.Errorf("item %d: %+v (Fields %q), want Index %d, Error with %q, Fields %q", i, g, fields, i, w.err, w.fields)
		}
	}
	return ids
}

// testAPIBatch: a JSON array of valid and invalid requests is answered 202
// with one result per request in order; the valid ones are published
// unchanged (on the bulk lane unless their Priority says otherwise, with a
// generated Id when they have none) and delivered; the invalid ones are
// not published.
func testAPIBatch(t *testing.T, oa *openAPI) {
	b := setup(t, worker.Config{})
	base := serveWorker(t, b)
	lanes := watchLanes(t, b.nc)
	items := []string{
		`{"Id": "batch-0", "To": "a@example.com", "Subject": "bulk by default"}`,
		`{"Id": "batch-1", "To": "jan@", "Subject": "a bad address"}`,
		`{"Id": "batch-2", "To": "b@example.com", "Priority": "urgent"}`,
		`"jan@example.com"`,
		`{"to": "c@example.com", "Subject": "no Id"}`,
		`{"Id": "batch-5", "Subject": "no recipient"}`,
	}
	res := oa.postBatch(t, base, "", "[\n  "+strings.Join(items, ",\n  ")+"\n]\n")
	ids := checkItems(t, batchResults(t, res), []itemWant{
		{status: 202, id: "batch-0"},
		{status: 400, fields: []string{"To[0]"}, err: "not a valid email address"},
		{status: 202, id: "batch-2"},
		{status: 400, fields: []string{""}, err: "want a JSON object"},
		{status: 202},
		{status: 400, fields: []string{""}, err: "no recipient"},
	})
	for i, lane := range map[int]string{0: "bulk", 2: "urgent", 4: "bulk"} {
		m := lanes.published(t, ids[i])
		if want := schema.DefaultNames().LaneSubject(schema.Lane(lane)); m.Subject != want {
			t.Errorf("item %d published on %s, want %s", i, m.Subject, want)
		}
		if string(m.Data) != items[i] {
			t.Errorf("item %d: published payload changed:\n got %s\nwant %s", i, m.Data, items[i])
		}
		fin, _ := b.results.Final(t, ids[i])
		if fin.Status != schema.Status200 || fin.Lane != schema.Lane(lane) {
			t.Errorf("item %d: final result %+v, want 200 in lane %s", i, fin, lane)
		}
	}
	if n := lanes.count(); n != 3 {
		t.Errorf("%d requests published, want the 3 valid ones", n)
	}
	for _, id := range []string{"batch-1", "batch-5"} {
		if ev := b.results.Events(id); len(ev) > 0 {
			t.Errorf("invalid request %s reached a worker: %+v", id, ev)
		}
	}
}

// testAPIBatchPriority: ?priority= is the lane of the requests that name
// none, in any case; a request's own Priority wins over it.
func testAPIBatchPriority(t *testing.T, oa *openAPI) {
	b := setup(t, worker.Config{})
	base := serveWorker(t, b)
	lanes := watchLanes(t, b.nc)
	for _, c := range []struct {
		query string
		items []string
		lanes []schema.Lane
	}{
		{"?priority=normal",
			[]string{`{"Id": "prio-0", "To": "a@example.com"}`, `{"Id": "prio-1", "To": "a@example.com", "Priority": "bulk"}`, `{"Id": "prio-2", "To": "a@example.com", "Priority": "Urgent"}`},
			[]schema.Lane{schema.LaneNormal, schema.LaneBulk, schema.LaneUrgent}},
		{"?priority=URGENT", []string{`{"Id": "prio-3", "To": "a@example.com"}`, `{"Id": "prio-4", "To": "a@example.com", "Priority": "normal"}`},
			[]schema.Lane{schema.LaneUrgent, schema.LaneNormal}},
		{"?priority=bulk", []string{`{"Id": "prio-5", "To": "a@example.com", "Priority": ""}`}, []schema.Lane{schema.LaneBulk}},
		{"?priority=", []string{`{"Id": "prio-6", "To": "a@example.com"}`}, []schema.Lane{schema.LaneBulk}},
	} {
		var want []itemWant
		for _, item := range c.items {
			var r struct{ Id string }
			_ = json.Unmarshal([]byte(item), &r)
			want = append(want, itemWant{status: 202, id: r.Id})
		}
		ids := checkItems(t, batchResults(t, oa.postBatch(t, base, c.query, "["+strings.Join(c.items, ",")+"]")), want)
		for i, lane := range c.lanes {
			if m := lanes.published(t, ids[i]); m.Subject != schema.DefaultNames().LaneSubject(lane) {
				t.Errorf("%s item %d: published on %s, want the %s lane", c.query, i, m.Subject, lane)
			}
			if fin, _ := b.results.Final(t, ids[i]); fin.Status != schema.Status200 || fin.Lane != lane {
				t.Errorf("%s item %d: final result %+v, want 200 in lane %s", c.query, i, fin, lane)
			}
		}
	}
}

// testAPIBatchNDJSON: one request a line, blank lines skipped (Index
// counts requests, not lines), CRLF or LF, answered as a JSON array is.
func testAPIBatchNDJSON(t *testing.T, oa *openAPI) {
	b := setup(t, worker.Config{})
	base := serveWorker(t, b)
	lanes := watchLanes(t, b.nc)
	lines := []string{
		`{"Id": "nd-0", "To": "a@example.com", "Subject": "first"}`,
		`{"Id": "nd-1", "To": "a@example.com"`,
		`{"Id": "nd-2", "To": "b@example.com", "Priority": "urgent"}`,
		`{"To": "c@example.com"}`,
		`{"Id": "nd-4", "To": "d@example.com", "Attachments": [{"FileName": "a.txt", "ContentData": "!!", "ContentTransferEncoding": "base64"}]}`,
	}
	body := "\n" + lines[0] + "\r\n   \r\n" + lines[1] + "\n\n" + strings.Join(lines[2:], "\n") // no final newline
	ids := checkItems(t, batchResults(t, oa.postBatch(t, base, "", body, ndjson())), []itemWant{
		{status: 202, id: "nd-0"},
		{status: 400, fields: []string{""}, err: "not valid JSON"},
		{status: 202, id: "nd-2"},
		{status: 202},
		{status: 400, fields: []string{"Attachments[0].ContentData"}, err: "base64"},
	})
	for i, lane := range map[int]schema.Lane{0: schema.LaneBulk, 2: schema.LaneUrgent, 3: schema.LaneBulk} {
		m := lanes.published(t, ids[i])
		if m.Subject != schema.DefaultNames().LaneSubject(lane) || string(m.Data) != lines[i] {
			t.Errorf("line %d published on %s as %s, want the %s lane and %s", i, m.Subject, m.Data, lane, lines[i])
		}
		if fin, _ := b.results.Final(t, ids[i]); fin.Status != schema.Status200 {
			t.Errorf("line %d: final result %+v", i, fin)
		}
	}
	if n := lanes.count(); n != 3 {
		t.Errorf("%d requests published, want 3", n)
	}
	// One object alone is NDJSON of one request.
	checkItems(t, batchResults(t, oa.postBatch(t, base, "?priority=normal", `{"Id": "nd-5", "To": "e@example.com"}`, ndjson())),
		[]itemWant{{status: 202, id: "nd-5"}})
	if m := lanes.published(t, "nd-5"); m.Subject != "mail.send" {
		t.Errorf("nd-5 published on %s, want mail.send", m.Subject)
	}
	b.results.Final(t, "nd-5")
}

// testAPIBatchDuplicate: an Id stored before, by an earlier batch or
// earlier in the same one, is answered Duplicate and stored once.
func testAPIBatchDuplicate(t *testing.T, oa *openAPI) {
	b := setup(t, worker.Config{})
	base := serveWorker(t, b)
	checkItems(t, batchResults(t, oa.postBatch(t, base, "", `[{"Id": "bdup-0", "To": "a@example.com"}]`)),
		[]itemWant{{status: 202, id: "bdup-0"}})
	// Also the same Id as a single POST's.
	wantStatus(t, oa.post(t, base, `{"Id": "bdup-2", "To": "a@example.com"}`), http.StatusAccepted)
	checkItems(t, batchResults(t, oa.postBatch(t, base, "", `[{"Id": "bdup-0", "To": "a@example.com"},
		{"Id": "bdup-1", "To": "a@example.com"}, {"Id": "bdup-1", "To": "other@example.com"}, {"Id": "bdup-2", "To": "a@example.com"}]`)),
		[]itemWant{{status: 202, id: "bdup-0", duplicate: true}, {status: 202, id: "bdup-1"}, {status: 202, id: "bdup-1", duplicate: true}, {status: 202, id: "bdup-2", duplicate: true}})
	for _, id := range []string{"bdup-0", "bdup-1", "bdup-2"} {
		b.results.Final(t, id)
	}
	wantRequestLastSeq(t, b.js, 3)
}

// testAPIBatchTooMany: 1001 requests are a 413 and nothing is published;
// 1000 are taken (invalid ones here, so that nothing is sent).
func testAPIBatchTooMany(t *testing.T, oa *openAPI) {
	b := setup(t, worker.Config{})
	base := serveWorker(t, b)
	lanes := watchLanes(t, b.nc)
	many := func(n int, item string) string { return "[" + strings.Repeat(item+",", n-1) + item + "]" }
	for _, body := range []string{many(MaxBatch+1, `{"To": "a@example.com"}`), many(MaxBatch+1, `{}`)} {
		res := oa.postBatch(t, base, "", body)
		wantStatus(t, res, http.StatusRequestEntityTooLarge)
		if a := res.answer(t); a.Error != "1001 requests, more than the 1000 a batch may hold" {
			t.Errorf("answer %+v", a)
		}
	}
	nd := strings.Repeat(`{"To": "a@example.com"}`+"\n", MaxBatch+1)
	wantStatus(t, oa.postBatch(t, base, "", nd, ndjson()), http.StatusRequestEntityTooLarge)
	got := batchResults(t, oa.postBatch(t, base, "", many(MaxBatch, `{}`)))
	if len(got) != MaxBatch || *got[MaxBatch-1].Index != MaxBatch-1 || got[MaxBatch-1].Status != http.StatusBadRequest {
		t.Errorf("%d results, the last %+v", len(got), got[len(got)-1])
	}
	lanes.none(t)
}

// testAPIBatchTooLarge: a body over MaxBatchBytes is a 413, with or
// without Content-Length, and nothing is published; one of exactly
// MaxBatchBytes is taken. The default limit is 32 MiB.
func testAPIBatchTooLarge(t *testing.T, oa *openAPI) {
	b := setup(t, worker.Config{})
	lanes := watchLanes(t, b.nc)
	base := serveAPI(t, Config{MaxBatchBytes: 1024}, b.js, nil)
	pad := func(body string, n int) string { return body + strings.Repeat(" ", n-len(body)) }
	over := pad(`[{"To": "a@example.com"}]`, 1025)
	for _, opts := range [][]reqOption{nil, {chunked()}, {chunked(), ndjson()}} {
		res := oa.postBatch(t, base, "", over, opts...)
		wantStatus(t, res, http.StatusRequestEntityTooLarge)
		if a := res.answer(t); a.Error != "request body is larger than the limit of 1024 bytes" {
			t.Errorf("answer %+v", a)
		}
	}
	lanes.none(t)
	checkItems(t, batchResults(t, oa.postBatch(t, base, "", pad(`[{"Id": "blimit-0", "To": "a@example.com"}]`, 1024), chunked())),
		[]itemWant{{status: 202, id: "blimit-0"}})
	if fin, _ := b.results.Final(t, "blimit-0"); fin.Status != schema.Status200 {
		t.Errorf("final %+v", fin)
	}
	api, err := New(Config{}, b.js, nil)
	if err != nil {
		t.Fatal(err)
	}
	if api.maxBatch != 32<<20 {
		t.Errorf("default MaxBatchBytes %d, want 32 MiB as documented", api.maxBatch)
	}
}

// testAPIBatchItemTooLarge: a request over a size limit is refused alone
// with 413: over MaxRequestBytes (without Fields), or over another limit
// (with them); the others are stored.
func testAPIBatchItemTooLarge(t *testing.T, oa *openAPI) {
	b := setup(t, worker.Config{Limits: schema.Limits{MaxRequestBytes: 4096, MaxRecipients: 3}})
	base := serveWorker(t, b)
	lanes := watchLanes(t, b.nc)
	big := `{"Id": "bbig-0", "To": "a@example.com", "Subject": "` + strings.Repeat("x", 4100) + `"}`
	ids := checkItems(t, batchResults(t, oa.postBatch(t, base, "", "["+big+`,
		{"Id": "bbig-1", "To": "a@example.com;b@example.com;c@example.com;d@example.com"},
		{"Id": "bbig-2", "To": "a@example.com"}]`)), []itemWant{
		{status: 413, err: "request is larger than the limit of 4096 bytes"},
		{status: 413, fields: []string{""}, err: "4 recipients, more than the limit of 3"},
		{status: 202, id: "bbig-2"},
	})
	lanes.published(t, ids[2])
	if fin, _ := b.results.Final(t, "bbig-2"); fin.Status != schema.Status200 {
		t.Errorf("final %+v", fin)
	}
	if n := lanes.count(); n != 1 {
		t.Errorf("%d requests published, want 1", n)
	}
}

// testAPIBatchSenders: a request whose sender the connection does not
// allow is refused alone with 403, as by POST /v1/messages.
func testAPIBatchSenders(t *testing.T, oa *openAPI) {
	srv := smtptest.NewServer(t)
	b := smtpBundle(t, srv, worker.Config{Connections: map[string]config.SMTP{
		"default": {From: "noreply@example.com", AllowedSenders: []string{"@example.com"}},
	}})
	base := serveWorker(t, b)
	lanes := watchLanes(t, b.nc)
	checkItems(t, batchResults(t, oa.postBatch(t, base, "", `[
		{"Id": "bsend-0", "To": "a@example.org", "From": "mallory@evil.test"},
		{"Id": "bsend-1", "To": "a@example.org", "From": "Sales <sales@example.com>"},
		{"Id": "bsend-2", "To": "a@example.org", "Connection": "eu"}]`)), []itemWant{
		{status: 403, err: "not allowed"},
		{status: 202, id: "bsend-1"},
		{status: 400, fields: []string{"Connection"}, err: `unknown connection "eu"`},
	})
	lanes.published(t, "bsend-1")
	if fin, _ := b.results.Final(t, "bsend-1"); fin.Status != schema.Status200 {
		t.Errorf("final %+v", fin)
	}
	if n := lanes.count(); n != 1 {
		t.Errorf("%d requests published, want 1", n)
	}
}

// testAPIBatchInvalid: a body that is not a JSON array or NDJSON, holds no
// request, or a priority that is not a lane is a 400, and nothing is
// published.
func testAPIBatchInvalid(t *testing.T, oa *openAPI) {
	b := setup(t, worker.Config{})
	base := serveWorker(t, b)
	lanes := watchLanes(t, b.nc)
	for _, c := range []struct {
		name, query, body, err string
		opts                   []reqOption
	}{
		{"empty body", "", ``, "the batch holds no request", nil},
		{"empty array", "", ` [ ] `, "the batch holds no request", nil},
		{"blank lines", "", "\n  \r\n\n", "the batch holds no request", []reqOption{ndjson()}},
		{"broken array", "", `[{"To": "a@example.com"}`, "not a JSON array of requests", nil},
		{"data after the array", "", `[{"To": "a@example.com"}] {"To": "b@example.com"}`, "not a JSON array of requests", nil},
		{"unknown priority", "?priority=fast", `[{"To": "a@example.com"}]`, `priority="fast": want urgent, normal or bulk`, nil},
		{"priority with a space", "?priority=%20urgent", `[{"To": "a@example.com"}]`, "want urgent, normal or bulk", nil},
	} {
		res := oa.postBatch(t, base, c.query, c.body, c.opts...)
		if res.status != http.StatusBadRequest {
			t.Errorf("%s: status %d, want 400: %s", c.name, res.status, res.body)
			continue
		}
		if a := res.answer(t); !strings.Contains(a.Error, c.err) || a.Fields != nil {
			t.Errorf("%s: answer %+v, want Error with %q", c.name, a, c.err)
		}
	}
	lanes.none(t)
}

// testAPIBatchNATSClosed: requests that could not be stored are 500 items
// of a 202 (the answer to the batch as a whole is not a 500); invalid ones
// are still refused with 400. Without a request stream (no worker ever
// ran) every valid item is a 500 too.
func testAPIBatchNATSClosed(t *testing.T, oa *openAPI) {
	b := setup(t, worker.Config{})
	lanes := watchLanes(t, b.nc)
	nc, js := b.nats.Connect(t)
	base := serveAPI(t, Config{}, js, nil)
	nc.Close()
	body := `[{"Id": "bclosed-0", "To": "a@example.com"}, {"Id": "bclosed-1", "To": "nope"}]`
	checkItems(t, batchResults(t, oa.postBatch(t, base, "", body)), []itemWant{
		{status: 500, err: "connection closed"},
		{status: 400, fields: []string{"To[0]"}, err: "not a valid email address"},
	})
	lanes.none(t)

	_, bare := jstest.Start(t).Connect(t)
	base = serveAPI(t, Config{PublishTimeout: 5 * time.Second}, bare, nil)
	checkItems(t, batchResults(t, oa.postBatch(t, base, "", body)), []itemWant{
		{status: 500, err: "not stored"},
		{status: 400, fields: []string{"To[0]"}, err: "not a valid email address"},
	})
}

// testAPINewRoutesUnauthorized: with tokens, the batch and cancel routes
// answer 401 with a Bearer challenge to a missing or wrong token, before
// looking at the request; with a token they work.
func testAPINewRoutesUnauthorized(t *testing.T, oa *openAPI) {
	b := setup(t, worker.Config{}, "s3cret")
	base := serveWorker(t, b)
	lanes := watchLanes(t, b.nc)
	routes := []struct {
		method, path, body string
	}{
		{http.MethodPost, "/v1/messages/batch", `[{"To": "a@example.com", "Id": "nr-auth-1"}]`},
		{http.MethodPost, "/v1/messages/batch?priority=nope", `not even JSON`},
		{http.MethodDelete, "/v1/messages/nr-auth-1", ""},
		{http.MethodDelete, "/v1/messages/bad.id", ""},
		{http.MethodDelete, "/v1/batches/some-batch", ""},
		{http.MethodDelete, "/v1/batches/bad.id", ""},
	}
	for _, auth := range []struct{ header, challenge string }{
		{"", `Bearer realm="jetmail"`},
		{"Bearer wrong", `Bearer realm="jetmail", error="invalid_token"`},
	} {
		for _, r := range routes {
			var opts []reqOption
			if auth.header != "" {
				opts = append(opts, withHeader("Authorization", auth.header))
			}
			var body []byte
			if r.body != "" {
				body = []byte(r.body)
			}
			res := oa.send(t, r.method, base+r.path, body, opts...)
			if res.status != http.StatusUnauthorized {
				t.Errorf("%s %s with %q: status %d, want 401: %s", r.method, r.path, auth.header, res.status, res.body)
				continue
			}
			if got := res.header.Get("WWW-Authenticate"); got != auth.challenge {
				t.Errorf("%s %s: WWW-Authenticate %q, want %q", r.method, r.path, got, auth.challenge)
			}
			if a := res.answer(t); a.Error != "missing or invalid bearer token" {
				t.Errorf("%s %s: answer %+v", r.method, r.path, a)
			}
		}
	}
	lanes.none(t)
	tok := withToken("s3cret")
	checkItems(t, batchResults(t, oa.send(t, http.MethodPost, base+routes[0].path, []byte(routes[0].body), tok)),
		[]itemWant{{status: 202, id: "nr-auth-1"}})
	b.results.Final(t, "nr-auth-1")
	wantStatus(t, oa.cancel(t, base, "nr-auth-1", tok), http.StatusConflict)
	res := oa.cancelBatch(t, base, "some-batch", tok)
	wantStatus(t, res, http.StatusOK)
	if string(res.body) != `{"Cancelled":0,"TooLate":0}`+"\n" {
		t.Errorf("answer %s", res.body)
	}
}

// TestOpenAPIBatchAndCancel checks how the document describes the batch
// and cancel operations: the batch body is an array of request.schema.json
// items (at most MaxBatch) or NDJSON, its priority is a lane defaulting to
// bulk, and the cancel answers are result events.
func TestOpenAPIBatchAndCancel(t *testing.T) {
	t.Parallel()
	oa := loadOpenAPI(t)
	post := oa.doc.Paths.Find("/v1/messages/batch").Post
	if post == nil || post.OperationID != "sendBatch" {
		t.Fatal("no sendBatch operation at POST /v1/messages/batch")
	}
	arr := post.RequestBody.Value.Content.Get("application/json")
	if arr == nil || arr.Schema.Value == nil || !arr.Schema.Value.Type.Is("array") {
		t.Fatalf("batch body is not an array: %+v", arr)
	}
	s := arr.Schema.Value
	if s.MaxItems == nil || *s.MaxItems != MaxBatch || s.MinItems != 1 {
		t.Errorf("batch body minItems %d, maxItems %v, want 1 and %d", s.MinItems, s.MaxItems, MaxBatch)
	}
	if items := s.Items.Value; len(items.AnyOf) == 0 || items.AnyOf[0].Ref != "request.schema.json" {
		t.Errorf("batch items are not request.schema.json: %+v", items)
	}
	if nd := post.RequestBody.Value.Content.Get("application/x-ndjson"); nd == nil {
		t.Error("the batch body has no application/x-ndjson form")
	}
	p := post.Parameters.GetByInAndName("query", "priority")
	if p == nil || p.Schema.Value.Default != "bulk" {
		t.Errorf("priority parameter %+v, want one with default bulk", p)
	}
	for _, c := range []struct {
		path   string
		status int
		id     string
	}{
		{"/v1/messages/{Id}", 200, "cancelMessage"},
		{"/v1/messages/{Id}", 409, "cancelMessage"},
	} {
		op := oa.doc.Paths.Find(c.path).Delete
		if op == nil || op.OperationID != c.id {
			t.Errorf("no %s at DELETE %s", c.id, c.path)
			continue
		}
		mt := op.Responses.Status(c.status).Value.Content.Get("application/json")
		if mt == nil || len(mt.Schema.Value.AllOf) == 0 || mt.Schema.Value.AllOf[0].Ref != "result.schema.json" {
			t.Errorf("DELETE %s %d is not a result event: %+v", c.path, c.status, mt)
		}
	}
	if op := oa.doc.Paths.Find("/v1/batches/{BatchId}").Delete; op == nil || op.OperationID != "cancelBatch" {
		t.Error("no cancelBatch at DELETE /v1/batches/{BatchId}")
	}
	if MaxBatch != 1000 {
		t.Errorf("MaxBatch is %d; the contract says 1000", MaxBatch)
	}
}
