package console

import (
	"context"
	"encoding/json"
	"fmt"
	"io/fs"
	"net/http"
	"net/url"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/jetmail/jetmail/internal/jstest"
	"github.com/jetmail/jetmail/schema"
	"github.com/jetmail/jetmail/worker/smtptest"
)

// TestEscaping checks that what requests put in a page is escaped: a
// subject, metadata and a search query of HTML reach the page as text.
func TestEscaping(t *testing.T) {
	t.Parallel()
	s := newStack(t, stackOptions{})
	const subj = `<script>alert(1)</script>`
	id := s.publish(t, map[string]any{"Id": "xss-1", "To": "x@example.com", "Subject": subj, "Body": "…",
		"Metadata": map[string]string{"<b>k</b>": `"><img src=x onerror=alert(2)>`}})
	s.waitState(t, id, schema.StateSent)
	s.waitIndexed(t)
	c := s.client(t)
	for _, path := range []string{"/ui/messages?q=alert", "/ui/messages/" + id, "/ui/live/messages/" + id,
		"/ui/messages?q=" + url.QueryEscape(`"><script>alert(3)</script>`)} {
		a := c.get(path)
		if a.StatusCode != 200 {
			t.Fatalf("GET %s: %d\n%s", path, a.StatusCode, a.body)
		}
		for _, raw := range []string{"<script>alert", "<img src=x", "<b>k</b>"} {
			if strings.Contains(a.body, raw) {
				t.Errorf("GET %s: the page holds %q unescaped", path, raw)
			}
		}
	}
	if a := c.get("/ui/messages/" + id); !strings.Contains(a.body, "&lt;script&gt;alert(1)&lt;/script&gt;") {
		t.Errorf("the message page does not show the subject as text:\n%s", a.body)
	}
	// A flash repeats what the form held: escaped too.
	token := csrf(t, c.get("/ui/suppressions"))
	a := c.post("/ui/suppressions", url.Values{"csrf": {token}, "address": {"<i>x</i>"}})
	if page := c.get(a.Header.Get("Location")); strings.Contains(page.body, "<i>x</i>") || !strings.Contains(page.body, "&lt;i&gt;x&lt;/i&gt;") {
		t.Errorf("the flash does not escape the address:\n%s", page.body)
	}
}

// TestMessagesPage checks the search: by recipient, subject, batch, state
// and lane, an Id going to its message, paging, and bad filters.
func TestMessagesPage(t *testing.T) {
	t.Parallel()
	s := newStack(t, stackOptions{})
	d := s.seed(t)
	c := s.client(t)
	rows := func(a answer) []string {
		t.Helper()
		if a.StatusCode != 200 {
			t.Fatalf("status %d\n%s", a.StatusCode, a.body)
		}
		var ids []string
		for _, m := range regexp.MustCompile(`<td class="mono id"><a href="/ui/messages/([^"]+)">`).FindAllStringSubmatch(a.body, -1) {
			ids = append(ids, m[1])
		}
		return ids
	}
	if got := rows(c.get("/ui/messages?q=piotr.nowak@example.pl")); len(got) != 2 || !slices.Contains(got, "signin-code-71") || !slices.Contains(got, "order-1041-shipped") {
		t.Errorf("by recipient: %v, want the sign-in code and the order", got)
	}
	if got := rows(c.get("/ui/messages?q=has+shipped&lane=normal")); len(got) != 5 {
		t.Errorf("by subject: %v, want the 5 orders", got)
	}
	if got := rows(c.get("/ui/messages?q=batch:" + d.batch)); len(got) != 8 {
		t.Errorf("by batch: %v, want 8", got)
	}
	if got := rows(c.get("/ui/messages?state=failed")); len(got) != 2 || !slices.Contains(got, "welcome-ghost") || !slices.Contains(got, "report-weekly-19") {
		t.Errorf("failed: %v", got)
	}
	if got := rows(c.get("/ui/messages?lane=urgent")); len(got) != 3 {
		t.Errorf("urgent lane: %v, want 3", got)
	}
	a := c.get("/ui/messages?q=" + d.deferred[0])
	if a.StatusCode != http.StatusSeeOther || a.Header.Get("Location") != "/ui/messages/"+d.deferred[0] {
		t.Errorf("an Id: %d to %q, want 303 to its page", a.StatusCode, a.Header.Get("Location"))
	}
	if a := c.get("/ui/messages?q=id:nope"); !strings.Contains(a.body, "No message has the Id nope.") {
		t.Errorf("an unknown id: does not say so\n%s", a.body)
	}
	if a := c.get("/ui/messages?state=lost"); !strings.Contains(a.body, "The search cannot run: state:") {
		t.Errorf("a bad state: does not say so\n%s", a.body)
	}

	// Paging: 50 a page; the next page goes on where the first ended.
	for i := range 55 {
		s.publish(t, map[string]any{"Id": fmt.Sprintf("page-%02d", i), "To": "pager@example.com", "Subject": "paging", "Body": "…", "Priority": "bulk"})
	}
	for i := range 55 {
		s.waitState(t, fmt.Sprintf("page-%02d", i), schema.StateSent)
	}
	s.waitIndexed(t)
	first := c.get("/ui/messages?q=pager@example.com")
	ids := rows(first)
	next := regexp.MustCompile(`<a class="btn" href="([^"]+)" id="older">`).FindStringSubmatch(first.body)
	if len(ids) != pageSize || next == nil {
		t.Fatalf("first page: %d messages, next %v; want %d and a link", len(ids), next, pageSize)
	}
	second := rows(c.get(strings.ReplaceAll(next[1], "&amp;", "&")))
	// (The order within is the index's, by the first event: the worker
	// takes several at once, so not quite the order of publishing.)
	all := slices.Sorted(slices.Values(append(slices.Clone(ids), second...)))
	if len(second) != 5 || len(slices.Compact(slices.Clone(all))) != 55 || all[0] != "page-00" || all[54] != "page-54" {
		t.Errorf("pages %v + %v, want 50 + 5, each message once", ids, second)
	}
}

// TestSearchOff checks the messages page of an instance without an index:
// it says so, and an Id still finds its message.
func TestSearchOff(t *testing.T) {
	t.Parallel()
	s := newStack(t, stackOptions{noSearch: true})
	id := s.publish(t, map[string]any{"Id": "no-index-1", "To": "x@example.com", "Subject": "hi", "Body": "…"})
	s.waitState(t, id, schema.StateSent)
	c := s.client(t)
	if a := c.get("/ui/messages?q=x@example.com"); !strings.Contains(a.body, "Search is off on this instance") {
		t.Errorf("the page does not say that search is off:\n%s", a.body)
	}
	if a := c.get("/ui/messages?q=" + id); a.StatusCode != http.StatusSeeOther {
		t.Errorf("an Id without index: %d, want 303 to its page", a.StatusCode)
	}
}

// TestMessagePage checks the page of one message: its events, SMTP
// replies, recipients, and the Cancel button only while it can be
// cancelled; cancelling a sent message is too late.
func TestMessagePage(t *testing.T) {
	t.Parallel()
	s := newStack(t, stackOptions{noSearch: true})
	s.smtp.AddFault(smtptest.Fault{Cmd: "RCPT", Match: "later@example.com", Code: 451, Enhanced: "4.2.0", Message: "Greylisted, try again"})
	deferred := s.publish(t, map[string]any{"Id": "grey-1", "To": "later@example.com", "Subject": "Greylisted", "Body": "…"})
	sent := s.publish(t, map[string]any{"Id": "sent-1", "To": "now@example.com", "Subject": "Done", "Body": "…"})
	s.waitState(t, deferred, schema.StateDeferred)
	s.waitState(t, sent, schema.StateSent)
	c := s.client(t)
	a := c.get("/ui/messages/" + deferred)
	for _, want := range []string{"451 4.2.0", "Greylisted, try again", "Next attempt", `id="cancel"`, "later@example.com", "accepted", "deferred"} {
		if !strings.Contains(a.body, want) {
			t.Errorf("deferred message page lacks %q", want)
		}
	}
	a = c.get("/ui/messages/" + sent)
	if strings.Contains(a.body, `id="cancel"`) || !strings.Contains(a.body, "250") {
		t.Errorf("sent message page: a Cancel button, or no 250:\n%s", a.body)
	}
	if !strings.Contains(a.body, "data-live-stop") {
		t.Error("the page of a final message keeps refreshing")
	}
	res := c.post("/ui/messages/"+sent+"/cancel", url.Values{"csrf": {csrf(t, c.get("/ui/messages/"+deferred))}})
	if page := c.get(res.Header.Get("Location")); !strings.Contains(page.body, "Too late to cancel sent-1: it is already sent.") {
		t.Errorf("cancelling a sent message does not say it is too late:\n%s", page.body)
	}
	// An attempt that ended after the final dot without a reply.
	next := time.Now().Add(time.Minute)
	for _, ev := range []schema.Result{
		{Id: "uncertain-1", Status: 202, State: schema.StateAccepted, Attempt: 1, Time: time.Now(),
			Envelope: &schema.Envelope{From: "a@example.com", Recipients: []string{"b@example.com"}, Subject: "maybe"}},
		{Id: "uncertain-1", Status: 202, State: schema.StateDeferred, Attempt: 1, Time: time.Now(), Uncertain: true,
			Error: "data-close: EOF", NextAttemptAt: &next},
	} {
		data, _ := json.Marshal(ev)
		if _, err := s.js.Publish(t.Context(), "mail.result.uncertain-1", data); err != nil {
			t.Fatal(err)
		}
	}
	a = c.get("/ui/messages/uncertain-1")
	for _, want := range []string{"Uncertain: the connection ended after the message", "data-close: EOF", "maybe", `id="cancel"`} {
		if !strings.Contains(a.body, want) {
			t.Errorf("the page of an uncertain attempt lacks %q", want)
		}
	}
	if a := c.get("/ui/messages/unknown-id"); a.StatusCode != http.StatusNotFound || !strings.Contains(a.body, "No message has the Id unknown-id") {
		t.Errorf("unknown Id: %d", a.StatusCode)
	}
	if a := c.get("/ui/nothing-here"); a.StatusCode != http.StatusNotFound {
		t.Errorf("an unknown page: %d, want 404", a.StatusCode)
	}
}

// TestOverviewLive checks the overview's live fragment: the lanes' queues,
// the scheduled count, a worker's heartbeat, and no page around it.
func TestOverviewLive(t *testing.T) {
	t.Parallel()
	s := newStack(t, stackOptions{noSearch: true})
	id := s.publish(t, map[string]any{"Id": "later-1", "To": "x@example.com", "Subject": "later", "Body": "…",
		"SendAt": time.Now().Add(time.Hour).Format(time.RFC3339)})
	s.waitState(t, id, schema.StateScheduled)
	c := s.client(t)
	var a answer
	jstest.Eventually(t, 10*time.Second, func() bool {
		a = c.get("/ui/live/overview")
		return strings.Contains(a.body, `<table class="table" id="workers">`)
	})
	if strings.Contains(a.body, "<html") || !strings.Contains(a.body, `id="stat-scheduled">1<`) {
		t.Errorf("the live part is a page, or lacks the scheduled message:\n%s", a.body)
	}
	if a.Header.Get("Cache-Control") != "no-store" {
		t.Errorf("Cache-Control %q, want no-store", a.Header.Get("Cache-Control"))
	}
}

// TestHeaders checks the security headers of the pages and the caching
// of the assets.
func TestHeaders(t *testing.T) {
	t.Parallel()
	s := newStack(t, stackOptions{noSearch: true})
	c := s.client(t)
	a := c.get("/ui/")
	csp := a.Header.Get("Content-Security-Policy")
	if !strings.Contains(csp, "script-src 'self'") || !strings.Contains(csp, "frame-ancestors 'none'") || strings.Contains(csp, "unsafe") {
		t.Errorf("Content-Security-Policy %q", csp)
	}
	if a.Header.Get("X-Frame-Options") != "DENY" || a.Header.Get("X-Content-Type-Options") != "nosniff" {
		t.Errorf("headers %v", a.Header)
	}
	tag := regexp.MustCompile(`/ui/assets/console\.css\?v=([0-9a-f]+)`).FindStringSubmatch(a.body)
	if tag == nil {
		t.Fatal("no style sheet link")
	}
	css := c.get("/ui/assets/console.css?v=" + tag[1])
	if css.StatusCode != 200 || !strings.HasPrefix(css.Header.Get("Content-Type"), "text/css") ||
		!strings.Contains(css.Header.Get("Cache-Control"), "immutable") {
		t.Errorf("style sheet: %d %v", css.StatusCode, css.Header)
	}
	if old := c.get("/ui/assets/console.css?v=old"); strings.Contains(old.Header.Get("Cache-Control"), "immutable") {
		t.Error("an asset of another version is cached for good")
	}
	if js := c.get("/ui/assets/console.js"); js.StatusCode != 200 || !strings.Contains(js.Header.Get("Content-Type"), "javascript") {
		t.Errorf("script: %d %v", js.StatusCode, js.Header)
	}
}

// TestOffline checks that nothing the console serves loads anything from
// elsewhere: no URL with a scheme or a host in the templates and assets.
func TestOffline(t *testing.T) {
	t.Parallel()
	external := regexp.MustCompile(`(?i)(https?:)?//[a-z0-9.-]+\.[a-z]{2,}|@import|url\(\s*['"]?(https?:|//)`)
	n := 0
	err := fs.WalkDir(files, ".", func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		n++
		data, err := fs.ReadFile(files, path)
		if err != nil {
			return err
		}
		for _, m := range external.FindAllString(string(data), -1) {
			if m != "http://www.w3.org" && !strings.HasPrefix(m, "http://www.w3.org/") {
				t.Errorf("%s refers to %q", path, m)
			}
		}
		return nil
	})
	if err != nil || n < 5 {
		t.Fatalf("walked %d files: %v", n, err)
	}
}

// TestTally checks the chart's counts: events by state in their 30 s
// bucket, read incrementally without counting any twice.
func TestTally(t *testing.T) {
	t.Parallel()
	srv := jstest.Start(t)
	nc, js := srv.Connect(t)
	names := schema.DefaultNames()
	jstest.EnsureStreams(t, js, names)
	publish := func(states ...schema.State) {
		for i, st := range states {
			data, _ := json.Marshal(schema.Result{Id: fmt.Sprintf("m%d", i), State: st, Status: 200, Time: time.Now()})
			m := nats.NewMsg(names.ResultSubject(fmt.Sprintf("m%d", i)))
			m.Data = data
			if _, err := js.PublishMsg(context.Background(), m); err != nil {
				t.Fatal(err)
			}
		}
	}
	_ = nc
	tl := newTally(js, names)
	total := func() (n [countStates]int) {
		series, unread, _ := tl.series(time.Now())
		if unread != 0 {
			t.Fatalf("%d bars not read", unread)
		}
		if len(series) != tallyBars {
			t.Fatalf("%d bars, want %d", len(series), tallyBars)
		}
		for _, b := range series {
			for k := range n {
				n[k] += b[k]
			}
		}
		return n
	}
	if err := tl.refresh(context.Background(), time.Now()); err != nil {
		t.Fatal(err)
	}
	if got := total(); got != [countStates]int{} {
		t.Errorf("empty stream: %v", got)
	}
	publish(schema.StateAccepted, schema.StateSent, schema.StateSent, schema.StateDeferred, schema.StateFailed, schema.StateCancelled)
	if err := tl.refresh(context.Background(), time.Now()); err != nil {
		t.Fatal(err)
	}
	if got, want := total(), [countStates]int{2, 1, 1}; got != want {
		t.Errorf("after 6 events: %v, want %v (sent, deferred, failed)", got, want)
	}
	publish(schema.StateSent)
	if err := tl.refresh(context.Background(), time.Now()); err != nil {
		t.Fatal(err)
	}
	if got, want := total(), [countStates]int{3, 1, 1}; got != want {
		t.Errorf("after one more: %v, want %v", got, want)
	}
	// 2,500 more, over several batches.
	var many []schema.State
	for range 2500 {
		many = append(many, schema.StateSent)
	}
	publish(many...)
	// A refresh reads for a quarter of a second at most, then says it is
	// behind; the next ones go on.
	for i := 0; ; i++ {
		if err := tl.refresh(context.Background(), time.Now()); err != nil {
			t.Fatal(err)
		}
		if _, _, behind := tl.series(time.Now()); !behind {
			break
		}
		if i == 100 {
			t.Fatal("still behind after 100 refreshes")
		}
	}
	if got := total(); got[countSent] != 2503 {
		t.Errorf("after 2,500 more: %v, want 2503 sent", got)
	}
	// Events older than the window are not counted.
	if series, _, _ := tl.series(time.Now().Add(tallyWindow)); series[0] != ([countStates]int{}) {
		t.Errorf("15 minutes later the oldest bar is %v, want empty", series[0])
	}
}

// TestTallyFirstMax checks the first look at a window with too many
// events: the tally reads the last of them only, and says that the bars
// before are not read.
func TestTallyFirstMax(t *testing.T) {
	t.Parallel()
	srv := jstest.Start(t)
	_, js := srv.Connect(t)
	names := schema.DefaultNames()
	jstest.EnsureStreams(t, js, names)
	for i := range 300 {
		data, _ := json.Marshal(schema.Result{Id: fmt.Sprintf("m%d", i), State: schema.StateSent, Status: 200})
		if _, err := js.Publish(context.Background(), names.ResultSubject(fmt.Sprintf("m%d", i)), data); err != nil {
			t.Fatal(err)
		}
	}
	tl := newTally(js, names)
	tl.firstMax = 100
	if err := tl.refresh(context.Background(), time.Now()); err != nil {
		t.Fatal(err)
	}
	series, unread, _ := tl.series(time.Now())
	if series[tallyBars-1][countSent] != 100 || unread != tallyBars {
		t.Errorf("read %v in the last bar, %d bars unread; want the last 100 events and every bar (the one of the first event read included) unread",
			series[tallyBars-1], unread)
	}
}

// TestChart checks the chart's geometry: bars stacked within the plot,
// heights in proportion, a nice scale.
func TestChart(t *testing.T) {
	t.Parallel()
	series := make([][countStates]int, tallyBars)
	series[tallyBars-1] = [countStates]int{30, 6, 4}
	series[0] = [countStates]int{10, 0, 0}
	ch := drawChart(series, 0, time.Now())
	if len(ch.Bars) != tallyBars || ch.Empty {
		t.Fatalf("%d bars, empty %v", len(ch.Bars), ch.Empty)
	}
	if top := ch.Ticks[len(ch.Ticks)-1].Label; top != "40" {
		t.Errorf("scale up to %s, want 40", top)
	}
	last := ch.Bars[tallyBars-1]
	if len(last.Segs) != 3 {
		t.Fatalf("last bar %+v, want 3 segments", last)
	}
	sum := 0.0
	for _, sg := range last.Segs {
		sum += sg.H
		if sg.Y < ch.Top-0.1 || sg.Y+sg.H > ch.Bottom+0.1 {
			t.Errorf("segment %+v outside the plot %g–%g", sg, ch.Top, ch.Bottom)
		}
	}
	if full := ch.Bottom - ch.Top; sum < full-0.5 || sum > full+0.5 {
		t.Errorf("40 of 40 events fill %g of %g", sum, full)
	}
	if h := ch.Bars[0].Segs[0].H; h < (ch.Bottom-ch.Top)/4-0.5 || h > (ch.Bottom-ch.Top)/4+0.5 {
		t.Errorf("10 of 40 events are %g high, want a quarter", h)
	}
	if !strings.Contains(last.Title, "30 sent, 6 deferred, 4 failed") {
		t.Errorf("tooltip %q", last.Title)
	}
	if empty := drawChart(make([][countStates]int, tallyBars), 0, time.Now()); !empty.Empty {
		t.Error("no events is not empty")
	}
	part := drawChart(series, 3, time.Now())
	if part.Bars[0].Segs[0].Class != "seg-unread" || part.Bars[2].Segs[0].Class != "seg-unread" || part.Bars[3].Segs != nil ||
		!strings.Contains(part.Bars[0].Title, "not read") {
		t.Errorf("3 unread bars: %+v", part.Bars[:4])
	}
	for n, want := range map[int]int{0: 4, 3: 4, 5: 10, 10: 10, 11: 20, 21: 40, 41: 100, 401: 1000} {
		if got := niceCeil(n); got != want {
			t.Errorf("niceCeil(%d) = %d, want %d", n, got, want)
		}
	}
}

// TestInterpret checks how the one search box reads its text.
func TestInterpret(t *testing.T) {
	t.Parallel()
	for q, want := range map[string]string{
		"":                       "/",
		"jan@example.com":        "recipient/jan@example.com",
		" Jan@Example.com ":      "recipient/Jan@Example.com",
		"to: a@b.c":              "recipient/a@b.c",
		"batch:spring-2026":      "batch/spring-2026",
		"BATCH: x":               "batch/x",
		"subject:a@b":            "subject/a@b",
		"id:order-1":             "id/order-1",
		"order-1234":             "id?/order-1234",
		"Re: invoice":            "subject/Re: invoice",
		"invoice march":          "subject/invoice march",
		"<script>alert(1)":       "subject/<script>alert(1)",
		"mail from a@b.c please": "subject/mail from a@b.c please",
	} {
		f, v := interpret(q)
		if got := f + "/" + v; got != want {
			t.Errorf("interpret(%q) = %s, want %s", q, got, want)
		}
	}
}

// TestSafeNext checks where the login may send the browser.
func TestSafeNext(t *testing.T) {
	t.Parallel()
	for next, want := range map[string]string{
		"/ui/dead?q=x":            "/ui/dead?q=x",
		"/ui/messages/a":          "/ui/messages/a",
		"":                        "/ui/",
		"/v1/messages":            "/ui/",
		"https://evil.example/ui": "/ui/",
		"//evil.example/ui/":      "/ui/",
		"/ui/live/overview":       "/ui/",
		"/ui/login":               "/ui/",
		`/ui/\\evil.example`:      "/ui/",
	} {
		if got := safeNext(next); got != want {
			t.Errorf("safeNext(%q) = %q, want %q", next, got, want)
		}
	}
}
