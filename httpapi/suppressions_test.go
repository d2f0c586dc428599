package httpapi

import (
	"encoding/json"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"testing"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/jetmail/jetmail/internal/jstest"
	"github.com/jetmail/jetmail/schema"
	"github.com/jetmail/jetmail/suppress"
)

// suppressionResponses are the responses of the suppression and
// unsubscribe routes that schema/openapi.yaml documents (TestOpenAPIDocument).
var suppressionResponses = []string{
	"listSuppressions 200", "listSuppressions 400", "listSuppressions 401", "listSuppressions 500",
	"getSuppression 200", "getSuppression 400", "getSuppression 401", "getSuppression 404", "getSuppression 500",
	"putSuppression 200", "putSuppression 201", "putSuppression 400", "putSuppression 401", "putSuppression 409", "putSuppression 500",
	"deleteSuppression 200", "deleteSuppression 400", "deleteSuppression 401", "deleteSuppression 404", "deleteSuppression 500",
	"unsubscribePage 200", "unsubscribePage 404", "unsubscribePage 429",
	"unsubscribe 200", "unsubscribe 400", "unsubscribe 404", "unsubscribe 429", "unsubscribe 500",
}

// supBundle is a JetStream server with jetmail's streams, a suppression
// list on it, one-click tokens, and a gateway's API serving both.
type supBundle struct {
	srv    *jstest.Server
	nc     *nats.Conn
	js     jetstream.JetStream
	store  *suppress.Store
	tokens *suppress.Tokens
	base   string
}

// setupSuppressions serves an API with the suppression list and one-click
// tokens; cfg may set the rest (bearer tokens, rate limits).
func setupSuppressions(t *testing.T, cfg Config) *supBundle {
	t.Helper()
	b := &supBundle{srv: jstest.Start(t)}
	b.nc, b.js = b.srv.Connect(t)
	jstest.EnsureStreams(t, b.js, schema.Names{})
	var err error
	if b.store, err = suppress.Open(t.Context(), b.js, schema.Names{}, suppress.Options{}); err != nil {
		t.Fatal(err)
	}
	if b.tokens, err = suppress.NewTokens([]byte("test secret of the one-click links")); err != nil {
		t.Fatal(err)
	}
	if cfg.Suppressions == nil {
		cfg.Suppressions = b.store
	}
	cfg.Unsubscribe = b.tokens
	b.base = serveAPI(t, cfg, b.js, testLogger())
	return b
}

func (oa *openAPI) suppression(t testing.TB, method, base, address string, body string, opts ...reqOption) httpResult {
	t.Helper()
	var data []byte
	if body != "" {
		data = []byte(body)
	}
	return oa.send(t, method, base+"/v1/suppressions/"+url.PathEscape(address), data, opts...)
}

func (oa *openAPI) suppressions(t testing.TB, base, query string, opts ...reqOption) (httpResult, SuppressionList) {
	t.Helper()
	res := oa.send(t, http.MethodGet, base+"/v1/suppressions"+query, nil, opts...)
	var list SuppressionList
	if res.status == http.StatusOK {
		if err := json.Unmarshal(res.body, &list); err != nil {
			t.Fatalf("list: %v: %s", err, res.body)
		}
	}
	return res, list
}

// entryOf decodes an entry answer.
func entryOf(t testing.TB, res httpResult) suppress.Entry {
	t.Helper()
	var e suppress.Entry
	if err := json.Unmarshal(res.body, &e); err != nil {
		t.Fatalf("entry answer %d is not JSON: %v: %s", res.status, err, res.body)
	}
	return e
}

func addresses(list SuppressionList) []string {
	var out []string
	for _, e := range list.Suppressions {
		out = append(out, e.Address)
	}
	return out
}

// testAPISuppressions: PUT creates (201), renews or keeps (200) or refuses
// to weaken (409); GET reads one entry or a page of them; DELETE removes.
func testAPISuppressions(t *testing.T, oa *openAPI) {
	b := setupSuppressions(t, Config{})
	res, list := oa.suppressions(t, b.base, "")
	wantStatus(t, res, http.StatusOK)
	if string(res.body) != `{"Suppressions":[]}`+"\n" {
		t.Errorf("empty list: %s", res.body)
	}

	res = oa.suppression(t, http.MethodPut, b.base, "Jan Kowalski <Jan@Example.com>", `{"Reason": "Bounce", "Id": "order-1234"}`)
	wantStatus(t, res, http.StatusCreated)
	e := entryOf(t, res)
	if e.Address != "jan@example.com" || e.Reason != suppress.Bounce || e.Id != "order-1234" || e.Expires == nil {
		t.Errorf("created %+v", e)
	}
	if loc := res.header.Get("Location"); loc != "/v1/suppressions/jan@example.com" {
		t.Errorf("Location %q", loc)
	}
	if got, err := b.store.Get(t.Context(), "jan@example.com"); err != nil || got.Reason != suppress.Bounce {
		t.Errorf("stored %+v, %v", got, err)
	}
	// A bounce again renews it; manual replaces it (and its expiry).
	wantStatus(t, oa.suppression(t, http.MethodPut, b.base, "jan@example.com", `{"Reason": "bounce"}`), http.StatusOK)
	res = oa.suppression(t, http.MethodPut, b.base, "jan@example.com", `{"Reason": "manual"}`)
	wantStatus(t, res, http.StatusOK)
	if e := entryOf(t, res); e.Reason != suppress.Manual || e.Expires != nil || e.Id != "" {
		t.Errorf("manual over the bounce: %+v", e)
	}
	// The same again changes nothing; a weaker reason is refused.
	res = oa.suppression(t, http.MethodPut, b.base, "JAN@example.com", `{"Reason": "manual"}`)
	wantStatus(t, res, http.StatusOK)
	first := entryOf(t, res)
	for _, r := range []string{"bounce", "unsubscribe"} {
		res = oa.suppression(t, http.MethodPut, b.base, "jan@example.com", `{"Reason": "`+r+`"}`)
		wantStatus(t, res, http.StatusConflict)
		if a := res.answer(t); !strings.Contains(a.Error, "reason manual, which "+r+" does not replace") {
			t.Errorf("409 answer %+v", a)
		}
	}
	res = oa.suppression(t, http.MethodGet, b.base, "jan@EXAMPLE.com", "")
	wantStatus(t, res, http.StatusOK)
	if got := entryOf(t, res); !got.Time.Equal(first.Time) || got.Reason != suppress.Manual {
		t.Errorf("GET %+v, want %+v", got, first)
	}

	wantStatus(t, oa.suppression(t, http.MethodPut, b.base, "@example.org", `{"Reason": "manual"}`), http.StatusCreated)
	wantStatus(t, oa.suppression(t, http.MethodPut, b.base, "ola@example.com", `{"Reason": "unsubscribe"}`), http.StatusCreated)
	wantStatus(t, oa.suppression(t, http.MethodPut, b.base, `"john doe"@example.net`, `{"Reason": "bounce"}`), http.StatusCreated)
	// An entry of the domain is not one of the address.
	res = oa.suppression(t, http.MethodGet, b.base, "x@example.org", "")
	wantStatus(t, res, http.StatusNotFound)
	if a := res.answer(t); a.Error != "x@example.org is not on the suppression list" {
		t.Errorf("404 answer %+v", a)
	}

	_, list = oa.suppressions(t, b.base, "")
	if diff := addresses(list); !slices.Equal(diff, []string{"@example.org", "jan@example.com", "john doe@example.net", "ola@example.com"}) || list.Next != "" {
		t.Errorf("list %v, next %q", diff, list.Next)
	}
	for query, want := range map[string][]string{
		"?q=EXAMPLE.COM":                 {"jan@example.com", "ola@example.com"},
		"?reason=unsubscribe":            {"ola@example.com"},
		"?reason=MANUAL&q=example":       {"@example.org", "jan@example.com"},
		"?q=nothing":                     nil,
		"?q=" + url.QueryEscape("john "): {"john doe@example.net"},
	} {
		res, list := oa.suppressions(t, b.base, query)
		wantStatus(t, res, http.StatusOK)
		if got := addresses(list); !slices.Equal(got, want) {
			t.Errorf("list%s: %v, want %v", query, got, want)
		}
	}
	// Pages of two.
	var all []string
	query := "?limit=2"
	for range 5 {
		res, list := oa.suppressions(t, b.base, query)
		wantStatus(t, res, http.StatusOK)
		all = append(all, addresses(list)...)
		if list.Next == "" {
			break
		}
		query = "?limit=2&cursor=" + list.Next
	}
	if !slices.Equal(all, []string{"@example.org", "jan@example.com", "john doe@example.net", "ola@example.com"}) {
		t.Errorf("pages: %v", all)
	}

	// DELETE answers the entry removed, then 404; the unquoted form of an
	// address from the list is a name of its entry.
	res = oa.suppression(t, http.MethodDelete, b.base, "john doe@example.net", "")
	wantStatus(t, res, http.StatusOK)
	if e := entryOf(t, res); e.Address != "john doe@example.net" || e.Reason != suppress.Bounce {
		t.Errorf("deleted %+v", e)
	}
	wantStatus(t, oa.suppression(t, http.MethodDelete, b.base, "john doe@example.net", ""), http.StatusNotFound)
	wantStatus(t, oa.suppression(t, http.MethodGet, b.base, `"john doe"@example.net`, ""), http.StatusNotFound)
}

// testAPISuppressionsInvalid: 400 for what is not an address or @domain, a
// bad body or query; nothing is stored.
func testAPISuppressionsInvalid(t *testing.T, oa *openAPI) {
	b := setupSuppressions(t, Config{})
	for _, addr := range []string{"jan@", "nope", "@", "a@b, c@d"} {
		for _, method := range []string{http.MethodGet, http.MethodPut, http.MethodDelete} {
			res := oa.suppression(t, method, b.base, addr, `{"Reason": "manual"}`)
			wantStatus(t, res, http.StatusBadRequest)
			if a := res.answer(t); !strings.Contains(a.Error, "is not a valid email address or @domain") {
				t.Errorf("%s %q: %+v", method, addr, a)
			}
		}
	}
	for body, want := range map[string]string{
		"":                                  "want a body",
		"manual":                            "want a body",
		`{"Reason": "manual", "Ttl": "1h"}`: `unknown field "Ttl"`,
		`{"Reason": "manual"} {}`:           "more than one JSON value",
		`{"Reason": "spam"}`:                `Reason: want bounce, unsubscribe or manual, got "spam"`,
		`{}`:                                `got ""`,
		`{"Reason": "manual", "Id": "a.b"}`: "Id: must match",
		`{"Reason": 1}`:                     "want a body",
		`{"Reason": "manual", "Id": "` + strings.Repeat("x", 129) + `"}`: "Id: must match",
	} {
		res := oa.suppression(t, http.MethodPut, b.base, "jan@example.com", body)
		wantStatus(t, res, http.StatusBadRequest)
		if a := res.answer(t); !strings.Contains(a.Error, want) {
			t.Errorf("PUT %s: %+v, want %q", body, a, want)
		}
	}
	for _, query := range []string{"?limit=0", "?limit=1001", "?limit=x", "?reason=spam", "?cursor=!!"} {
		res, _ := oa.suppressions(t, b.base, query)
		wantStatus(t, res, http.StatusBadRequest)
	}
	if _, err := b.store.Get(t.Context(), "jan@example.com"); err == nil {
		t.Error("an invalid PUT stored an entry")
	}
}

// testAPISuppressionsUnauthorized: the suppression routes are behind the
// bearer tokens; the one-click routes are not.
func testAPISuppressionsUnauthorized(t *testing.T, oa *openAPI) {
	b := setupSuppressions(t, Config{Tokens: []string{"s3cret"}})
	for _, method := range []string{http.MethodGet, http.MethodPut, http.MethodDelete} {
		res := oa.suppression(t, method, b.base, "jan@example.com", `{"Reason": "manual"}`, withToken("wrong"))
		wantStatus(t, res, http.StatusUnauthorized)
		if got := res.header.Get("WWW-Authenticate"); !strings.HasPrefix(got, "Bearer") {
			t.Errorf("%s: WWW-Authenticate %q", method, got)
		}
	}
	res, _ := oa.suppressions(t, b.base, "")
	wantStatus(t, res, http.StatusUnauthorized)
	if _, err := b.store.Get(t.Context(), "jan@example.com"); err == nil {
		t.Error("an unauthorized PUT stored an entry")
	}
	wantStatus(t, oa.suppression(t, http.MethodPut, b.base, "jan@example.com", `{"Reason": "manual"}`, withToken("s3cret")), http.StatusCreated)
	res, list := oa.suppressions(t, b.base, "", withToken("s3cret"))
	wantStatus(t, res, http.StatusOK)
	if len(list.Suppressions) != 1 {
		t.Errorf("list %+v", list)
	}
	// Recipients have no token.
	token := b.tokens.Token("ola@example.com")
	wantStatus(t, oa.unsubscribePage(t, b.base, token), http.StatusOK)
	wantStatus(t, oa.oneClick(t, b.base, token, oneClickForm), http.StatusOK)
}

// testAPISuppressionsNATSClosed: a list that cannot be reached is 500.
func testAPISuppressionsNATSClosed(t *testing.T, oa *openAPI) {
	srv := jstest.Start(t)
	_, js := srv.Connect(t)
	nc2, js2 := srv.Connect(t)
	store, err := suppress.Open(t.Context(), js2, schema.Names{}, suppress.Options{})
	if err != nil {
		t.Fatal(err)
	}
	base := serveAPI(t, Config{Suppressions: store}, js, nil)
	nc2.Close()
	res, _ := oa.suppressions(t, base, "")
	wantStatus(t, res, http.StatusInternalServerError)
	for _, method := range []string{http.MethodGet, http.MethodPut, http.MethodDelete} {
		res := oa.suppression(t, method, base, "jan@example.com", `{"Reason": "manual"}`)
		wantStatus(t, res, http.StatusInternalServerError)
		if a := res.answer(t); !strings.Contains(a.Error, "connection closed") {
			t.Errorf("%s: %+v", method, a)
		}
	}
	// Without Suppressions the routes are not there; Unsubscribe needs them.
	plain := serveAPI(t, Config{}, js, nil)
	resp, err := http.Get(plain + "/v1/suppressions")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusNotFound {
		t.Errorf("GET /v1/suppressions without a list: %d", resp.StatusCode)
	}
	tokens, _ := suppress.NewTokens([]byte("0123456789abcdef"))
	if _, err := New(Config{Unsubscribe: tokens}, js, nil); err == nil {
		t.Error("New took Unsubscribe without Suppressions")
	}
}
