package cli

import (
	"encoding/base64"
	"encoding/json"
	"io"
	"net/http"
	"net/url"
	"strings"
	"testing"

	"github.com/nats-io/nats-server/v2/server"

	"github.com/jetmail/jetmail/schema"
	"github.com/jetmail/jetmail/worker/smtptest"
)

// TestSecretsNeverLeak runs a worker whose SMTP passwords are wrong (so
// AUTH fails, is retried and ends in failures and dead letters) with a
// NATS user and password and debug logging, and looks for the secrets in
// everything jetmail shows: the worker's logs, the client commands' output,
// the result events, the dead letters and the metrics. Neither a password
// nor its URL-escaped or base64 forms (AUTH PLAIN sends
// base64("\x00user\x00password")) may appear.
func TestSecretsNeverLeak(t *testing.T) {
	t.Parallel()
	const (
		natsUser      = "jetmail-worker"
		natsPassword  = "nats+Pa55/w0rd&=x"
		smtpUser      = "mailer"
		smtpPassword  = "smtp Wr0ng/pa55+w0rd="
		urlPassword   = "in-the-URL:pa55@word"
		rightPassword = "the-right-one"
	)
	natsURL := startSecureNATS(t, func(o *server.Options) { o.Username, o.Password = natsUser, natsPassword })
	srv := smtptest.NewServer(t, smtptest.WithAuth(smtpUser, rightPassword))
	open := smtptest.NewServer(t) // a delivery that works logs at debug level
	natsPwFile := writeFile(t, "nats-password", natsPassword+"\n")
	smtpPwFile := writeFile(t, "smtp-password", smtpPassword+"\n")
	withURLPassword := (&url.URL{Scheme: "smtp", User: url.UserPassword(smtpUser, urlPassword), Host: srv.Addr(), RawQuery: "tls=none"}).String()

	w := startWorker(t, "--nats-url", natsURL, "--nats-user", natsUser, "--nats-password-file", natsPwFile,
		"--smtp-url", "smtp://"+smtpUser+"@"+srv.Addr()+"?tls=none", "--smtp-password-file", smtpPwFile,
		"--smtp-connection", "other="+withURLPassword, "--smtp-connection", "open="+open.URL(), "--smtp-from", "sender@example.com",
		"--max-attempts", "2", "--retry-initial", "10ms", "--retry-max-interval", "20ms",
		"--log-level", "debug", "--http-addr", "127.0.0.1:0")
	client := []string{"--nats-url", natsURL, "--nats-user", natsUser, "--nats-password-file", natsPwFile}
	var seen strings.Builder
	show := func(r runResult) runResult {
		seen.WriteString(r.stdout + "\n" + r.stderr + "\n")
		return r
	}

	var ids []string
	for _, conn := range []string{"default", "other"} {
		r := show(jetmail(t, testCtx(t), "", append([]string{"send", "--to", "a@example.com", "--subject", "secrets", "--connection", conn, "--wait"}, client...)...))
		id, res := splitSendOutput(t, r.stdout)
		if r.code != 1 || res.Status != schema.Status401 {
			t.Fatalf("%s: exit %d, status %d; want 1 and 401 (authentication failed, retries exhausted)", conn, r.code, res.Status)
		}
		ids = append(ids, id)
	}
	if r := show(jetmail(t, testCtx(t), "", append([]string{"send", "--to", "a@example.com", "--connection", "open", "--wait"}, client...)...)); r.code != 0 {
		t.Errorf("open connection: exit %d, want 0", r.code)
	}
	if srv.Hits("AUTH") < 4 {
		t.Fatalf("AUTH was tried %d times, want 2 attempts × 2 connections", srv.Hits("AUTH"))
	}
	r := show(jetmail(t, testCtx(t), "", append([]string{"results"}, client...)...))
	if strings.Count(r.stdout, `"State":"deferred"`) != 2 || strings.Count(r.stdout, `"State":"failed"`) != 2 {
		t.Errorf("results: want 2 deferred and 2 failed events:\n%s", r.stdout)
	}
	r = show(jetmail(t, testCtx(t), "", append([]string{"dead", "list", "--json"}, client...)...))
	if strings.Count(r.stdout, "\n") != 2 {
		t.Errorf("dead list --json: want 2 dead letters:\n%s", r.stdout)
	}
	show(jetmail(t, testCtx(t), "", append([]string{"dead", "list"}, client...)...))
	show(jetmail(t, testCtx(t), "", append([]string{"status", ids[0]}, client...)...))
	// A client with the wrong NATS password, and the worker's own.
	if r := show(jetmail(t, testCtx(t), "", "status", ids[0], "--nats-url", natsURL, "--nats-user", natsUser, "--nats-password", smtpPassword)); r.code != 2 {
		t.Errorf("wrong NATS password: exit %d, want 2", r.code)
	}

	// The metrics.
	var addr string
	for line := range strings.Lines(w.logs.String()) {
		var rec map[string]any
		if json.Unmarshal([]byte(line), &rec) == nil && rec["msg"] == "serving http" {
			addr, _ = rec["addr"].(string)
		}
	}
	if addr == "" {
		t.Fatalf("no http address in the logs:\n%s", w.logs)
	}
	resp, err := http.Get("http://" + addr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	metrics, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil || !strings.Contains(string(metrics), `jetmail_smtp_attempts_total{connection="other",outcome="transient"} 2`) {
		t.Errorf("metrics lack the failed attempts (%v):\n%s", err, metrics)
	}
	seen.Write(metrics)

	w.stop()
	logs := w.logs.String()
	if !strings.Contains(logs, `"level":"DEBUG"`) || !strings.Contains(logs, `"msg":"delivery failed"`) {
		t.Errorf("the worker did not log at debug level, or no failure:\n%s", logs)
	}
	seen.WriteString(logs)

	all := seen.String()
	for _, secret := range []string{natsPassword, smtpPassword, urlPassword} {
		forms := map[string]string{
			"plain":       secret,
			"query-esc":   url.QueryEscape(secret),
			"path-esc":    url.PathEscape(secret),
			"userinfo":    url.UserPassword("u", secret).String()[2:],
			"base64":      base64.StdEncoding.EncodeToString([]byte(secret)),
			"base64-raw":  base64.RawStdEncoding.EncodeToString([]byte(secret)),
			"base64-url":  base64.URLEncoding.EncodeToString([]byte(secret)),
			"AUTH PLAIN":  base64.StdEncoding.EncodeToString([]byte("\x00" + smtpUser + "\x00" + secret)),
			"AUTH PLAIN2": base64.StdEncoding.EncodeToString([]byte(smtpUser + "\x00" + smtpUser + "\x00" + secret)),
			"json":        strings.Trim(mustJSON(secret), `"`),
		}
		for name, form := range forms {
			if strings.Contains(all, form) {
				i := strings.Index(all, form)
				t.Errorf("secret %q appears (%s form %q) in:\n…%s…", secret, name, form, all[max(0, i-200):min(len(all), i+len(form)+100)])
			}
		}
	}
}

func mustJSON(v any) string {
	b, _ := json.Marshal(v)
	return string(b)
}
