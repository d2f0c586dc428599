package cli

import (
	"io"
	"net/http"
	"net/mail"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/jetmail/jetmail/internal/jstest"
	"github.com/jetmail/jetmail/worker/smtptest"
)

// TestOneClickUnsubscribe goes the way of a recipient: a worker with
// --public-url and --unsubscribe-secret-file sends "Unsubscribe": true
// mail whose List-Unsubscribe link, POSTed as RFC 8058 says, puts the
// address on the list (`suppress check` exits 0); the next bulk message to
// it is suppressed, while a normal-lane one still goes out.
func TestOneClickUnsubscribe(t *testing.T) {
	t.Parallel()
	_, natsURL := startNATS(t)
	srv := smtptest.NewServer(t)
	secret := writeFileIn(t, t.TempDir(), "unsub", "a secret of at least sixteen bytes\n")
	// The settings come in pairs.
	if r := jetmail(t, testCtx(t), "", "worker", "--nats-url", natsURL, "--smtp-url", srv.URL(), "--public-url", "https://mail.example.com"); r.code != 2 ||
		!strings.Contains(r.stderr, "--unsubscribe-secret-file") {
		t.Errorf("--public-url alone: exit %d, %q; want 2 naming the secret", r.code, r.stderr)
	}
	w := startWorker(t, "--nats-url", natsURL, "--smtp-url", srv.URL(), "--smtp-from", "news@example.com", "--http-addr", "127.0.0.1:0",
		"--public-url", "https://mail.example.com/", "--unsubscribe-secret-file", secret)
	addr := w.httpAddr(t)
	send := func(args ...string) runResult {
		t.Helper()
		return jetmail(t, testCtx(t), "", append([]string{"send", "--nats-url", natsURL, "--wait"}, args...)...)
	}
	if r := send("--to", "reader@example.org", "--subject", "news", "--body", "b", "--unsubscribe", "--priority", "bulk"); r.code != 0 {
		t.Fatalf("send --unsubscribe: exit %d", r.code)
	}
	msgs := srv.Messages()
	if len(msgs) != 1 {
		t.Fatalf("%d messages at the server", len(msgs))
	}
	pm, err := mail.ReadMessage(strings.NewReader(string(msgs[0].Data)))
	if err != nil {
		t.Fatal(err)
	}
	link := strings.Trim(strings.Join(strings.Fields(pm.Header.Get("List-Unsubscribe")), ""), "<>")
	u, err := url.Parse(link)
	if err != nil || u.Host != "mail.example.com" || !strings.HasPrefix(u.Path, "/v1/unsubscribe/") {
		t.Fatalf("List-Unsubscribe %q", link)
	}
	// The link at the public URL reaches this worker's HTTP server.
	local := "http://" + addr + u.Path
	if code := jetmail(t, testCtx(t), "", "suppress", "check", "--nats-url", natsURL, "reader@example.org").code; code != 1 {
		t.Fatalf("suppress check before the click: exit %d, want 1", code)
	}
	resp, err := http.Get(local) // a link scanner: no unsubscribe
	if err != nil {
		t.Fatal(err)
	}
	page, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || !strings.Contains(string(page), "<form") {
		t.Errorf("GET of the link: %d, a page without a form:\n%s", resp.StatusCode, page)
	}
	if code := jetmail(t, testCtx(t), "", "suppress", "check", "--nats-url", natsURL, "reader@example.org").code; code != 1 {
		t.Errorf("a GET unsubscribed the reader (suppress check exit %d)", code)
	}
	resp, err = http.Post(local, "application/x-www-form-urlencoded", strings.NewReader("List-Unsubscribe=One-Click"))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("one-click POST: %d", resp.StatusCode)
	}
	resp, err = http.Post(local+"x", "application/x-www-form-urlencoded", strings.NewReader("List-Unsubscribe=One-Click"))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 404 {
		t.Errorf("POST of an altered token: %d, want 404", resp.StatusCode)
	}
	if r := jetmail(t, testCtx(t), "", "suppress", "check", "--nats-url", natsURL, "reader@example.org"); r.code != 0 || !strings.Contains(r.stdout, "unsubscribe") {
		t.Fatalf("suppress check after the click: exit %d %q, want 0 with reason unsubscribe", r.code, r.stdout)
	}

	// The worker's copy of the list catches up within moments.
	jstest.Eventually(t, 10*time.Second, func() bool {
		r := jetmail(t, testCtx(t), "", "send", "--nats-url", natsURL, "--wait", "--to", "reader@example.org", "--subject", "more news", "--body", "b", "--priority", "bulk")
		if r.code == 0 {
			return false
		}
		_, res := splitSendOutput(t, r.stdout)
		return res.Status == 403 && len(res.Recipients) == 1 && res.Recipients[0].Suppressed && res.Recipients[0].Reason == "unsubscribe"
	})
	if r := send("--to", "reader@example.org", "--subject", "your receipt", "--body", "b"); r.code != 0 {
		t.Errorf("a normal-lane message to an unsubscribed reader: exit %d, want it sent", r.code)
	}
	if n := srv.MessageCount(); n != 2 {
		t.Errorf("%d messages at the server, want the first and the receipt", n)
	}
}
