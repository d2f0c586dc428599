package httpapi

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/jetmail/jetmail/internal/jstest"
	"github.com/jetmail/jetmail/schema"
	"github.com/jetmail/jetmail/search"
	"github.com/jetmail/jetmail/worker"
)

// The tests of search and events run as subtests of TestAPI (see the
// table there), so that their responses are checked against
// schema/openapi.yaml.

// searchBundle is a JetStream server with jetmail's streams, a search
// index following its result stream, and an API (as a gateway serves it)
// that searches the index.
type searchBundle struct {
	js    jetstream.JetStream
	idx   *search.Index
	base  string
	names schema.Names
}

// startIndex opens an index in a temporary folder and runs it on js until
// cleanup.
func startIndex(t testing.TB, js jetstream.JetStream) *search.Index {
	t.Helper()
	idx, err := search.Open(filepath.Join(t.TempDir(), "search.db"), testLogger())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { idx.Close() })
	jstest.Serve(t, func(ctx context.Context) error { return idx.Run(ctx, js, schema.Names{}) }, nil)
	return idx
}

func setupSearch(t testing.TB, tokens ...string) *searchBundle {
	t.Helper()
	_, js := jstest.Start(t).Connect(t)
	jstest.EnsureStreams(t, js, schema.Names{})
	idx := startIndex(t, js)
	base := serveAPI(t, Config{Search: idx, Tokens: tokens}, js, testLogger())
	return &searchBundle{js: js, idx: idx, base: base, names: schema.DefaultNames()}
}

// publish stores result events as a worker would, and waits until the
// index has them.
func (b *searchBundle) publish(t testing.TB, events ...schema.Result) {
	t.Helper()
	var seq uint64
	for _, r := range events {
		data, err := json.Marshal(r)
		if err != nil {
			t.Fatal(err)
		}
		ack, err := b.js.Publish(context.Background(), b.names.ResultSubject(r.Id), data)
		if err != nil {
			t.Fatal(err)
		}
		seq = ack.Sequence
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := b.idx.WaitSeq(ctx, seq); err != nil {
		t.Fatal(err)
	}
}

// find runs GET /v1/messages with the parameters.
func (oa *openAPI) find(t testing.TB, base string, params url.Values, opts ...reqOption) httpResult {
	t.Helper()
	u := base + "/v1/messages"
	if len(params) > 0 {
		u += "?" + params.Encode()
	}
	return oa.send(t, http.MethodGet, u, nil, opts...)
}

// page decodes a 200 answer of GET /v1/messages.
func (r httpResult) page(t testing.TB) (SearchPage, []schema.Result) {
	t.Helper()
	if r.status != http.StatusOK {
		t.Fatalf("status %d, want 200: %s", r.status, r.body)
	}
	var p SearchPage
	if err := json.Unmarshal(r.body, &p); err != nil {
		t.Fatalf("answer is not a page: %v: %s", err, r.body)
	}
	evs := make([]schema.Result, len(p.Messages))
	for i, m := range p.Messages {
		if err := json.Unmarshal(m, &evs[i]); err != nil {
			t.Fatalf("message %d is not a result event: %v", i, err)
		}
	}
	return p, evs
}

func eventIDs(evs []schema.Result) []string {
	var out []string
	for _, e := range evs {
		out = append(out, e.Id)
	}
	return out
}

var searchBase = time.Date(2026, 5, 4, 12, 0, 0, 0, time.UTC)

// accepted is an accepted event with an envelope, sec seconds after
// searchBase.
func accepted(id string, sec int, lane schema.Lane, batch, subject string, rcpts ...string) schema.Result {
	return schema.Result{
		Id: id, Status: schema.Status202, State: schema.StateAccepted, Attempt: 1, Lane: lane, BatchId: batch,
		Envelope: &schema.Envelope{From: "shop@example.com", Recipients: rcpts, Subject: subject},
		Time:     searchBase.Add(time.Duration(sec) * time.Second),
	}
}

// sent is the sent event after accepted ev.
func sent(ev schema.Result) schema.Result {
	return schema.Result{
		Id: ev.Id, Status: schema.Status200, State: schema.StateSent, Attempt: 1, Lane: ev.Lane, BatchId: ev.BatchId,
		MessageId: "<" + ev.Id + "@jetmail>", Smtp: &schema.SMTPReply{Code: 250, Message: "OK"},
		Time: ev.Time.Add(time.Second),
	}
}

// testAPISearch: every filter, alone and combined; the answer is the
// latest event as stored, with the envelope beside it.
func testAPISearch(t *testing.T, oa *openAPI) {
	b := setupSearch(t)
	a1 := accepted("s1", 1, schema.LaneNormal, "b1", "Zażółć gęślą jaźń", "Jan@Example.com")
	a2 := accepted("s2", 2, schema.LaneBulk, "b1", "Invoice 2026/11", "ola@example.com", "audit@example.org")
	a3 := accepted("s3", 3, schema.LaneUrgent, "", "Your invoice", "jan@example.com")
	b.publish(t, a1, a2, sent(a1), a3, sent(a2))

	for _, c := range []struct {
		params url.Values
		want   []string
	}{
		{url.Values{}, []string{"s3", "s2", "s1"}},
		{url.Values{"recipient": {"JAN@example.com"}}, []string{"s3", "s1"}},
		{url.Values{"recipient": {"audit@example.org"}}, []string{"s2"}}, // a Bcc
		{url.Values{"subject": {"INVOICE"}}, []string{"s3", "s2"}},
		{url.Values{"subject": {"gęślą"}}, []string{"s1"}},
		{url.Values{"state": {"sent"}}, []string{"s2", "s1"}},
		{url.Values{"lane": {"urgent"}}, []string{"s3"}},
		{url.Values{"batch": {"b1"}}, []string{"s2", "s1"}},
		{url.Values{"recipient": {"jan@example.com"}, "state": {"accepted"}}, []string{"s3"}},
		{url.Values{"batch": {"b1"}, "subject": {"invoice"}, "lane": {"bulk"}}, []string{"s2"}},
		{url.Values{"since": {"2026-05-04T14:00:02+02:00"}}, []string{"s3", "s2"}},
		{url.Values{"until": {"2026-05-04T12:00:02Z"}}, []string{"s1"}},
		{url.Values{"since": {"2026-05-04T12:00:02Z"}, "until": {"2026-05-04T12:00:03Z"}}, []string{"s2"}},
		{url.Values{"recipient": {"nobody@example.com"}}, nil},
	} {
		p, evs := oa.find(t, b.base, c.params).page(t)
		if got := eventIDs(evs); !slices.Equal(got, c.want) || p.Next != "" {
			t.Errorf("%v: found %v (next %q), want %v", c.params, got, p.Next, c.want)
		}
	}

	// No match is an empty list, not null.
	res := oa.find(t, b.base, url.Values{"recipient": {"nobody@example.com"}})
	if !bytes.Contains(res.body, []byte(`"Messages":[]`)) {
		t.Errorf("no match answered %s", res.body)
	}
	// An offset whose + was not percent-encoded (which the document does
	// not describe, so not checked against it) is taken too.
	resp, err := http.Get(b.base + "/v1/messages?since=2026-05-04T14:00:02+02:00")
	if err != nil {
		t.Fatal(err)
	}
	var bare SearchPage
	err = json.NewDecoder(resp.Body).Decode(&bare)
	resp.Body.Close()
	if err != nil || resp.StatusCode != http.StatusOK || len(bare.Messages) != 2 {
		t.Errorf("since with a bare +: %d, %d messages (%v)", resp.StatusCode, len(bare.Messages), err)
	}

	// The latest event, byte for byte as stored, and the envelope.
	stream, err := b.js.Stream(context.Background(), "JETMAIL_RESULTS")
	if err != nil {
		t.Fatal(err)
	}
	stored, err := stream.GetLastMsgForSubject(context.Background(), "mail.result.s2")
	if err != nil {
		t.Fatal(err)
	}
	p, _ := oa.find(t, b.base, url.Values{"recipient": {"ola@example.com"}}).page(t)
	if len(p.Messages) != 1 || !bytes.Equal(p.Messages[0], stored.Data) {
		t.Errorf("answered %s\nstored is %s", p.Messages, stored.Data)
	}
	var env schema.Envelope
	if err := json.Unmarshal(p.Envelopes["s2"], &env); err != nil || env.Subject != "Invoice 2026/11" || !slices.Equal(env.Recipients, a2.Envelope.Recipients) {
		t.Errorf("envelope of s2: %+v (%v)", env, err)
	}
}

// testAPISearchPaging: limit and cursor page through every message once,
// while new messages arrive between pages.
func testAPISearchPaging(t *testing.T, oa *openAPI) {
	b := setupSearch(t)
	var evs []schema.Result
	for i := range 12 {
		evs = append(evs, accepted(fmt.Sprintf("pg%02d", i), i, schema.LaneBulk, "", "paged", "pager@example.com"))
	}
	b.publish(t, evs...)
	params := url.Values{"recipient": {"pager@example.com"}, "limit": {"5"}}
	var got []string
	for page := 0; ; page++ {
		p, evs := oa.find(t, b.base, params).page(t)
		got = append(got, eventIDs(evs)...)
		if p.Next == "" {
			if page != 2 || len(evs) != 2 {
				t.Errorf("last page is page %d with %d messages, want page 2 with 2", page, len(evs))
			}
			break
		}
		if len(evs) != 5 {
			t.Fatalf("page %d has %d messages, want 5", page, len(evs))
		}
		// A new message arrives between pages: it is newer than all.
		b.publish(t, accepted(fmt.Sprintf("late%d", page), 100+page, schema.LaneBulk, "", "paged", "pager@example.com"))
		params.Set("cursor", p.Next)
	}
	var want []string
	for i := 11; i >= 0; i-- {
		want = append(want, fmt.Sprintf("pg%02d", i))
	}
	if !slices.Equal(got, want) {
		t.Errorf("pages gave %v, want %v", got, want)
	}
	if _, evs := oa.find(t, b.base, url.Values{"recipient": {"pager@example.com"}}).page(t); !slices.Equal(eventIDs(evs)[:2], []string{"late1", "late0"}) {
		t.Errorf("a new search starts with the new messages: %v", eventIDs(evs))
	}
}

// testAPISearchBadQuery: 400 naming the parameter.
func testAPISearchBadQuery(t *testing.T, oa *openAPI) {
	b := setupSearch(t)
	for _, c := range []struct {
		query, param string
	}{
		{"state=delivered", "state"},
		{"lane=fast", "lane"},
		{"batch=a.b", "batch"},
		{"limit=0", "limit"},
		{"limit=501", "limit"},
		{"limit=ten", "limit"},
		{"since=yesterday", "since"},
		{"until=2026-05-04", "until"},
		{"since=2026-05-04T12:00:00Z&until=2026-05-04T11:00:00Z", "until"},
		{"cursor=bm90LWEtY3Vyc29y", "cursor"},
		{"recipients=jan@example.com", `"recipients"`},
		{"recipient=a@example.com&recipient=b@example.com", "recipient"},
	} {
		res := oa.send(t, http.MethodGet, b.base+"/v1/messages?"+c.query, nil)
		if res.status != http.StatusBadRequest {
			t.Errorf("%s: status %d, want 400: %s", c.query, res.status, res.body)
			continue
		}
		if a := res.answer(t); !strings.Contains(a.Error, c.param) {
			t.Errorf("%s: error %q does not name %s", c.query, a.Error, c.param)
		}
	}
}

// testAPISearchDisabled: an API without an index answers 503 to a search,
// and still answers events, which come from the stream.
func testAPISearchDisabled(t *testing.T, oa *openAPI) {
	_, js := jstest.Start(t).Connect(t)
	jstest.EnsureStreams(t, js, schema.Names{})
	base := serveAPI(t, Config{}, js, nil)
	res := oa.find(t, base, url.Values{"recipient": {"jan@example.com"}})
	wantStatus(t, res, http.StatusServiceUnavailable)
	if a := res.answer(t); !strings.Contains(a.Error, "search is not enabled on this instance") {
		t.Errorf("answer %+v", a)
	}
	b := &searchBundle{js: js, names: schema.DefaultNames(), idx: startIndex(t, js)}
	b.publish(t, accepted("d1", 1, schema.LaneNormal, "", "hi", "jan@example.com"))
	wantStatus(t, oa.send(t, http.MethodGet, base+"/v1/messages/d1/events", nil), http.StatusOK)
}

// testAPISearchUnauthorized: both routes need a token when tokens are
// configured.
func testAPISearchUnauthorized(t *testing.T, oa *openAPI) {
	b := setupSearch(t, "s3cret")
	b.publish(t, accepted("u1", 1, schema.LaneNormal, "", "hi", "jan@example.com"))
	for _, path := range []string{"/v1/messages?recipient=jan@example.com", "/v1/messages/u1/events"} {
		res := oa.send(t, http.MethodGet, b.base+path, nil, withToken("wrong"))
		wantStatus(t, res, http.StatusUnauthorized)
		if res.header.Get("WWW-Authenticate") == "" {
			t.Errorf("%s: no challenge", path)
		}
		wantStatus(t, oa.send(t, http.MethodGet, b.base+path, nil, withToken("s3cret")), http.StatusOK)
	}
}

// testAPISearchFailed: an index that can not be read is a 500.
func testAPISearchFailed(t *testing.T, oa *openAPI) {
	_, js := jstest.Start(t).Connect(t)
	idx, err := search.Open(filepath.Join(t.TempDir(), "search.db"), nil)
	if err != nil {
		t.Fatal(err)
	}
	base := serveAPI(t, Config{Search: idx}, js, nil)
	idx.Close()
	res := oa.find(t, base, url.Values{"state": {"sent"}})
	wantStatus(t, res, http.StatusInternalServerError)
	if a := res.answer(t); !strings.Contains(a.Error, "search") {
		t.Errorf("answer %+v", a)
	}
}

// testAPIEvents: a request posted through the API and delivered by a real
// worker has its events, oldest first, and is found by a search.
func testAPIEvents(t *testing.T, oa *openAPI) {
	b := setup(t, worker.Config{})
	idx := startIndex(t, b.js)
	base := serveAPI(t, Config{Search: idx}, b.js, nil)
	wantStatus(t, oa.post(t, base, `{"Id": "ev-1", "To": "Jan <Jan@example.com>", "Bcc": "audit@example.org", "Subject": "Events"}`), http.StatusAccepted)
	fin, seen := b.results.Final(t, "ev-1")
	if fin.Status != schema.Status200 {
		t.Fatalf("final %+v", fin)
	}
	res := oa.send(t, http.MethodGet, base+"/v1/messages/ev-1/events", nil)
	wantStatus(t, res, http.StatusOK)
	var list []schema.Result // a JSON array of the events, nothing around it
	if err := json.Unmarshal(res.body, &list); err != nil {
		t.Fatalf("the events are not a JSON array of events: %v\n%s", err, res.body)
	}
	var states []schema.State
	for i, e := range list {
		states = append(states, e.State)
		if i > 0 && e.Time.Before(list[i-1].Time) {
			t.Errorf("event %d is older than event %d", i, i-1)
		}
	}
	if want := []schema.State{schema.StateAccepted, schema.StateSent}; !slices.Equal(states, want) || len(seen) != 2 {
		t.Errorf("events %v, want %v (published %d)", states, want, len(seen))
	}

	// The search finds the message once the index has its final event.
	jstest.Eventually(t, 20*time.Second, func() bool {
		_, evs := oa.find(t, base, url.Values{"state": {"sent"}}).page(t)
		return slices.Equal(eventIDs(evs), []string{"ev-1"})
	})
	if list[0].Envelope == nil {
		t.Log("the worker's accepted event has no Envelope yet: recipient search of a delivered message not checked")
		return
	}
	for _, rcpt := range []string{"jan@example.com", "AUDIT@example.org"} {
		if _, evs := oa.find(t, base, url.Values{"recipient": {rcpt}}).page(t); !slices.Equal(eventIDs(evs), []string{"ev-1"}) {
			t.Errorf("recipient %s: found %v", rcpt, eventIDs(evs))
		}
	}
}

// testAPIEventsNotFound: 404 for an Id without events or not an Id, and
// 500 without a result stream.
func testAPIEventsNotFound(t *testing.T, oa *openAPI) {
	b := setupSearch(t)
	for _, id := range []string{"never-posted", "bad.id", strings.Repeat("x", 129)} {
		res := oa.send(t, http.MethodGet, b.base+"/v1/messages/"+id+"/events", nil)
		wantStatus(t, res, http.StatusNotFound)
		if a := res.answer(t); a.Error != "unknown Id" {
			t.Errorf("%s: answer %+v", id, a)
		}
	}
	_, js := jstest.Start(t).Connect(t)
	base := serveAPI(t, Config{}, js, nil)
	res := oa.send(t, http.MethodGet, base+"/v1/messages/some-id/events", nil)
	wantStatus(t, res, http.StatusInternalServerError)
	if a := res.answer(t); !strings.Contains(a.Error, "no JetStream stream JETMAIL_RESULTS") {
		t.Errorf("answer %+v", a)
	}
}
