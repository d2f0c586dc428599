package cli

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"
	"mime/multipart"
	"net"
	"net/mail"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/jetmail/jetmail/internal/jstest"
	"github.com/jetmail/jetmail/producer"
	"github.com/jetmail/jetmail/schema"
	"github.com/jetmail/jetmail/worker/smtptest"
)

// binary is the jetmail binary built by TestMain for the process-level
// tests.
var binary string

func TestMain(m *testing.M) {
	// The tests must not pick up the developer's settings.
	for _, kv := range os.Environ() {
		if k, _, _ := strings.Cut(kv, "="); strings.HasPrefix(k, envPrefix) {
			os.Unsetenv(k)
		}
	}
	// Workers and gateways in these tests keep no search index unless a
	// test asks for one with --index-dir: the default folder is shared,
	// and locked by the first process that opens it.
	os.Setenv(envPrefix+"INDEX_DIR", "none")
	dir, err := os.MkdirTemp("", "jetmail-test-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	binary = filepath.Join(dir, "jetmail")
	if out, err := exec.Command("go", "build", "-o", binary, "github.com/jetmail/jetmail/cmd/jetmail").CombinedOutput(); err != nil {
		fmt.Fprintf(os.Stderr, "building jetmail: %v\n%s", err, out)
		os.RemoveAll(dir)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// ---- helpers ----

// startNATS runs a JetStream server in-process and returns it and its URL.
func startNATS(t testing.TB) (*server.Server, string) {
	t.Helper()
	s := jstest.Start(t)
	return s.NATS(), s.URL()
}

// watchBuffer is an io.Writer, safe for concurrent use, that tests can
// wait on until some text has been written.
type watchBuffer struct {
	mu      sync.Mutex
	buf     bytes.Buffer
	changed chan struct{} // closed and replaced on every write
}

func newWatchBuffer() *watchBuffer { return &watchBuffer{changed: make(chan struct{})} }

func (w *watchBuffer) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	close(w.changed)
	w.changed = make(chan struct{})
	return w.buf.Write(p)
}

func (w *watchBuffer) String() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.buf.String()
}

// waitFor waits until the text contains s, or ctx ends.
func (w *watchBuffer) waitFor(ctx context.Context, s string) error {
	for {
		w.mu.Lock()
		found, changed := strings.Contains(w.buf.String(), s), w.changed
		w.mu.Unlock()
		if found {
			return nil
		}
		select {
		case <-changed:
		case <-ctx.Done():
			return fmt.Errorf("waiting for %q: %w", s, ctx.Err())
		}
	}
}

// runResult is the outcome of one in-process run.
type runResult struct {
	code           int
	stdout, stderr string
}

// jetmail runs the command line args in process with stdin.
func jetmail(t testing.TB, ctx context.Context, stdin string, args ...string) runResult {
	t.Helper()
	var out, errOut bytes.Buffer
	code := Run(ctx, args, strings.NewReader(stdin), &out, &errOut)
	t.Logf("jetmail %s → %d\nstdout: %s\nstderr: %s", strings.Join(args, " "), code, out.String(), errOut.String())
	return runResult{code, out.String(), errOut.String()}
}

// testWorker is a `jetmail worker` running in process.
type testWorker struct {
	logs *watchBuffer
	stop func() int // cancels the worker's context and returns its exit status
}

// startWorker runs `jetmail worker args...` in a goroutine and waits until
// it consumes. At cleanup it stops the worker and checks it exits 0.
func startWorker(t *testing.T, args ...string) *testWorker {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	logs := newWatchBuffer()
	done := make(chan int, 1)
	go func() {
		done <- Run(ctx, append([]string{"worker", "--log-format", "json"}, args...), strings.NewReader(""), io.Discard, logs)
	}()
	var once sync.Once
	code := -1
	w := &testWorker{logs: logs, stop: func() int {
		once.Do(func() {
			cancel()
			select {
			case code = <-done:
			case <-time.After(20 * time.Second):
				t.Errorf("worker did not stop 20s after cancel\n%s", logs)
			}
		})
		return code
	}}
	t.Cleanup(func() {
		if c := w.stop(); c != 0 {
			t.Errorf("worker exited with %d, want 0\n%s", c, logs)
		}
	})
	wctx, wcancel := context.WithTimeout(ctx, 15*time.Second)
	defer wcancel()
	started := make(chan error, 1)
	go func() { started <- logs.waitFor(wctx, `"msg":"worker started"`) }()
	select {
	case err := <-started:
		if err != nil {
			t.Fatalf("worker did not start: %v\n%s", err, logs)
		}
	case c := <-done:
		done <- c
		t.Fatalf("worker exited with %d before starting\n%s", c, logs)
	}
	return w
}

// testCtx is a context for one test's commands, bounded so that a hang
// fails the test rather than the package.
func testCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// splitSendOutput splits the output of `send --wait` into the Id line and
// the result.
func splitSendOutput(t *testing.T, out string) (string, *schema.Result) {
	t.Helper()
	id, rest, ok := strings.Cut(out, "\n")
	if !ok || !schema.ValidID(id) {
		t.Fatalf("first line of stdout is not an Id: %q", out)
	}
	var res schema.Result
	if err := json.Unmarshal([]byte(rest), &res); err != nil {
		t.Fatalf("result is not JSON: %v\n%s", err, rest)
	}
	if res.Id != id {
		t.Fatalf("result is for %q, want %q", res.Id, id)
	}
	return id, &res
}

// readEML parses the outbox file of id.
func readEML(t *testing.T, outbox, id string) *mail.Message {
	t.Helper()
	f, err := os.Open(filepath.Join(outbox, id+".eml"))
	if err != nil {
		t.Fatalf("outbox: %v", err)
	}
	t.Cleanup(func() { f.Close() })
	m, err := mail.ReadMessage(bufio.NewReader(f))
	if err != nil {
		t.Fatalf("%s.eml does not parse: %v", id, err)
	}
	return m
}

// leafParts walks a MIME body and describes each named part as
// "disposition media-type content-id", by file name.
func leafParts(t *testing.T, contentType string, body io.Reader) map[string]string {
	t.Helper()
	out := map[string]string{}
	var walk func(ct string, r io.Reader)
	walk = func(ct string, r io.Reader) {
		mt, params, err := mime.ParseMediaType(ct)
		if err != nil {
			t.Fatalf("Content-Type %q: %v", ct, err)
		}
		if !strings.HasPrefix(mt, "multipart/") {
			return
		}
		mr := multipart.NewReader(r, params["boundary"])
		for {
			p, err := mr.NextRawPart()
			if err == io.EOF {
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			pct := p.Header.Get("Content-Type")
			if name := p.FileName(); name != "" {
				disp, _, _ := mime.ParseMediaType(p.Header.Get("Content-Disposition"))
				pmt, _, _ := mime.ParseMediaType(pct)
				out[name] = disp + " " + pmt + " " + p.Header.Get("Content-ID")
				continue
			}
			walk(pct, p)
		}
	}
	walk(contentType, body)
	return out
}

// deadURL returns a NATS URL where nothing listens.
func deadURL(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	return "nats://" + addr
}

// ---- end to end, in process ----

// TestClientCommands runs one worker with the .eml outbox and exercises
// send, status and results against it.
func TestClientCommands(t *testing.T) {
	t.Parallel()
	_, url := startNATS(t)
	outbox := t.TempDir()
	startWorker(t, "--nats-url", url, "--outbox", outbox, "--http-addr", "127.0.0.1:0")

	t.Run("send --wait", func(t *testing.T) {
		t.Parallel()
		r := jetmail(t, testCtx(t), "", "send", "--nats-url", url,
			"--to", "a@example.com", "--cc", "Jan Kowalski <jan@example.com>; c@example.com",
			"--from", "me@example.com", "--subject", "Zażółć gęślą jaźń", "--body", "hello",
			"--metadata", "order=1234", "--wait")
		if r.code != 0 {
			t.Fatalf("exit %d, want 0", r.code)
		}
		id, res := splitSendOutput(t, r.stdout)
		if res.Status != schema.Status200 || res.State != schema.StateSent || res.Metadata["order"] != "1234" {
			t.Errorf("result = %+v, want sent 200 with the metadata", res)
		}
		m := readEML(t, outbox, id)
		dec := new(mime.WordDecoder)
		if subj, err := dec.DecodeHeader(m.Header.Get("Subject")); err != nil || subj != "Zażółć gęślą jaźń" {
			t.Errorf("Subject = %q (%v)", subj, err)
		}
		to, err := m.Header.AddressList("To")
		if err != nil || len(to) != 1 || to[0].Address != "a@example.com" {
			t.Errorf("To = %v (%v), want a@example.com", to, err)
		}
		cc, err := m.Header.AddressList("Cc")
		if err != nil || len(cc) != 2 || cc[0].Name != "Jan Kowalski" {
			t.Errorf("Cc = %v (%v), want Jan Kowalski and c@example.com", cc, err)
		}

		// status prints the same final result.
		r = jetmail(t, testCtx(t), "", "status", "--nats-url", url, id)
		if r.code != 0 {
			t.Fatalf("status: exit %d, want 0", r.code)
		}
		var st schema.Result
		if err := json.Unmarshal([]byte(r.stdout), &st); err != nil || st.Id != id || st.State != schema.StateSent {
			t.Errorf("status printed %+v (%v), want the sent result of %s", st, err, id)
		}
	})

	t.Run("send --file connector payload", func(t *testing.T) {
		t.Parallel()
		path := filepath.Join(t.TempDir(), "req.json")
		payload := `{"to":"a@x.com;b@y.com","From":"shop@example.com","Subject":"Connector","Body":"<p>Hi <b>there</b></p>","IsHtml":"true","Importance":"high"}`
		if err := os.WriteFile(path, []byte(payload), 0o600); err != nil {
			t.Fatal(err)
		}
		r := jetmail(t, testCtx(t), "", "send", "--nats-url", url, "--file", path, "--wait")
		if r.code != 0 {
			t.Fatalf("exit %d, want 0", r.code)
		}
		id, res := splitSendOutput(t, r.stdout)
		if res.Status != schema.Status200 {
			t.Errorf("status %d, want 200", res.Status)
		}
		m := readEML(t, outbox, id)
		to, err := m.Header.AddressList("To")
		if err != nil || len(to) != 2 || to[0].Address != "a@x.com" || to[1].Address != "b@y.com" {
			t.Errorf("To = %v (%v), want a@x.com and b@y.com", to, err)
		}
		if ct := m.Header.Get("Content-Type"); !strings.HasPrefix(ct, "multipart/alternative") {
			t.Errorf("Content-Type = %q, want multipart/alternative for an HTML body", ct)
		}
		if m.Header.Get("Importance") == "" {
			t.Error("no Importance header")
		}
	})

	t.Run("send --file - from stdin with an Id", func(t *testing.T) {
		t.Parallel()
		payload := `{"Id":"stdin-request-1","To":["a@example.com"],"From":"me@example.com","Subject":"stdin","Body":"b"}`
		r := jetmail(t, testCtx(t), payload, "send", "--nats-url", url, "--file", "-", "--wait")
		if r.code != 0 {
			t.Fatalf("exit %d, want 0", r.code)
		}
		if id, _ := splitSendOutput(t, r.stdout); id != "stdin-request-1" {
			t.Errorf("Id %q, want the payload's", id)
		}
		// Publishing the same Id again stores nothing new and says so.
		r = jetmail(t, testCtx(t), payload, "send", "--nats-url", url, "--file", "-")
		if r.code != 0 || strings.TrimSpace(r.stdout) != "stdin-request-1" || !strings.Contains(r.stderr, "already published") {
			t.Errorf("republish: exit %d, stdout %q, stderr %q; want 0, the Id and a duplicate note", r.code, r.stdout, r.stderr)
		}
	})

	t.Run("send attachments and headers", func(t *testing.T) {
		t.Parallel()
		dir := t.TempDir()
		pdf := filepath.Join(dir, "faktura.pdf")
		logo := filepath.Join(dir, "logo.png")
		os.WriteFile(pdf, []byte("%PDF-1.4 not really"), 0o600)
		os.WriteFile(logo, []byte("\x89PNG\r\n\x1a\nnot really"), 0o600)
		r := jetmail(t, testCtx(t), "", "send", "--nats-url", url, "--id", "attach-1",
			"--to", "a@example.com", "--from", "me@example.com", "--subject", "files",
			"--html", "--body", `<p>see <img src="cid:logo"></p>`, "--text", "see the logo",
			"--attach", pdf, "--inline", "logo="+logo, "--header", "X-Campaign: spring",
			"--reply-to", "support@example.com", "--importance", "LOW", "--wait")
		if r.code != 0 {
			t.Fatalf("exit %d, want 0", r.code)
		}
		m := readEML(t, outbox, "attach-1")
		if got := m.Header.Get("X-Campaign"); got != "spring" {
			t.Errorf("X-Campaign = %q, want spring", got)
		}
		if got := m.Header.Get("Reply-To"); !strings.Contains(got, "support@example.com") {
			t.Errorf("Reply-To = %q", got)
		}
		parts := leafParts(t, m.Header.Get("Content-Type"), m.Body)
		want := map[string]string{"faktura.pdf": "attachment application/pdf ", "logo.png": "inline image/png <logo>"}
		for name, w := range want {
			if parts[name] != w {
				t.Errorf("part %s = %q, want %q", name, parts[name], w)
			}
		}
	})

	t.Run("status of an unknown Id", func(t *testing.T) {
		t.Parallel()
		r := jetmail(t, testCtx(t), "", "status", "--nats-url", url, "no-such-id")
		if r.code != 1 || r.stdout != "" || !strings.Contains(r.stderr, "no result for no-such-id") {
			t.Errorf("exit %d, stdout %q, stderr %q; want 1 and a message on stderr", r.code, r.stdout, r.stderr)
		}
	})

	t.Run("results", func(t *testing.T) {
		t.Parallel()
		var ids []string
		for i := range 2 {
			r := jetmail(t, testCtx(t), "", "send", "--nats-url", url, "--to", "a@example.com",
				"--from", "me@example.com", "--subject", fmt.Sprint("results ", i), "--wait")
			if r.code != 0 {
				t.Fatalf("send: exit %d", r.code)
			}
			id, _ := splitSendOutput(t, r.stdout)
			ids = append(ids, id)
		}
		r := jetmail(t, testCtx(t), "", "results", "--nats-url", url)
		if r.code != 0 {
			t.Fatalf("exit %d, want 0", r.code)
		}
		states := map[string][]schema.State{}
		for line := range strings.Lines(r.stdout) {
			var res schema.Result
			if err := json.Unmarshal([]byte(line), &res); err != nil {
				t.Fatalf("not a JSON line: %q: %v", line, err)
			}
			states[res.Id] = append(states[res.Id], res.State)
		}
		for _, id := range ids {
			if want := []schema.State{schema.StateAccepted, schema.StateSent}; !slices.Equal(states[id], want) {
				t.Errorf("events of %s: %v, want %v", id, states[id], want)
			}
		}
	})

	t.Run("results --follow", func(t *testing.T) {
		t.Parallel()
		ctx, cancel := context.WithCancel(testCtx(t))
		defer cancel()
		out := newWatchBuffer()
		done := make(chan int, 1)
		go func() {
			done <- Run(ctx, []string{"results", "--follow", "--nats-url", url}, strings.NewReader(""), out, io.Discard)
		}()
		r := jetmail(t, testCtx(t), "", "send", "--nats-url", url, "--id", "follow-me",
			"--to", "a@example.com", "--from", "me@example.com")
		if r.code != 0 {
			t.Fatalf("send: exit %d", r.code)
		}
		if err := out.waitFor(testCtx(t), `{"Id":"follow-me","Status":200,"State":"sent"`); err != nil {
			t.Fatalf("%v; got:\n%s", err, out)
		}
		cancel()
		if code := <-done; code != 0 {
			t.Errorf("results --follow exited %d after Ctrl-C, want 0", code)
		}
	})
}

// TestSendBatch publishes a file of JSON lines and waits for the summary.
func TestSendBatch(t *testing.T) {
	t.Parallel()
	_, url := startNATS(t)
	startWorker(t, "--nats-url", url, "--outbox", t.TempDir(), "--http-addr", "127.0.0.1:0")

	var lines []string
	for i := range 20 {
		lines = append(lines, fmt.Sprintf(`{"Id":"batch-%d","To":"r%d@example.com","From":"me@example.com","Subject":"n%d"}`, i, i, i))
	}
	r := jetmail(t, testCtx(t), strings.Join(lines, "\n")+"\n", "send", "--nats-url", url, "--batch", "-", "--wait")
	if r.code != 0 {
		t.Fatalf("exit %d, want 0", r.code)
	}
	if got := strings.Count(r.stdout, "batch-"); got != 20 {
		t.Errorf("printed %d Ids, want 20", got)
	}
	if !strings.Contains(r.stdout, "200\t20\n") {
		t.Errorf("summary lacks 20 × 200:\n%s", r.stdout)
	}

	// An invalid line is reported with its number; the others still go.
	bad := lines[0] + "\n" + `{"To":"not an address"}` + "\n" + strings.Replace(lines[1], "batch-1", "batch-x", 1) + "\n"
	r = jetmail(t, testCtx(t), bad, "send", "--nats-url", url, "--batch", "-")
	if r.code != 1 || !strings.Contains(r.stderr, "line 2") || !strings.Contains(r.stderr, "To[0]") || !strings.Contains(r.stdout, "batch-x") {
		t.Errorf("exit %d, stdout %q, stderr %q; want 1, line 2's error and batch-x published", r.code, r.stdout, r.stderr)
	}
}

// TestWorkerEmbedded runs the worker without --nats-url, finds the
// embedded server from the log, and sends through it.
func TestWorkerEmbedded(t *testing.T) {
	t.Parallel()
	data, outbox := t.TempDir(), t.TempDir()
	w := startWorker(t, "--embedded-addr", "127.0.0.1:0", "--data-dir", data, "--outbox", outbox, "--http-addr", "127.0.0.1:0")
	var url string
	for line := range strings.Lines(w.logs.String()) {
		var rec struct{ Msg, URL, DataDir string }
		var raw map[string]any
		if json.Unmarshal([]byte(line), &raw) != nil {
			continue
		}
		rec.Msg, _ = raw["msg"].(string)
		rec.URL, _ = raw["url"].(string)
		rec.DataDir, _ = raw["data_dir"].(string)
		if strings.HasPrefix(rec.Msg, "embedded NATS server started") {
			url = rec.URL
			if rec.DataDir != data {
				t.Errorf("logged data_dir %q, want %q", rec.DataDir, data)
			}
		}
		if strings.Contains(rec.Msg, "no --smtp-url") {
			if raw["level"] != "WARN" || raw["outbox"] != outbox {
				t.Errorf("outbox warning = %s", line)
			}
		}
	}
	if url == "" {
		t.Fatalf("no embedded server URL in the log:\n%s", w.logs)
	}
	// The quick start of the root help: no --from with the outbox.
	r := jetmail(t, testCtx(t), "", "send", "--nats-url", url, "--to", "you@example.com", "--subject", "hi", "--body", "hello", "--wait")
	if r.code != 0 {
		t.Fatalf("send: exit %d", r.code)
	}
	id, _ := splitSendOutput(t, r.stdout)
	if m := readEML(t, outbox, id); m.Header.Get("Subject") != "hi" {
		t.Errorf("Subject = %q, want hi", m.Header.Get("Subject"))
	}
	if c := w.stop(); c != 0 {
		t.Fatalf("worker exited %d, want 0", c)
	}
	if !strings.Contains(w.logs.String(), "embedded NATS server stopped") {
		t.Errorf("the embedded server was not stopped:\n%s", w.logs)
	}
	if _, err := os.Stat(filepath.Join(data, "jetstream")); err != nil {
		t.Errorf("no JetStream data under --data-dir: %v", err)
	}
}

// TestWorkerSMTP delivers through an SMTP server that wants a password,
// given in a file, and checks that no password reaches the logs.
func TestWorkerSMTP(t *testing.T) {
	t.Parallel()
	_, url := startNATS(t)
	srv := smtptest.NewServer(t, smtptest.WithAuth("mailer", "pa55-from-file"))
	pwFile := filepath.Join(t.TempDir(), "pw")
	os.WriteFile(pwFile, []byte("pa55-from-file\n"), 0o600)
	w := startWorker(t, "--nats-url", url, "--http-addr", "127.0.0.1:0",
		"--smtp-url", "smtp://mailer:url-secret@"+srv.Addr()+"?tls=none", "--smtp-password-file", pwFile,
		"--smtp-from", "Default Sender <default@example.com>", "--smtp-allowed-senders", "default@example.com,@shop.example.com")

	r := jetmail(t, testCtx(t), "", "send", "--nats-url", url, "--to", "a@example.com", "--subject", "via smtp", "--wait")
	if r.code != 0 {
		t.Fatalf("send: exit %d", r.code)
	}
	if _, res := splitSendOutput(t, r.stdout); res.Smtp == nil || res.Smtp.Code != 250 {
		t.Errorf("result has no 250 reply: %+v", res)
	}
	msgs := srv.Messages()
	if len(msgs) != 1 || msgs[0].From != "default@example.com" || msgs[0].User != "mailer" {
		t.Fatalf("server got %+v, want one message from the default sender, authenticated", msgs)
	}

	// A sender that is not allowed: 403, exit 1.
	r = jetmail(t, testCtx(t), "", "send", "--nats-url", url, "--to", "a@example.com", "--from", "evil@example.org", "--wait")
	if _, res := splitSendOutput(t, r.stdout); r.code != 1 || res.Status != schema.Status403 {
		t.Errorf("exit %d, status %d; want 1 and 403", r.code, res.Status)
	}

	w.stop()
	if logs := w.logs.String(); strings.Contains(logs, "pa55") || strings.Contains(logs, "url-secret") {
		t.Errorf("a password reached the logs:\n%s", logs)
	}
}

// ---- errors and usage ----

func TestSendInvalidRequest(t *testing.T) {
	t.Parallel()
	// Validation comes before connecting, so nothing can be published even
	// if a server were there.
	r := jetmail(t, testCtx(t), "", "send", "--nats-url", deadURL(t), "--to", "not-an-address;b@example.com",
		"--from", "also bad", "--subject", "x")
	if r.code != 2 {
		t.Errorf("exit %d, want 2", r.code)
	}
	for _, want := range []string{"nothing was published", "To[0]: not a valid email address", "From: not a valid email address"} {
		if !strings.Contains(r.stderr, want) {
			t.Errorf("stderr lacks %q", want)
		}
	}
	if r.stdout != "" {
		t.Errorf("stdout = %q, want nothing", r.stdout)
	}

	r = jetmail(t, testCtx(t), `{"To": 42}`, "send", "--nats-url", deadURL(t), "--file", "-")
	if r.code != 2 || !strings.Contains(r.stderr, "To:") {
		t.Errorf("bad JSON file: exit %d, stderr %q; want 2 and the To field", r.code, r.stderr)
	}
}

func TestNoServer(t *testing.T) {
	t.Parallel()
	url := deadURL(t)
	for _, args := range [][]string{
		{"send", "--to", "a@example.com", "--nats-url", url},
		{"status", "some-id", "--nats-url", url},
		{"results", "--nats-url", url},
	} {
		r := jetmail(t, testCtx(t), "", args...)
		want := "cannot connect to NATS at " + url + ": is `jetmail worker` running?"
		if r.code != 2 || !strings.Contains(r.stderr, want) {
			t.Errorf("%s: exit %d, stderr %q; want 2 and %q", args[0], r.code, r.stderr, want)
		}
	}
}

func TestNoWorkerEverRan(t *testing.T) {
	t.Parallel()
	_, url := startNATS(t) // JetStream without jetmail's streams
	r := jetmail(t, testCtx(t), "", "send", "--nats-url", url, "--to", "a@example.com")
	if r.code != 2 || !strings.Contains(r.stderr, "is a worker running?") {
		t.Errorf("exit %d, stderr %q; want 2 and a hint", r.code, r.stderr)
	}
}

func TestUsageErrors(t *testing.T) {
	t.Parallel()
	file := filepath.Join(t.TempDir(), "r.json")
	os.WriteFile(file, []byte(`{"To":"a@example.com"}`), 0o600)
	for _, args := range [][]string{
		{"bogus"},
		{"send", "--bogus"},
		{"send", "extra-argument", "--to", "a@example.com"},
		{"send", "--file", file, "--to", "a@example.com"},
		{"send", "--file", file, "--batch", file},
		{"send", "--to", "a@example.com", "--header", "no colon"},
		{"send", "--to", "a@example.com", "--metadata", "novalue"},
		{"send", "--to", "a@example.com", "--inline", "file-without-cid"},
		{"send", "--to", "a@example.com", "--attach", filepath.Join(t.TempDir(), "missing")},
		{"status"},
		{"status", "a", "b"},
		{"status", "not/an/id"},
		{"worker", "--concurrency", "0"},
		{"worker", "--concurrency", "many"},
		{"worker", "--log-level", "loud"},
		{"worker", "--log-format", "xml"},
		{"worker", "--subject-prefix", "a.b"},
		{"worker", "--grace-period", "0s"},
		{"worker", "--smtp-password", "x", "--smtp-password-file", file},
		{"worker", "--smtp-url", "http://relay", "--nats-url", deadURL(t)},
	} {
		r := jetmail(t, testCtx(t), "", args...)
		if r.code != 2 || r.stderr == "" {
			t.Errorf("jetmail %s: exit %d, stderr %q; want 2 and a message", strings.Join(args, " "), r.code, r.stderr)
		}
	}
}

// ---- environment ----

// mapEnv is a fake environment.
func mapEnv(m map[string]string) func(string) (string, bool) {
	return func(k string) (string, bool) { v, ok := m[k]; return v, ok }
}

// commandFlags returns the parsed flags of one command of a fresh tree.
func commandFlags(t *testing.T, name string, args ...string) *pflag.FlagSet {
	t.Helper()
	root := newRootCmd(stdio{in: strings.NewReader(""), out: io.Discard, errOut: io.Discard}, mapEnv(nil))
	cmd, _, err := root.Find([]string{name})
	if err != nil {
		t.Fatal(err)
	}
	fs := cmd.Flags()
	if err := fs.Parse(args); err != nil {
		t.Fatal(err)
	}
	return fs
}

func TestEnvName(t *testing.T) {
	t.Parallel()
	for flag, want := range map[string]string{
		"nats-url": "JETMAIL_NATS_URL", "smtp-url": "JETMAIL_SMTP_URL", "subject-prefix": "JETMAIL_SUBJECT_PREFIX",
		"smtp-password": "JETMAIL_SMTP_PASSWORD", "to": "JETMAIL_TO", "retry-max-interval": "JETMAIL_RETRY_MAX_INTERVAL",
	} {
		if got := envName(flag); got != want {
			t.Errorf("envName(%q) = %q, want %q", flag, got, want)
		}
	}
}

func TestApplyEnv(t *testing.T) {
	t.Parallel()
	fs := commandFlags(t, "send", "--subject-prefix", "from-flag", "--to", "flag@example.com")
	env := mapEnv(map[string]string{
		"JETMAIL_SUBJECT_PREFIX": "from-env", // the flag wins
		"JETMAIL_NATS_URL":       "nats://env:4222",
		"JETMAIL_TO":             "env@example.com", // the flag wins
		"JETMAIL_WAIT":           "true",
		"JETMAIL_TIMEOUT":        "5s",
		"JETMAIL_HELP":           "true", // not a settable flag
	})
	set, err := applyEnv(fs, env)
	if err != nil {
		t.Fatal(err)
	}
	slices.Sort(set)
	if want := []string{"nats-url", "timeout", "wait"}; !slices.Equal(set, want) {
		t.Errorf("set from env %v, want %v", set, want)
	}
	for name, want := range map[string]string{
		"subject-prefix": "from-flag", "nats-url": "nats://env:4222", "to": "[flag@example.com]",
		"wait": "true", "timeout": "5s", "from": "",
	} {
		if got := flagValue(fs, name); got != want {
			t.Errorf("--%s = %q, want %q", name, got, want)
		}
	}
	if !fromEnv(fs.Lookup("nats-url")) || fromEnv(fs.Lookup("subject-prefix")) {
		t.Error("fromEnv does not tell env values from flags")
	}

	fs = commandFlags(t, "worker")
	_, err = applyEnv(fs, mapEnv(map[string]string{"JETMAIL_CONCURRENCY": "lots", "JETMAIL_SUBJECT_PREFIX": "tenant1"}))
	if err == nil || !strings.Contains(err.Error(), "JETMAIL_CONCURRENCY") {
		t.Errorf("bad env value: err = %v, want one naming JETMAIL_CONCURRENCY", err)
	}
	if got := flagValue(fs, "subject-prefix"); got != "tenant1" {
		t.Errorf("worker --subject-prefix = %q, want tenant1 from the env", got)
	}
}

func flagValue(fs *pflag.FlagSet, name string) string { return fs.Lookup(name).Value.String() }

func TestSMTPPasswordSources(t *testing.T) {
	t.Parallel()
	file := filepath.Join(t.TempDir(), "pw")
	os.WriteFile(file, []byte("  from-file\n"), 0o600)
	for _, tc := range []struct {
		name string
		args []string
		env  map[string]string
		want string
		err  bool
	}{
		{"flag", []string{"--smtp-password", "from-flag"}, nil, "from-flag", false},
		{"env", nil, map[string]string{"JETMAIL_SMTP_PASSWORD": "from-env"}, "from-env", false},
		{"file", []string{"--smtp-password-file", file}, nil, "from-file", false},
		{"file flag beats password env", []string{"--smtp-password-file", file}, map[string]string{"JETMAIL_SMTP_PASSWORD": "from-env"}, "from-file", false},
		{"password flag beats file env", []string{"--smtp-password", "from-flag"}, map[string]string{"JETMAIL_SMTP_PASSWORD_FILE": file}, "from-flag", false},
		{"both flags", []string{"--smtp-password", "x", "--smtp-password-file", file}, nil, "", true},
		{"both env", nil, map[string]string{"JETMAIL_SMTP_PASSWORD": "x", "JETMAIL_SMTP_PASSWORD_FILE": file}, "", true},
		{"missing file", []string{"--smtp-password-file", file + ".missing"}, nil, "", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cmd, _ := workerCommand(stdio{})
			if err := cmd.Flags().Parse(tc.args); err != nil {
				t.Fatal(err)
			}
			if _, err := applyEnv(cmd.Flags(), mapEnv(tc.env)); err != nil {
				t.Fatal(err)
			}
			got, err := secretFlag(cmd.Flags(), "smtp-password", "smtp-password-file")
			if (err != nil) != tc.err || got != tc.want {
				t.Errorf("password = %q, %v; want %q, error %v", got, err, tc.want, tc.err)
			}
		})
	}
}

// TestEnvThroughRun sets real environment variables, so it can not run in
// parallel.
func TestEnvThroughRun(t *testing.T) {
	envURL, flagURL := deadURL(t), deadURL(t)
	t.Setenv("JETMAIL_NATS_URL", envURL)
	r := jetmail(t, testCtx(t), "", "status", "some-id")
	if r.code != 2 || !strings.Contains(r.stderr, envURL) {
		t.Errorf("JETMAIL_NATS_URL not used: exit %d, stderr %q", r.code, r.stderr)
	}
	r = jetmail(t, testCtx(t), "", "status", "some-id", "--nats-url", flagURL)
	if r.code != 2 || !strings.Contains(r.stderr, flagURL) {
		t.Errorf("--nats-url does not beat JETMAIL_NATS_URL: stderr %q", r.stderr)
	}
	t.Setenv("JETMAIL_SUBJECT_PREFIX", "not.one.token")
	r = jetmail(t, testCtx(t), "", "status", "some-id")
	if r.code != 2 || !strings.Contains(r.stderr, `"not.one.token"`) {
		t.Errorf("JETMAIL_SUBJECT_PREFIX not used: exit %d, stderr %q", r.code, r.stderr)
	}
}

// ---- help ----

func TestHelp(t *testing.T) {
	t.Parallel()
	r := jetmail(t, testCtx(t), "", "worker", "--help")
	if r.code != 0 {
		t.Fatalf("exit %d", r.code)
	}
	contract := []string{"nats-url", "smtp-url", "outbox", "http-addr", "concurrency", "retry-initial",
		"retry-multiplier", "retry-max-interval", "max-attempts", "max-age", "grace-period", "subject-prefix", "replicas"}
	for _, flag := range contract {
		if !strings.Contains(r.stdout, "--"+flag+" ") || !strings.Contains(r.stdout, "[$"+envName(flag)+"]") {
			t.Errorf("worker --help lacks --%s or $%s", flag, envName(flag))
		}
	}
	// Each flag's own help line shows its contract default.
	lines := strings.Split(r.stdout, "\n")
	for flag, def := range map[string]string{
		"http-addr": `(default ":8080")`, "concurrency": "(default 64)", "retry-initial": "(default 30s)",
		"retry-multiplier": "(default 2)", "retry-max-interval": "(default 30m0s)", "max-attempts": "(default 12)",
		"max-age": "(default 48h0m0s)", "grace-period": "(default 30s)", "subject-prefix": `(default "mail")`,
		"outbox": `(default "./outbox")`, "replicas": "(default 1)",
	} {
		i := slices.IndexFunc(lines, func(l string) bool { return strings.HasPrefix(strings.TrimSpace(l), "--"+flag+" ") })
		if i < 0 || !strings.Contains(lines[i], def) {
			t.Errorf("worker --help: the line of --%s lacks the contract default %s", flag, def)
		}
	}

	r = jetmail(t, testCtx(t), "", "--help")
	for _, want := range []string{"go run ./cmd/jetmail worker", "go run ./cmd/jetmail send --to you@example.com --subject hi --body hello --wait", "JETMAIL_NATS_URL"} {
		if !strings.Contains(r.stdout, want) {
			t.Errorf("jetmail --help lacks %q", want)
		}
	}

	var walk func(c *cobra.Command)
	walk = func(c *cobra.Command) {
		if c.Short == "" || c.Long == "" || c.Example == "" {
			t.Errorf("%s lacks Short, Long or Example", c.CommandPath())
		}
		for _, sub := range c.Commands() {
			if sub.Name() != "help" {
				walk(sub)
			}
		}
	}
	walk(newRootCmd(stdio{}, mapEnv(nil)))
}

// ---- process level ----

// TestWorkerProcessSIGTERM runs the jetmail binary as a worker, sends it
// SIGTERM while deliveries are in flight, and checks that it exits 0
// within the grace period and that no message is lost: every one is
// delivered exactly once, by it or by the worker started after it.
func TestWorkerProcessSIGTERM(t *testing.T) {
	t.Parallel()
	_, url := startNATS(t)
	srv := smtptest.NewServer(t)
	srv.AddFault(smtptest.Fault{Cmd: "DATA", Delay: 300 * time.Millisecond}) // slow deliveries

	const n = 50
	const grace = 10 * time.Second
	logs := newWatchBuffer()
	cmd := exec.Command(binary, "worker", "--nats-url", url, "--smtp-url", srv.URL(),
		"--smtp-from", "sender@example.com", "--concurrency", "8", "--smtp-pool-size", "8",
		"--grace-period", grace.String(), "--http-addr", "127.0.0.1:0", "--log-format", "json")
	cmd.Stderr = logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	t.Cleanup(func() {
		if cmd.ProcessState == nil {
			cmd.Process.Kill()
			<-exited
		}
	})
	ctx := testCtx(t)
	if err := logs.waitFor(ctx, `"msg":"worker started"`); err != nil {
		t.Fatalf("%v\n%s", err, logs)
	}

	nc, err := nats.Connect(url)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	accepted := make(chan string, n)
	sub, err := nc.Subscribe("mail.result.*", func(m *nats.Msg) {
		var res schema.Result
		if json.Unmarshal(m.Data, &res) == nil && res.State == schema.StateAccepted {
			accepted <- res.Id
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Unsubscribe()
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	js, _ := jetstream.New(nc)
	p, err := producer.New(js)
	if err != nil {
		t.Fatal(err)
	}
	ids := make([]string, n)
	for i := range n {
		ids[i] = fmt.Sprintf("sigterm-%02d", i)
		if _, _, err := p.Publish(ctx, &schema.Request{Id: ids[i], To: schema.AddressList{"rcpt@example.com"}, Subject: ids[i]}); err != nil {
			t.Fatal(err)
		}
	}
	select { // a delivery is in flight
	case <-accepted:
	case <-ctx.Done():
		t.Fatalf("no delivery started\n%s", logs)
	}

	start := time.Now()
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-exited:
		if err != nil {
			t.Fatalf("worker exited with %v after SIGTERM, want status 0\n%s", err, logs)
		}
	case <-time.After(grace + 5*time.Second):
		t.Fatalf("worker still running %s after SIGTERM\n%s", grace+5*time.Second, logs)
	}
	if d := time.Since(start); d > grace {
		t.Errorf("worker took %s to stop, more than the grace period %s", d, grace)
	}
	if l := logs.String(); !strings.Contains(l, `"msg":"worker stopped"`) || strings.Contains(l, "grace period over") {
		t.Errorf("worker did not stop cleanly within the grace period:\n%s", l)
	}
	if srv.FaultHits() == 0 {
		t.Fatal("the slow-DATA fault never fired: nothing was in flight")
	}

	// Whatever the stopped worker started, it finished.
	finished := 0
	for _, id := range ids {
		res, err := p.Status(ctx, id)
		switch {
		case errors.Is(err, producer.ErrNotFound):
		case err != nil:
			t.Fatal(err)
		case !res.Final():
			t.Errorf("%s left %s by the stopped worker", id, res.State)
		default:
			finished++
		}
	}
	if finished == n {
		t.Fatalf("all %d messages were done before SIGTERM: the test proves nothing", n)
	}
	t.Logf("%d of %d messages delivered before the worker stopped", finished, n)

	// A new worker delivers the rest; nothing was lost or sent twice.
	srv.ClearFaults()
	startWorker(t, "--nats-url", url, "--smtp-url", srv.URL(), "--smtp-from", "sender@example.com", "--http-addr", "127.0.0.1:0")
	for _, id := range ids {
		res, err := p.Wait(ctx, id)
		if err != nil {
			t.Fatalf("%s: %v", id, err)
		}
		if res.Status != schema.Status200 {
			t.Errorf("%s: status %d, want 200", id, res.Status)
		}
	}
	seen := map[string]int{}
	for _, m := range srv.Messages() {
		msg, err := mail.ReadMessage(bytes.NewReader(m.Data))
		if err != nil {
			t.Fatal(err)
		}
		seen[msg.Header.Get("Subject")]++
	}
	for _, id := range ids {
		if seen[id] != 1 {
			t.Errorf("%s delivered %d times, want once", id, seen[id])
		}
	}
}

// httpAddr is the address the worker's HTTP server listens on, from its
// "serving http" log line.
func (w *testWorker) httpAddr(t *testing.T) string {
	t.Helper()
	for line := range strings.Lines(w.logs.String()) {
		var rec map[string]any
		if json.Unmarshal([]byte(line), &rec) == nil && rec["msg"] == "serving http" {
			if addr, _ := rec["addr"].(string); addr != "" {
				return addr
			}
		}
	}
	t.Fatalf("no http address in the logs:\n%s", w.logs)
	return ""
}
