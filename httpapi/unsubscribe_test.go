package httpapi

import (
	"bytes"
	"encoding/json"
	"errors"
	"html"
	"mime"
	"mime/multipart"
	"net/http"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/getkin/kin-openapi/openapi3filter"
	"github.com/nats-io/nats.go/jetstream"
	"golang.org/x/time/rate"

	"github.com/jetmail/jetmail/internal/jstest"
	"github.com/jetmail/jetmail/schema"
	"github.com/jetmail/jetmail/suppress"
)

func init() {
	// The unsubscribe pages are documented as text/html strings.
	openapi3filter.RegisterBodyDecoder("text/html", openapi3filter.PlainBodyDecoder)
}

// isForm reports whether a Content-Type is a form's, which openAPI.check
// validates as sent.
func isForm(contentType string) bool {
	mt, _, _ := mime.ParseMediaType(contentType)
	return mt == "application/x-www-form-urlencoded" || mt == "multipart/form-data"
}

const oneClickForm = "List-Unsubscribe=One-Click"

func (oa *openAPI) unsubscribePage(t testing.TB, base, token string) httpResult {
	t.Helper()
	return oa.send(t, http.MethodGet, base+"/v1/unsubscribe/"+token, nil)
}

// oneClick POSTs body as a urlencoded form, as mail providers do.
func (oa *openAPI) oneClick(t testing.TB, base, token, body string, opts ...reqOption) httpResult {
	t.Helper()
	opts = append([]reqOption{withHeader("Content-Type", "application/x-www-form-urlencoded")}, opts...)
	return oa.send(t, http.MethodPost, base+"/v1/unsubscribe/"+token, []byte(body), opts...)
}

// wantPage checks the headers every unsubscribe page has.
func wantPage(t testing.TB, res httpResult) {
	t.Helper()
	if ct := res.header.Get("Content-Type"); ct != "text/html; charset=utf-8" {
		t.Errorf("Content-Type %q", ct)
	}
	csp := res.header.Get("Content-Security-Policy")
	if !strings.HasPrefix(csp, "default-src 'none'; style-src 'sha256-") || !strings.Contains(csp, "form-action 'self'") {
		t.Errorf("Content-Security-Policy %q", csp)
	}
	if res.header.Get("Cache-Control") != "no-store" || res.header.Get("Referrer-Policy") != "no-referrer" {
		t.Errorf("headers %v", res.header)
	}
	// Nothing from elsewhere: no URL at all in the page.
	if bytes.Contains(res.body, []byte("http")) || bytes.Contains(res.body, []byte("//")) || bytes.Contains(res.body, []byte("<script")) {
		t.Errorf("the page refers to something:\n%s", res.body)
	}
}

// events are the unsubscribe events in the result stream.
func events(t testing.TB, js jetstream.JetStream) []suppress.Event {
	t.Helper()
	st, err := js.Stream(t.Context(), "JETMAIL_RESULTS")
	if err != nil {
		t.Fatal(err)
	}
	info, err := st.Info(t.Context(), jetstream.WithSubjectFilter("mail.event.unsubscribe.>"))
	if err != nil {
		t.Fatal(err)
	}
	var out []suppress.Event
	for subject := range info.State.Subjects {
		m, err := st.GetLastMsgForSubject(t.Context(), subject)
		if err != nil {
			t.Fatal(err)
		}
		var ev suppress.Event
		if err := json.Unmarshal(m.Data, &ev); err != nil {
			t.Fatalf("event %s: %v", m.Data, err)
		}
		if subject != "mail.event.unsubscribe."+ev.Id || m.Header.Get(jetstream.MsgIDHeader) != ev.Id {
			t.Errorf("event %+v on %s with Nats-Msg-Id %q", ev, subject, m.Header.Get(jetstream.MsgIDHeader))
		}
		out = append(out, ev)
	}
	return out
}

// testAPIUnsubscribe: the one-click POST adds the address with reason
// unsubscribe and publishes one event; again, it adds no second; other
// bodies are 400 and change nothing.
func testAPIUnsubscribe(t *testing.T, oa *openAPI) {
	b := setupSuppressions(t, Config{})
	token := b.tokens.Token("Jan@Example.com")
	res := oa.oneClick(t, b.base, token, oneClickForm)
	wantStatus(t, res, http.StatusOK)
	wantPage(t, res)
	if !bytes.Contains(res.body, []byte("jan@example.com</span> will no longer receive")) {
		t.Errorf("page:\n%s", res.body)
	}
	e, err := b.store.Get(t.Context(), "jan@example.com")
	if err != nil || e.Reason != suppress.Unsubscribe || e.Expires != nil {
		t.Errorf("entry %+v, %v", e, err)
	}
	evs := events(t, b.js)
	if len(evs) != 1 || evs[0].Address != "jan@example.com" || time.Since(evs[0].Time) > time.Minute {
		t.Fatalf("events %+v", evs)
	}
	// Posting again is harmless, and publishes nothing more.
	wantStatus(t, oa.oneClick(t, b.base, token, oneClickForm), http.StatusOK)
	if evs := events(t, b.js); len(evs) != 1 {
		t.Errorf("events after a second POST: %+v", evs)
	}

	// multipart/form-data, which RFC 8058 allows too, and no Content-Type.
	var body bytes.Buffer
	mw := multipart.NewWriter(&body)
	_ = mw.WriteField("List-Unsubscribe", "One-Click")
	_ = mw.Close()
	res = oa.send(t, http.MethodPost, b.base+"/v1/unsubscribe/"+b.tokens.Token("ola@example.com"), body.Bytes(),
		withHeader("Content-Type", mw.FormDataContentType()))
	wantStatus(t, res, http.StatusOK)
	req, _ := http.NewRequest(http.MethodPost, b.base+"/v1/unsubscribe/"+b.tokens.Token("bare@example.com"), strings.NewReader(oneClickForm))
	resp, err := http.DefaultClient.Do(req) // the document names the form types; the server is lenient
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Errorf("POST without Content-Type: %d", resp.StatusCode)
	}
	for _, addr := range []string{"ola@example.com", "bare@example.com"} {
		if _, err := b.store.Get(t.Context(), addr); err != nil {
			t.Errorf("%s: %v", addr, err)
		}
	}

	other := b.tokens.Token("not-yet@example.com")
	for _, c := range []struct{ body, contentType string }{
		{"", "application/x-www-form-urlencoded"},
		{"List-Unsubscribe=Yes", "application/x-www-form-urlencoded"},
		{"list-unsubscribe=one-click", "application/x-www-form-urlencoded"},
		{`{"List-Unsubscribe": "One-Click"}`, "application/json"},
		{oneClickForm, "text/plain"},
		{"--x\r\n", "multipart/form-data; boundary=x"},
		{"List-Unsubscribe=One-Click&" + strings.Repeat("x", 9000), "application/x-www-form-urlencoded"},
	} {
		res := oa.oneClick(t, b.base, other, c.body, withHeader("Content-Type", c.contentType))
		if res.status != http.StatusBadRequest {
			t.Errorf("POST %.40q as %s: %d, want 400", c.body, c.contentType, res.status)
			continue
		}
		wantPage(t, res)
	}
	if _, err := b.store.Get(t.Context(), "not-yet@example.com"); !errors.Is(err, suppress.ErrNotFound) {
		t.Errorf("a bad POST unsubscribed: %v", err)
	}
	if evs := events(t, b.js); len(evs) != 3 {
		t.Errorf("events %+v, want 3", evs)
	}
}

// testAPIUnsubscribePage: GET shows the address, escaped, and a form that
// POSTs the one-click body to the same URL; it unsubscribes no one. The
// form, submitted as a browser would, does.
func testAPIUnsubscribePage(t *testing.T, oa *openAPI) {
	b := setupSuppressions(t, Config{})
	addr := `"<b>Jan & Co</b>"@example.com`
	token := b.tokens.Token(addr)
	for range 3 { // a scanner, twice, and the person
		res := oa.unsubscribePage(t, b.base, token)
		wantStatus(t, res, http.StatusOK)
		wantPage(t, res)
		page := string(res.body)
		if !strings.Contains(page, html.EscapeString("<b>jan & co</b>@example.com")) || strings.Contains(page, "<b>") {
			t.Fatalf("the address is not shown escaped:\n%s", page)
		}
		if !strings.HasPrefix(page, "<!doctype html>") || !strings.Contains(page, "<style>") {
			t.Errorf("page:\n%s", page)
		}
	}
	if _, err := b.store.Get(t.Context(), addr); !errors.Is(err, suppress.ErrNotFound) {
		t.Fatalf("GET unsubscribed: %v", err)
	}
	if evs := events(t, b.js); len(evs) != 0 {
		t.Fatalf("GET published %+v", evs)
	}

	// Submit the page's form: its method, action (none: this URL) and
	// fields.
	page := string(oa.unsubscribePage(t, b.base, token).body)
	form := regexp.MustCompile(`(?s)<form([^>]*)>(.*?)</form>`).FindStringSubmatch(page)
	if form == nil || strings.TrimSpace(form[1]) != `method="post"` {
		t.Fatalf("no POST form to this URL in the page:\n%s", page)
	}
	values := map[string]string{}
	for _, in := range regexp.MustCompile(`<input type="hidden" name="([^"]*)" value="([^"]*)">`).FindAllStringSubmatch(form[2], -1) {
		values[html.UnescapeString(in[1])] = html.UnescapeString(in[2])
	}
	if len(values) != 1 || values["List-Unsubscribe"] != "One-Click" || !strings.Contains(form[2], `<button type="submit">`) {
		t.Fatalf("form fields %v:\n%s", values, form[2])
	}
	res := oa.oneClick(t, b.base, token, "List-Unsubscribe="+values["List-Unsubscribe"])
	wantStatus(t, res, http.StatusOK)
	if e, err := b.store.Get(t.Context(), addr); err != nil || e.Reason != suppress.Unsubscribe {
		t.Errorf("after the button: %+v, %v", e, err)
	}
	if !strings.Contains(string(res.body), html.EscapeString("<b>jan & co</b>@example.com")) {
		t.Errorf("done page:\n%s", res.body)
	}
}

// testAPIUnsubscribeBadToken: forged, altered or foreign tokens are 404 on
// GET and POST, and change nothing.
func testAPIUnsubscribeBadToken(t *testing.T, oa *openAPI) {
	b := setupSuppressions(t, Config{})
	token := b.tokens.Token("jan@example.com")
	addrPart, mac, _ := strings.Cut(token, ".")
	foreign, _ := suppress.NewTokens([]byte("another server's secret"))
	forged := strings.Replace(token, addrPart, "bWFsbG9yeUBleGFtcGxlLmNvbQ", 1) // mallory@example.com, jan's MAC
	altered := token[:len(token)-1] + map[bool]string{true: "A", false: "B"}[token[len(token)-1] != 'A']
	for _, bad := range []string{forged, altered, addrPart, mac, "x", foreign.Token("jan@example.com")} {
		for _, res := range []httpResult{oa.unsubscribePage(t, b.base, bad), oa.oneClick(t, b.base, bad, oneClickForm)} {
			if res.status != http.StatusNotFound {
				t.Errorf("token %q: %d, want 404", bad, res.status)
				continue
			}
			wantPage(t, res)
			if !strings.Contains(string(res.body), "not valid") {
				t.Errorf("404 page:\n%s", res.body)
			}
		}
	}
	if n := len(listAll(t, b.store)); n != 0 {
		t.Errorf("bad tokens added %d entries", n)
	}
}

func listAll(t testing.TB, s *suppress.Store) []suppress.Entry {
	t.Helper()
	var out []suppress.Entry
	for e, err := range s.List(t.Context()) {
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, e)
	}
	return out
}

// testAPIUnsubscribeRateLimit: past the burst, a client gets 429 with
// Retry-After, on GET and POST, bad tokens included.
func testAPIUnsubscribeRateLimit(t *testing.T, oa *openAPI) {
	b := setupSuppressions(t, Config{UnsubscribeLimit: rate.Every(time.Hour), UnsubscribeBurst: 3})
	token := b.tokens.Token("jan@example.com")
	wantStatus(t, oa.unsubscribePage(t, b.base, token), http.StatusOK)
	wantStatus(t, oa.unsubscribePage(t, b.base, "bad"), http.StatusNotFound)
	wantStatus(t, oa.oneClick(t, b.base, token, oneClickForm), http.StatusOK)
	for _, res := range []httpResult{oa.unsubscribePage(t, b.base, token), oa.oneClick(t, b.base, b.tokens.Token("ola@example.com"), oneClickForm)} {
		wantStatus(t, res, http.StatusTooManyRequests)
		wantPage(t, res)
		secs, err := strconv.Atoi(res.header.Get("Retry-After"))
		if err != nil || secs < 3000 || secs > 3600 {
			t.Errorf("Retry-After %q, want about an hour", res.header.Get("Retry-After"))
		}
	}
	if _, err := b.store.Get(t.Context(), "ola@example.com"); !errors.Is(err, suppress.ErrNotFound) {
		t.Errorf("a refused POST unsubscribed: %v", err)
	}
	// The suppression routes are not limited.
	for range 5 {
		res, _ := oa.suppressions(t, b.base, "")
		wantStatus(t, res, http.StatusOK)
	}
}

// testAPIUnsubscribeNATSClosed: a list that cannot be written is 500, and
// posting again once it can is fine.
func testAPIUnsubscribeNATSClosed(t *testing.T, oa *openAPI) {
	srv := jstest.Start(t)
	_, js := srv.Connect(t)
	jstest.EnsureStreams(t, js, schema.Names{})
	nc2, js2 := srv.Connect(t)
	store, err := suppress.Open(t.Context(), js2, schema.Names{}, suppress.Options{})
	if err != nil {
		t.Fatal(err)
	}
	tokens, _ := suppress.NewTokens([]byte("0123456789abcdef"))
	base := serveAPI(t, Config{Suppressions: store, Unsubscribe: tokens}, js, nil)
	nc2.Close()
	res := oa.oneClick(t, base, tokens.Token("jan@example.com"), oneClickForm)
	wantStatus(t, res, http.StatusInternalServerError)
	wantPage(t, res)
	// The page itself needs no NATS.
	wantStatus(t, oa.unsubscribePage(t, base, tokens.Token("jan@example.com")), http.StatusOK)
}
