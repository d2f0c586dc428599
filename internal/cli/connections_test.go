package cli

import (
	"bytes"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/jetmail/jetmail/schema"
	"github.com/jetmail/jetmail/worker/smtptest"
)

// TestConnectionsFile runs a worker with two named connections from a
// YAML file, against two SMTP servers, and checks routing, the default and
// allowed senders, the password file and the request limit flags.
func TestConnectionsFile(t *testing.T) {
	t.Parallel()
	_, url := startNATS(t)
	relay := smtptest.NewServer(t, smtptest.WithAuth("mailer", "relay-pa55-from-file"))
	bulk := smtptest.NewServer(t)
	dir := t.TempDir()
	// A relative password_file is relative to the connections file.
	if err := os.WriteFile(filepath.Join(dir, "relay-password"), []byte("relay-pa55-from-file\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	conf := writeFileIn(t, dir, "connections.yaml", fmt.Sprintf(`connections:
  default:
    url: smtp://mailer@%s?tls=none
    password_file: relay-password
    pool_size: 2
    rate_limit: 1000
    from: "Shop <noreply@example.com>"
    allowed_senders: ["@example.com"]
  marketing:
    url: %s
    from: news@bulk.example.org
`, relay.Addr(), bulk.URL()))
	tmpl := t.TempDir()
	writeFileIn(t, tmpl, "welcome.subject.tmpl", "Welcome, {{.Name}}")
	writeFileIn(t, tmpl, "welcome.text.tmpl", "Hello {{.Name}}!")
	w := startWorker(t, "--nats-url", url, "--http-addr", "127.0.0.1:0", "--connections", conf,
		"--templates", tmpl, "--max-recipients", "2")
	send := func(stdin string, args ...string) (runResult, *schema.Result) {
		t.Helper()
		r := jetmail(t, testCtx(t), stdin, append([]string{"send", "--nats-url", url, "--wait"}, args...)...)
		_, res := splitSendOutput(t, r.stdout)
		return r, res
	}

	// No Connection: the default, its sender, AUTH with the file's password.
	if r, res := send("", "--to", "a@example.com", "--subject", "order"); r.code != 0 || res.Status != schema.Status200 {
		t.Fatalf("default connection: exit %d, %+v", r.code, res)
	}
	if m := relay.Messages(); len(m) != 1 || m[0].From != "noreply@example.com" || m[0].User != "mailer" {
		t.Errorf("relay got %+v, want one message from noreply@example.com, authenticated as mailer", m)
	}
	// "marketing" goes to the second server, with its own default sender.
	if r, res := send("", "--to", "b@example.com", "--subject", "news", "--connection", "marketing"); r.code != 0 || res.Status != schema.Status200 {
		t.Fatalf("marketing: exit %d, %+v", r.code, res)
	}
	if m := bulk.Messages(); len(m) != 1 || m[0].From != "news@bulk.example.org" || m[0].To[0] != "b@example.com" {
		t.Errorf("bulk got %+v, want the marketing message", m)
	}
	// Unknown connection: 400.
	if r, res := send("", "--to", "a@example.com", "--connection", "nope"); r.code != 1 || res.Status != schema.Status400 || !strings.Contains(res.Error, `unknown connection "nope"`) {
		t.Errorf("unknown connection: exit %d, %+v; want 1 and 400", r.code, res)
	}
	// allowed_senders of default: 403; marketing allows anyone.
	if r, res := send("", "--to", "a@example.com", "--from", "evil@example.org"); r.code != 1 || res.Status != schema.Status403 {
		t.Errorf("sender not allowed: exit %d, %+v; want 1 and 403", r.code, res)
	}
	if r, res := send("", "--to", "a@example.com", "--from", "evil@example.org", "--connection", "marketing"); r.code != 0 || res.Status != schema.Status200 {
		t.Errorf("marketing with any sender: exit %d, %+v; want 0 and 200", r.code, res)
	}
	// --max-recipients 2: the client checks the contract's limits only,
	// the worker its own.
	if r, res := send("", "--to", "a@example.com;b@example.com;c@example.com"); r.code != 1 || res.Status != schema.Status400 {
		t.Errorf("3 recipients with --max-recipients 2: exit %d, %+v; want 1 and 400", r.code, res)
	}
	// --templates.
	r, res := send(`{"To":"a@example.com","Template":"welcome","TemplateData":{"Name":"Ala"}}`, "--file", "-")
	if r.code != 0 || res.Status != schema.Status200 {
		t.Fatalf("template: exit %d, %+v", r.code, res)
	}
	if m := relay.Messages(); len(m) != 2 || !bytes.Contains(m[1].Data, []byte("Subject: Welcome, Ala")) {
		t.Errorf("the template was not rendered: %+v", m)
	}
	w.stop()
	if logs := w.logs.String(); strings.Contains(logs, "relay-pa55-from-file") {
		t.Errorf("the password reached the logs:\n%s", logs)
	}
}

// writeFileIn writes dir/name and returns its path.
func writeFileIn(t *testing.T, dir, name, content string) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// TestConnectionsFileErrors checks that a bad file stops the worker at once
// with exit status 2 and the line of the mistake.
func TestConnectionsFileErrors(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	writeFileIn(t, dir, "empty-password", "\n")
	for _, tc := range []struct {
		name, yaml, want string
	}{
		{"unknown key", "connections:\n  default:\n    url: smtp://h:25\n    passwrod_file: x\n",
			`:4: field passwrod_file is not a connection setting (known: url, password_file, password_env, password, ca_file, pool_size, rate_limit, from, allowed_senders, helo, timeout, on_uncertain, dkim)`},
		{"unknown top-level key", "connections:\n  default:\n    url: smtp://h:25\nsmtp:\n  x: 1\n", ":4: field smtp is not known"},
		{"syntax", "connections:\n  default:\n    url: smtp://h:25\n    from: a: b\n", ":4: mapping values are not allowed in this context"},
		{"wrong type", "connections:\n  default:\n    url: smtp://h:25\n    pool_size: many\n", ":4: cannot unmarshal !!str `many` into int"},
		{"duplicate", "connections:\n  a:\n    url: smtp://h:25\n  a:\n    url: smtp://h:26\n", `:4: mapping key "a" already defined at line 2`},
		{"no url", "connections:\n  default:\n    url: smtp://h:25\n  other:\n    from: a@example.com\n", `:4: connection "other": url is missing`},
		{"bad url", "connections:\n  default:\n    url: http://h:25\n", `:2: connection "default": smtp url: scheme must be smtp or smtps`},
		{"two password sources", "connections:\n  default:\n    url: smtp://u@h:25\n    password: a\n    password_env: B\n", `:2: connection "default": set only one of password_file, password_env and password`},
		{"missing password_env", "connections:\n  default:\n    url: smtp://u@h:25\n    password_env: JM_TEST_SURELY_UNSET\n", "the environment variable JM_TEST_SURELY_UNSET is not set"},
		{"missing password_file", "connections:\n  default:\n    url: smtp://u@h:25\n    password_file: nowhere\n", `:2: connection "default": password_file: open ` + filepath.Join(dir, "nowhere")},
		{"empty password_file", "connections:\n  default:\n    url: smtp://u@h:25\n    password_file: empty-password\n", "is empty"},
		{"password without user", "connections:\n  default:\n    url: smtp://h:25\n    password: secret-pw\n", "names no user"},
		{"bad name", "connections:\n  a.b:\n    url: smtp://h:25\n", `:2: connection "a.b": not a valid connection name`},
		{"negative rate", "connections:\n  default:\n    url: smtp://h:25\n    rate_limit: -1\n", "rate_limit must not be negative"},
		{"no connections", "connections: {}\n", "no connections in it"},
		{"empty", "", "the file is empty"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			path := writeFileIn(t, dir, strings.ReplaceAll(tc.name, " ", "-")+".yaml", tc.yaml)
			r := jetmail(t, testCtx(t), "", "worker", "--connections", path, "--nats-url", deadURL(t))
			if r.code != 2 || !strings.Contains(r.stderr, "--connections "+path) || !strings.Contains(r.stderr, tc.want) {
				t.Errorf("exit %d, stderr %q; want 2 and %q", r.code, r.stderr, tc.want)
			}
			if strings.Contains(r.stderr, "secret-pw") {
				t.Errorf("the password is in the message: %q", r.stderr)
			}
		})
	}
	r := jetmail(t, testCtx(t), "", "worker", "--connections", filepath.Join(dir, "missing.yaml"), "--nats-url", deadURL(t))
	if r.code != 2 || !strings.Contains(r.stderr, "--connections: open") {
		t.Errorf("missing file: exit %d, stderr %q", r.code, r.stderr)
	}
}

// TestConnectionsMerge checks how the file and the --smtp-* flags combine.
func TestConnectionsMerge(t *testing.T) {
	t.Parallel()
	const envVar = "JM_TEST_BULK_PASSWORD_MERGE"
	os.Setenv(envVar, "bulk-secret")
	t.Cleanup(func() { os.Unsetenv(envVar) })
	dir := t.TempDir()
	pw := writeFileIn(t, dir, "pw", "flag-file-password")
	file := writeFileIn(t, dir, "c.yaml", `connections:
  default:
    url: smtp://mailer@relay.example.com:587
    password: in-file
    pool_size: 8
    rate_limit: 50
    from: noreply@example.com
    allowed_senders: ["@example.com"]
  marketing:
    url: smtps://bulk@bulk.example.com
    password_env: `+envVar+`
    rate_limit: 10
`)
	config := func(args ...string) (map[string]any, string, error) {
		t.Helper()
		cmd, f := workerCommand(stdio{})
		if err := cmd.Flags().Parse(args); err != nil {
			t.Fatal(err)
		}
		var logs bytes.Buffer
		cfg, err := f.config(cmd.Flags(), slog.New(slog.NewTextHandler(&logs, nil)))
		out := map[string]any{}
		for name, c := range cfg.Connections {
			out[name+".url"] = c.URL
			out[name+".password"] = c.Password
			out[name+".pool"] = c.PoolSize
			out[name+".rate"] = c.RateLimit
			out[name+".from"] = c.From
			out[name+".allowed"] = strings.Join(c.AllowedSenders, ",")
		}
		out["limits.recipients"] = cfg.Limits.MaxRecipients
		out["limits.request"] = cfg.Limits.MaxRequestBytes
		return out, logs.String(), err
	}

	got, logs, err := config("--connections", file)
	if err != nil {
		t.Fatal(err)
	}
	for k, want := range map[string]any{
		"default.url": "smtp://mailer@relay.example.com:587", "default.password": "in-file", "default.pool": 8,
		"default.rate": 50.0, "default.from": "noreply@example.com", "default.allowed": "@example.com",
		"marketing.password": "bulk-secret", "marketing.rate": 10.0, "marketing.pool": 0,
		"limits.recipients": schema.DefaultLimits().MaxRecipients, "limits.request": schema.DefaultLimits().MaxRequestBytes,
	} {
		if got[k] != want {
			t.Errorf("file only: %s = %v, want %v", k, got[k], want)
		}
	}
	if !strings.Contains(logs, "a password is written in the connections file") || strings.Contains(logs, "in-file") {
		t.Errorf("want a warning about the password in the file, without it:\n%s", logs)
	}

	// Flags given override the file's default; the others keep its values.
	got, _, err = config("--connections", file, "--smtp-url", "smtp://other@relay2.example.com:25",
		"--smtp-password-file", pw, "--smtp-rate-limit", "5", "--smtp-from", "shop@example.com", "--max-recipients", "7")
	if err != nil {
		t.Fatal(err)
	}
	for k, want := range map[string]any{
		"default.url": "smtp://other@relay2.example.com:25", "default.password": "flag-file-password", "default.pool": 8,
		"default.rate": 5.0, "default.from": "shop@example.com", "default.allowed": "@example.com",
		"marketing.url": "smtps://bulk@bulk.example.com", "limits.recipients": 7,
	} {
		if got[k] != want {
			t.Errorf("with flags: %s = %v, want %v", k, got[k], want)
		}
	}

	// Without a file, the flags make the default connection as before,
	// now with a rate limit.
	got, _, err = config("--smtp-url", "smtp://relay.example.com:25", "--smtp-rate-limit", "3")
	if err != nil || got["default.rate"] != 3.0 || got["default.pool"] != 4 {
		t.Errorf("flags only: %v, %v", got, err)
	}

	for _, args := range [][]string{
		{"--connections", file, "--smtp-connection", "marketing=smtp://x:25"},
		{"--smtp-rate-limit", "-1"},
		{"--max-headers", "0"},
		{"--max-header-length", "-5"},
		{"--templates", pw},
		{"--templates", filepath.Join(dir, "missing")},
	} {
		if _, _, err := config(args...); err == nil {
			t.Errorf("config %v: no error", args)
		} else if code := exitCode(err); code != exitUsage {
			t.Errorf("config %v: exit code %d, want 2 (%v)", args, code, err)
		}
	}
	// -1 is no limit.
	if got, _, err := config("--max-request-bytes", "-1"); err != nil || got["limits.request"] != -1 {
		t.Errorf("--max-request-bytes -1: %v, %v", got["limits.request"], err)
	}
}

func exitCode(err error) int {
	var ee *exitError
	if errors.As(err, &ee) {
		return ee.code
	}
	return exitFailed
}
