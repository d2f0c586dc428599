package console

import (
	"fmt"
	"math"
	"net/url"
	"os"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/cdproto/emulation"
	"github.com/chromedp/chromedp"

	"github.com/jetmail/jetmail/schema"
	"github.com/jetmail/jetmail/worker/smtptest"
)

// TestBrowserOverview opens the overview of a deployment with messages in
// every state and lane, and checks what a person sees: the live numbers,
// the lanes, the worker's heartbeat, the chart.
func TestBrowserOverview(t *testing.T) {
	t.Parallel()
	tab := newTab(t)
	s := newStack(t, stackOptions{webhookDown: true})
	h := os.Getenv("JETMAIL_CONSOLE_HISTORY")
	if h != "" {
		d, err := time.ParseDuration(h)
		if err != nil {
			t.Fatalf("JETMAIL_CONSOLE_HISTORY: %v", err)
		}
		s.history(t, d)
	}
	d := s.seed(t)

	do(t, tab, chromedp.Navigate(s.url+"/ui/"))
	if got := text(t, tab, "h1"); got != "Overview" {
		t.Errorf("title %q, want Overview", got)
	}
	waitText(t, tab, "#workers", "ready")
	// The worker's open SMTP sessions, as its heartbeat says.
	waitFor(t, "SMTP connections shown", func() bool {
		n, err := textNow(tab, "#stat-smtp")
		return err == nil && n != "0"
	})
	sent, err := strconv.Atoi(strings.ReplaceAll(text(t, tab, "#stat-sent"), "\u202f", ""))
	if err != nil || (sent != len(d.sent) && h == "") {
		t.Errorf("sent in the last 15 min: %d (%v), want %d", sent, err, len(d.sent))
	}
	if got := text(t, tab, "#stat-scheduled"); got != strconv.Itoa(len(d.scheduled)) {
		t.Errorf("scheduled: %q, want %d", got, len(d.scheduled))
	}
	lanes := text(t, tab, "#lanes")
	for _, l := range []string{"urgent", "normal", "bulk"} {
		if !strings.Contains(lanes, l) {
			t.Errorf("lanes table %q lacks %s", lanes, l)
		}
	}
	// The webhook whose receiver is down has every event still to deliver.
	waitText(t, tab, "#webhooks", "crm")
	waitFor(t, "the webhook backlog shown", func() bool {
		n, err := textNow(tab, "#stat-backlog")
		return err == nil && n != "0"
	})
	bars := run(t, tab, chromedp.Evaluate[int](`document.querySelectorAll('svg.chart rect.seg-sent').length`))
	if bars == 0 {
		t.Error("the chart has no bar of sent events")
	}
	screenshot(t, tab, "console")

	// Live: a message sent now shows without reloading the page.
	do(t, tab, chromedp.Evaluate[chromedp.Void](`window.notReloaded = true`))
	s.waitState(t, s.publish(t, map[string]any{"Id": "live-1", "To": "live@example.com", "Subject": "live", "Body": "…"}), schema.StateSent)
	waitFor(t, "the new message counted", func() bool {
		s, err := textNow(tab, "#stat-sent")
		n, _ := strconv.Atoi(strings.ReplaceAll(s, "\u202f", ""))
		return err == nil && n == sent+1
	})
	if !run(t, tab, chromedp.Evaluate[bool](`window.notReloaded === true`)) {
		t.Error("the overview reloaded instead of updating its live part")
	}

	do(t, tab, chromedp.Navigate(s.url+"/ui/messages"))
	waitText(t, tab, "#messages", d.partial)
	screenshot(t, tab, "console-messages")
	do(t, tab, chromedp.Navigate(s.url+"/ui/messages/"+d.partial))
	if got := waitText(t, tab, "#timeline", "suppressed"); !strings.Contains(got, "ghost@example.net") {
		t.Errorf("timeline %q does not name the suppressed recipient", got)
	}
	do(t, tab, chromedp.Navigate(s.url+"/ui/messages/"+d.deferred[0]), chromedp.WaitVisible(chromedp.ID("cancel")))
	if got := text(t, tab, "#timeline"); !strings.Contains(got, "451 4.3.0") || !strings.Contains(got, "Next attempt") {
		t.Errorf("timeline of the deferred message %q lacks its SMTP reply or next attempt", got)
	}
	screenshot(t, tab, "console-message")
	do(t, tab, chromedp.Navigate(s.url+"/ui/dead"))
	waitText(t, tab, "#dead", d.failed[0])
	screenshot(t, tab, "console-dead")
	do(t, tab, chromedp.Navigate(s.url+"/ui/suppressions"))
	waitText(t, tab, "#suppressions", "ghost@example.net")
	screenshot(t, tab, "console-suppressions")

	// Dark mode, as the system asks for it.
	if _, err := chromedp.Call(tab, emulation.SetEmulatedMedia, emulation.SetEmulatedMediaParams{
		Features: []*emulation.MediaFeature{{Name: "prefers-color-scheme", Value: "dark"}}}); err != nil {
		t.Fatal(err)
	}
	do(t, tab, chromedp.Navigate(s.url+"/ui/"))
	waitText(t, tab, "#workers", "ready")
	if bg := run(t, tab, chromedp.Evaluate[string](`getComputedStyle(document.body).backgroundColor`)); bg != "rgb(15, 18, 23)" {
		t.Errorf("dark mode background %s, want rgb(15, 18, 23)", bg)
	}
	screenshot(t, tab, "console-dark")
}

// history publishes traffic in waves for d, so that the overview's chart
// has a past: how docs/console.png is made, with
//
//	JETMAIL_CONSOLE_HISTORY=8m JETMAIL_CONSOLE_SHOTS=docs go test -timeout 20m -run TestBrowserOverview ./console
func (s *stack) history(t *testing.T, d time.Duration) {
	t.Helper()
	for i := range 12 {
		s.smtp.AddFault(smtptest.Fault{Cmd: "RCPT", Match: fmt.Sprintf("gone%02d@example.net", i), Code: 550, Enhanced: "5.1.1", Message: "User unknown"})
		s.smtp.AddFault(smtptest.Fault{Cmd: "RCPT", Match: fmt.Sprintf("busy%02d@slow.example", i), Code: 451, Enhanced: "4.7.1", Message: "Try again later"})
	}
	n := 0
	for wave := 0; time.Duration(wave)*10*time.Second < d; wave++ {
		count := 14 + int(10*math.Sin(float64(wave)/4)) + wave%3*3
		for range count {
			n++
			req := map[string]any{"Id": fmt.Sprintf("h-%05d", n), "To": fmt.Sprintf("customer%04d@example.com", n%997), "From": "shop@acme.example",
				"Subject": fmt.Sprintf("Your receipt #%d", 20000+n), "Body": "…"}
			switch {
			case n%17 == 0:
				req["To"] = fmt.Sprintf("gone%02d@example.net", n%12)
			case n%23 == 0:
				req["To"] = fmt.Sprintf("busy%02d@slow.example", n%12)
			case n%3 == 0:
				req["Priority"], req["BatchId"], req["Subject"] = "bulk", "weekly-digest-19", "Your weekly digest"
			case n%11 == 0:
				req["Priority"], req["Subject"] = "urgent", "Your sign-in code"
			}
			s.publish(t, req)
		}
		time.Sleep(10 * time.Second)
	}
}

// TestBrowserCancel finds a scheduled message by its recipient, opens it,
// and cancels it with its button.
func TestBrowserCancel(t *testing.T) {
	t.Parallel()
	tab := newTab(t)
	s := newStack(t, stackOptions{})
	id := s.publish(t, map[string]any{"Id": "board-report-q2", "To": "cfo@example.com", "From": "reports@acme.example",
		"Subject": "Board report Q2", "Body": "…", "SendAt": time.Now().Add(time.Hour).Format(time.RFC3339)})
	s.waitState(t, id, schema.StateScheduled)
	s.waitIndexed(t)

	do(t, tab, chromedp.Navigate(s.url+"/ui/messages"),
		chromedp.SendKeys(chromedp.ID("q"), "cfo@example.com\n"))
	waitText(t, tab, "#search-hint", "Messages to cfo@example.com")
	if got := text(t, tab, "#messages tbody"); !strings.Contains(got, id) || !strings.Contains(got, "scheduled") {
		t.Fatalf("search by recipient shows %q, want %s scheduled", got, id)
	}
	do(t, tab, chromedp.Click(chromedp.CSS(`#messages a[href="/ui/messages/`+id+`"]`)),
		chromedp.WaitVisible(chromedp.ID("cancel")))
	if got := text(t, tab, "#msg-state"); !strings.Contains(got, "scheduled") {
		t.Errorf("message state %q, want scheduled", got)
	}
	if got := text(t, tab, "#timeline"); !strings.Contains(got, "Will be sent in 59 min") && !strings.Contains(got, "Will be sent in 1 h") {
		t.Errorf("timeline %q does not say when it will be sent", got)
	}
	do(t, tab, chromedp.Click(chromedp.ID("cancel")))
	waitText(t, tab, "#flash", "Cancelled: "+id+" will not be sent.")
	waitText(t, tab, "#msg-state", "cancelled")
	if n := run(t, tab, chromedp.Evaluate[int](`document.querySelectorAll('#cancel').length`)); n != 0 {
		t.Error("a cancelled message still has its Cancel button")
	}
	s.waitState(t, id, schema.StateCancelled)
	screenshot(t, tab, "cancelled")
}

// TestBrowserReplay replays a dead letter (a 550 from the SMTP server) from
// the dead letters page, then every other one with Replay all.
func TestBrowserReplay(t *testing.T) {
	t.Parallel()
	tab := newTab(t)
	s := newStack(t, stackOptions{})
	var ids []string
	for i, to := range []string{"once@example.com", "twice@example.com", "thrice@example.com"} {
		s.smtp.AddFault(smtptest.Fault{Cmd: "RCPT", Match: to, Code: 550, Message: "Mailbox unavailable", Times: 1})
		ids = append(ids, s.publish(t, map[string]any{"Id": fmt.Sprintf("dead-%d", i+1), "To": to, "Subject": "Hello " + to, "Body": "…"}))
	}
	for _, id := range ids {
		s.waitState(t, id, schema.StateFailed)
	}
	do(t, tab, chromedp.Navigate(s.url+"/ui/dead"))
	dead := waitText(t, tab, "#dead", ids[0])
	if !strings.Contains(dead, "Mailbox unavailable") || !strings.Contains(dead, "Hello once@example.com") {
		t.Errorf("dead letters show %q, want the error and the subject", dead)
	}
	do(t, tab, chromedp.Click(chromedp.CSS(`button[data-replay="`+ids[0]+`"]`)))
	waitText(t, tab, "#flash", "Replayed "+ids[0])
	if got := text(t, tab, "#dead"); strings.Contains(got, ids[0]+"\t") || strings.Contains(got, "Hello once@example.com") {
		t.Errorf("the replayed letter is still listed: %q", got)
	}
	s.waitState(t, ids[0], schema.StateSent)
	do(t, tab, chromedp.Navigate(s.url+"/ui/messages/"+ids[0]))
	waitText(t, tab, "#msg-state", "sent")

	do(t, tab, chromedp.Navigate(s.url+"/ui/dead"),
		chromedp.Click(chromedp.CSS("#replay-all summary")),
		chromedp.WaitVisible(chromedp.ID("replay-all-confirm")))
	screenshot(t, tab, "replay-all")
	do(t, tab, chromedp.Click(chromedp.ID("replay-all-confirm")))
	waitText(t, tab, "#flash", "Replayed 2 dead letters.")
	waitText(t, tab, "#dead", "No dead letters.")
	for _, id := range ids[1:] {
		s.waitState(t, id, schema.StateSent)
	}
}

// TestBrowserSuppressions adds an address to the suppression list with the
// form and removes it with its button.
func TestBrowserSuppressions(t *testing.T) {
	t.Parallel()
	tab := newTab(t)
	s := newStack(t, stackOptions{noSearch: true})
	const addr = "no.more.mail@example.com"
	do(t, tab, chromedp.Navigate(s.url+"/ui/suppressions"),
		chromedp.SendKeys(chromedp.ID("add-address"), "No.More.Mail@Example.com"),
		chromedp.SetValue(chromedp.ID("add-reason"), "unsubscribe"),
		chromedp.Click(chromedp.ID("add-submit")))
	waitText(t, tab, "#flash", "Added "+addr+" (unsubscribe)")
	if got := text(t, tab, "#suppressions"); !strings.Contains(got, addr) || !strings.Contains(got, "unsubscribe") {
		t.Errorf("the list shows %q, want %s unsubscribe", got, addr)
	}
	if e, err := s.store.Get(t.Context(), addr); err != nil || e.Reason != "unsubscribe" {
		t.Fatalf("on the list: %+v %v, want unsubscribe", e, err)
	}
	screenshot(t, tab, "suppression-added")
	do(t, tab, chromedp.Click(chromedp.CSS(`button[data-remove="`+addr+`"]`)))
	waitText(t, tab, "#flash", "Removed "+addr)
	if got := text(t, tab, "#suppressions"); strings.Contains(got, addr) {
		t.Errorf("the list still shows %s: %q", addr, got)
	}
	if _, err := s.store.Get(t.Context(), addr); err == nil {
		t.Error("the address is still on the list")
	}
}

// TestBrowserLogin logs in with a token: a wrong one is refused, the
// right one leads to the page asked for, the session cookie is out of the
// page's reach, and logging out returns to the login.
func TestBrowserLogin(t *testing.T) {
	t.Parallel()
	tab := newTab(t)
	s := newStack(t, stackOptions{tokens: []string{testToken}, noSearch: true})
	do(t, tab, chromedp.Navigate(s.url+"/ui/suppressions"), chromedp.WaitVisible(chromedp.ID("token")))
	if loc := run(t, tab, chromedp.Location()); !strings.Contains(loc, "/ui/login?next=") {
		t.Errorf("without a session the browser is at %s, want the login", loc)
	}
	screenshot(t, tab, "login")
	do(t, tab, chromedp.SendKeys(chromedp.ID("token"), "not-the-token"), chromedp.Click(chromedp.ID("login")))
	waitText(t, tab, "#login-error", "That is not one of the API tokens.")
	do(t, tab, chromedp.SendKeys(chromedp.ID("token"), testToken), chromedp.Click(chromedp.ID("login")))
	waitText(t, tab, "h1", "Suppression list")
	if c := run(t, tab, chromedp.Evaluate[string](`document.cookie`)); strings.Contains(c, sessionCookie) {
		t.Errorf("the page can read the session cookie: %q", c)
	}
	do(t, tab, chromedp.Navigate(s.url+"/ui/"))
	waitText(t, tab, "h1", "Overview")
	do(t, tab, chromedp.Click(chromedp.ID("logout")), chromedp.WaitVisible(chromedp.ID("token")))
	do(t, tab, chromedp.Navigate(s.url+"/ui/"), chromedp.WaitVisible(chromedp.ID("token")))
}

// TestBrowserHostileSubject shows messages whose subject and metadata are
// HTML and script: they must appear as text, and no dialog may open.
func TestBrowserHostileSubject(t *testing.T) {
	t.Parallel()
	tab := newTab(t)
	seen := dialogs(t, tab)
	s := newStack(t, stackOptions{})
	hostile := []string{`<img src=x onerror=alert(1)>`, `<script>alert(2)</script>`}
	for i, subj := range hostile {
		s.publish(t, map[string]any{"Id": fmt.Sprintf("hostile-%d", i), "To": "x@example.com", "Subject": subj, "Body": subj,
			"Metadata": map[string]string{"note": `"><svg onload=alert(3)>`}})
		s.waitState(t, fmt.Sprintf("hostile-%d", i), schema.StateSent)
	}
	s.waitIndexed(t)

	do(t, tab, chromedp.Navigate(s.url+"/ui/messages?q="+url.QueryEscape("alert(")))
	waitText(t, tab, "#messages", "hostile-0")
	subjects := run(t, tab, chromedp.Evaluate[[]string](`[...document.querySelectorAll('#messages td.subject')].map(e => e.textContent)`))
	slices.Sort(subjects)
	if want := slices.Sorted(slices.Values(hostile)); !slices.Equal(subjects, want) {
		t.Errorf("subjects shown %q, want %q as text", subjects, want)
	}
	injected := `document.querySelectorAll('img[src="x"], main script, .main script, svg[onload]').length`
	if n := run(t, tab, chromedp.Evaluate[int](injected)); n != 0 {
		t.Errorf("%d elements of the subjects became HTML", n)
	}
	screenshot(t, tab, "hostile-list")
	for i, subj := range hostile {
		do(t, tab, chromedp.Navigate(s.url+fmt.Sprintf("/ui/messages/hostile-%d", i)))
		if got := run(t, tab, chromedp.Evaluate[string](`document.getElementById('msg-subject').textContent`)); got != subj {
			t.Errorf("message page subject %q, want %q", got, subj)
		}
		if got := text(t, tab, "#envelope"); !strings.Contains(got, `"><svg onload=alert(3)>`) {
			t.Errorf("the metadata is not shown as text: %q", got)
		}
		if n := run(t, tab, chromedp.Evaluate[int](injected)); n != 0 {
			t.Errorf("%d elements of the message became HTML", n)
		}
	}
	// What a request puts in the search box stays in the search box.
	q := `"><script>alert(4)</script>`
	do(t, tab, chromedp.Navigate(s.url+"/ui/messages?q="+url.QueryEscape(q)))
	if got := run(t, tab, chromedp.Value(chromedp.ID("q"))); got != q {
		t.Errorf("search box holds %q, want %q", got, q)
	}
	if n := run(t, tab, chromedp.Evaluate[int](injected)); n != 0 {
		t.Errorf("%d elements of the query became HTML", n)
	}
	do(t, tab, chromedp.Sleep(300*time.Millisecond)) // time for a handler to fire, if one had been injected
	if d := seen(); len(d) > 0 {
		t.Errorf("dialogs opened: %q", d)
	}
}
