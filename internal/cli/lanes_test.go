package cli

import (
	"cmp"
	"encoding/base64"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/emersion/go-msgauth/dkim"
	"github.com/nats-io/nats.go"

	"github.com/jetmail/jetmail/internal/jstest"
	"github.com/jetmail/jetmail/schema"
	"github.com/jetmail/jetmail/webhook"
	"github.com/jetmail/jetmail/worker/smtptest"
)

// TestSendLanesScheduleAndCancel: send --priority publishes on the lane's
// subject, --at schedules, --batch-id sets the BatchId, send --batch
// publishes on the bulk lane with a batch Id it prints, and cancel ends a
// scheduled message with 410 and says so.
func TestSendLanesScheduleAndCancel(t *testing.T) {
	t.Parallel()
	_, url := startNATS(t)
	startWorker(t, "--nats-url", url, "--http-addr", "127.0.0.1:0", "--outbox", t.TempDir())
	nc, err := nats.Connect(url)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	sub, err := nc.SubscribeSync("mail.*")
	if err != nil {
		t.Fatal(err)
	}
	bulk, _ := nc.SubscribeSync("mail.bulk")
	send := func(args ...string) runResult {
		t.Helper()
		return jetmail(t, testCtx(t), "", append([]string{"send", "--nats-url", url}, args...)...)
	}

	if r := send("--to", "a@example.com", "--priority", "urgent", "--id", "lane-u", "--wait"); r.code != 0 {
		t.Fatalf("send --priority urgent: exit %d", r.code)
	}
	if m, err := sub.NextMsg(5 * time.Second); err != nil || m.Subject != "mail.urgent" {
		t.Errorf("published on %v (%v), want mail.urgent", m, err)
	}
	if r := send("--to", "a@example.com", "--priority", "fast"); r.code != 2 || !strings.Contains(r.stderr, "--priority") {
		t.Errorf("a bad --priority: exit %d, %q", r.code, r.stderr)
	}
	r := send("--to", "a@example.com", "--at", "+1h", "--id", "lane-at", "--batch-id", "promo-1")
	if r.code != 0 {
		t.Fatalf("send --at: exit %d", r.code)
	}
	var ev schema.Result
	jstest.Eventually(t, 5*time.Second, func() bool {
		st := jetmail(t, testCtx(t), "", "status", "--nats-url", url, "lane-at")
		return json.Unmarshal([]byte(st.stdout), &ev) == nil && ev.State != ""
	})
	if ev.State != schema.StateScheduled || ev.BatchId != "promo-1" || ev.SendAt == nil || time.Until(*ev.SendAt) < 59*time.Minute {
		t.Fatalf("status of lane-at: %+v, want scheduled an hour ahead in batch promo-1", ev)
	}
	if r := jetmail(t, testCtx(t), "", "cancel", "--nats-url", url, "lane-at", "lane-u", "lane-nobody"); r.code != 1 ||
		r.stdout != "lane-at cancelled\nlane-u too late (sent)\nlane-nobody unknown\n" {
		t.Errorf("cancel: exit %d, stdout %q", r.code, r.stdout)
	}
	if r := jetmail(t, testCtx(t), "", "cancel", "--nats-url", url, "lane-at"); r.code != 0 || r.stdout != "lane-at cancelled\n" {
		t.Errorf("cancel again: exit %d, stdout %q", r.code, r.stdout)
	}

	file := filepath.Join(t.TempDir(), "b.ndjson")
	os.WriteFile(file, []byte(`{"To":"a@example.com","Subject":"one"}`+"\n"+`{"To":"b@example.com","Subject":"two"}`+"\n"), 0o600)
	r = send("--batch", file)
	if r.code != 0 || !strings.Contains(r.stderr, "jetmail: batch batch-") {
		t.Fatalf("send --batch: exit %d, stderr %q", r.code, r.stderr)
	}
	for range 2 {
		m, err := bulk.NextMsg(5 * time.Second)
		if err != nil {
			t.Fatal(err)
		}
		var req struct{ BatchId string }
		_ = json.Unmarshal(m.Data, &req)
		if !strings.HasPrefix(req.BatchId, "batch-") || !strings.Contains(r.stderr, req.BatchId) {
			t.Errorf("batch line published with BatchId %q; stderr %q", req.BatchId, r.stderr)
		}
	}
	if r := jetmail(t, testCtx(t), "", "cancel", "--nats-url", url, "--batch", "promo-1"); r.code != 0 || r.stdout != "lane-at cancelled\n" {
		t.Errorf("cancel --batch: exit %d, stdout %q", r.code, r.stdout)
	}
}

// TestDKIMKeygenAndSigning makes a key with `jetmail dkim keygen`, runs a
// worker that signs with it, and verifies what the SMTP server received
// against the record keygen printed, with an independent verifier.
func TestDKIMKeygenAndSigning(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	key := filepath.Join(dir, "dkim.pem")
	r := jetmail(t, testCtx(t), "", "dkim", "keygen", "--domain", "example.com", "--selector", "s2026", "--out", key)
	if r.code != 0 || !strings.HasPrefix(r.stdout, `s2026._domainkey.example.com. IN TXT "v=DKIM1; k=rsa; p=`) {
		t.Fatalf("keygen: exit %d, stdout %q", r.code, r.stdout)
	}
	if fi, err := os.Stat(key); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("key file %v, %v; want mode 0600", fi, err)
	}
	var txt []string
	for _, part := range strings.Split(strings.TrimSpace(r.stdout), `"`)[1:] {
		if strings.TrimSpace(part) != "" {
			txt = append(txt, part)
		}
	}
	for _, p := range txt {
		if len(p) > 255 {
			t.Errorf("a TXT string of %d characters, over 255", len(p))
		}
	}
	if r := jetmail(t, testCtx(t), "", "dkim", "keygen", "--domain", "example.com", "--selector", "s2026", "--out", key); r.code != 2 {
		t.Errorf("keygen over an existing key: exit %d, want 2", r.code)
	}

	_, url := startNATS(t)
	srv := smtptest.NewServer(t)
	if r := jetmail(t, testCtx(t), "", "worker", "--nats-url", url, "--smtp-url", srv.URL(), "--http-addr", "127.0.0.1:0",
		"--dkim-domain", "example.com", "--dkim-selector", "s2026", "--dkim-key-file", filepath.Join(dir, "missing.pem")); r.code != 2 ||
		!strings.Contains(r.stderr, "missing.pem") {
		t.Errorf("a missing key file: exit %d, stderr %q; want 2 naming the file", r.code, r.stderr)
	}
	startWorker(t, "--nats-url", url, "--smtp-url", srv.URL(), "--http-addr", "127.0.0.1:0",
		"--dkim-domain", "example.com", "--dkim-selector", "s2026", "--dkim-key-file", key)
	if r := jetmail(t, testCtx(t), "", "send", "--nats-url", url, "--to", "jan@example.org", "--from", "Shop <shop@example.com>",
		"--subject", "Zażółć gęślą jaźń", "--body", "signed", "--wait"); r.code != 0 {
		t.Fatalf("send: exit %d", r.code)
	}
	msgs := srv.Messages()
	if len(msgs) != 1 {
		t.Fatalf("%d messages", len(msgs))
	}
	verifications, err := dkim.VerifyWithOptions(strings.NewReader(string(msgs[0].Data)), &dkim.VerifyOptions{
		LookupTXT: func(domain string) ([]string, error) { return []string{strings.Join(txt, "")}, nil },
	})
	if err != nil || len(verifications) != 1 || verifications[0].Err != nil || verifications[0].Domain != "example.com" {
		t.Errorf("verifications %+v, %v; want one valid signature of example.com", verifications, err)
	}
}

// TestDKIMKeygenEd25519: an Ed25519 key needs no --bits (the flag's RSA
// default does not apply to it), and asking for a size is a usage error.
func TestDKIMKeygenEd25519(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	key := filepath.Join(dir, "ed.pem")
	r := jetmail(t, testCtx(t), "", "dkim", "keygen", "--domain", "example.com", "--selector", "e2026", "--algorithm", "ed25519", "--out", key)
	if r.code != 0 || !strings.HasPrefix(r.stdout, `e2026._domainkey.example.com. IN TXT "v=DKIM1; k=ed25519; p=`) {
		t.Fatalf("keygen --algorithm ed25519: exit %d, stdout %q, stderr %q", r.code, r.stdout, r.stderr)
	}
	if fi, err := os.Stat(key); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("key file %v, %v; want mode 0600", fi, err)
	}
	if r := jetmail(t, testCtx(t), "", "dkim", "keygen", "--domain", "example.com", "--selector", "e2027", "--algorithm", "ed25519",
		"--bits", "2048", "--out", filepath.Join(dir, "ed2.pem")); r.code != 2 || !strings.Contains(r.stderr, "--bits") {
		t.Errorf("ed25519 with --bits: exit %d, stderr %q; want 2 naming --bits", r.code, r.stderr)
	}
}

// TestWorkerWebhook runs a worker with --webhook: the receiver gets the
// message's events, signed with the key of --webhook-secret-file, and
// `jetmail webhooks test` reaches it too.
func TestWorkerWebhook(t *testing.T) {
	t.Parallel()
	key := []byte("0123456789abcdef0123456789abcdef")
	secretFile := writeFileIn(t, t.TempDir(), "hook", "whsec_"+base64.StdEncoding.EncodeToString(key))
	var mu sync.Mutex
	var states []string
	recv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		if err := webhook.Verify(key, r.Header, body, time.Now(), 0); err != nil {
			t.Errorf("a webhook POST does not verify: %v", err)
			w.WriteHeader(http.StatusUnauthorized)
			return
		}
		var ev schema.Result
		_ = json.Unmarshal(body, &ev)
		mu.Lock()
		states = append(states, string(ev.State))
		mu.Unlock()
		w.WriteHeader(http.StatusNoContent)
	}))
	defer recv.Close()
	_, url := startNATS(t)
	startWorker(t, "--nats-url", url, "--http-addr", "127.0.0.1:0", "--outbox", t.TempDir(),
		"--webhook", recv.URL, "--webhook-secret-file", secretFile)
	if r := jetmail(t, testCtx(t), "", "send", "--nats-url", url, "--to", "a@example.com", "--wait"); r.code != 0 {
		t.Fatalf("send: exit %d", r.code)
	}
	jstest.Eventually(t, 15*time.Second, func() bool {
		mu.Lock()
		defer mu.Unlock()
		return slices.Contains(states, "sent")
	})
	if r := jetmail(t, testCtx(t), "", "webhooks", "test", "default", "--webhook", recv.URL, "--webhook-secret-file", secretFile); r.code != 0 ||
		!strings.HasPrefix(r.stdout, "204 ") {
		t.Errorf("webhooks test: exit %d, stdout %q", r.code, r.stdout)
	}
	mu.Lock()
	defer mu.Unlock()
	if !slices.Contains(states, "accepted") || !slices.Contains(states, "test") {
		t.Errorf("the receiver got %v, want the accepted and sent events and the test event", states)
	}
}

// TestTracingConsole: with OTEL_TRACES_EXPORTER=console, `jetmail send`
// writes its span as JSON to standard output after the Id; without it,
// nothing but the Id.
func TestTracingConsole(t *testing.T) {
	t.Parallel()
	_, url := startNATS(t)
	startWorker(t, "--nats-url", url, "--http-addr", "127.0.0.1:0", "--outbox", t.TempDir())
	for _, exporter := range []string{"console", ""} {
		cmd := exec.Command(binary, "send", "--nats-url", url, "--to", "a@example.com", "--id", "traced-"+cmp.Or(exporter, "none"))
		cmd.Env = append(os.Environ(), "OTEL_TRACES_EXPORTER="+exporter)
		out, err := cmd.Output()
		if err != nil {
			t.Fatalf("send: %v", err)
		}
		lines := strings.SplitN(strings.TrimSpace(string(out)), "\n", 2)
		switch {
		case lines[0] != "traced-"+cmp.Or(exporter, "none"):
			t.Errorf("%q: first line %q, want the Id", exporter, lines[0])
		case exporter == "console" && (len(lines) < 2 || !strings.Contains(lines[1], `"Name":"jetmail send"`)):
			t.Errorf("console: no span of jetmail send in\n%s", out)
		case exporter == "" && len(lines) > 1:
			t.Errorf("without an exporter, more than the Id:\n%s", out)
		}
	}
}
