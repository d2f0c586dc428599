package webhook

import (
	"bytes"
	"encoding/base64"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/jetmail/jetmail/schema"
)

func TestParseSecret(t *testing.T) {
	t.Parallel()
	key24 := []byte("twenty-four bytes of key")
	std := base64.StdEncoding.EncodeToString(key24)
	key32 := bytes.Repeat([]byte{0xfb}, 32) // encodes with '+' and '/'
	std32 := base64.StdEncoding.EncodeToString(key32)
	raw := base64.RawStdEncoding.EncodeToString(key32[:25])
	cases := []struct {
		in      string
		want    []byte
		wantErr string
	}{
		{"whsec_" + std, key24, ""},
		{std, key24, ""},
		{"  whsec_" + std + "\n", key24, ""},
		{"whsec_" + std32, key32, ""},
		{"whsec_" + raw, key32[:25], ""},
		{"", nil, "empty"},
		{"whsec_", nil, "empty"},
		{"whsec_" + base64.URLEncoding.EncodeToString(key32), nil, "standard base64"},
		{"whsec_not base64!", nil, "standard base64"},
		{"whsec_" + base64.StdEncoding.EncodeToString([]byte("short key")), nil, "9 bytes, want at least 24"},
	}
	for _, tc := range cases {
		got, err := ParseSecret(tc.in)
		if tc.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Errorf("ParseSecret(%q) = %v, want an error with %q", tc.in, err, tc.wantErr)
			}
			if err != nil && len(tc.in) > 8 && strings.Contains(err.Error(), strings.TrimSpace(tc.in)[6:]) {
				t.Errorf("ParseSecret(%q): the error %q shows the secret", tc.in, err)
			}
			continue
		}
		if err != nil || !bytes.Equal(got, tc.want) {
			t.Errorf("ParseSecret(%q) = %x, %v; want %x", tc.in, got, err, tc.want)
		}
	}
}

// writeFiles writes files (name → content) into a new folder.
func writeFiles(t *testing.T, files map[string]string) string {
	t.Helper()
	dir := t.TempDir()
	for name, content := range files {
		p := filepath.Join(dir, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

var testKey = []byte("a test key of 24+ bytes!")

func testSecret() string { return "whsec_" + base64.StdEncoding.EncodeToString(testKey) + "\n" }

func TestLoadFile(t *testing.T) {
	t.Parallel()
	dir := writeFiles(t, map[string]string{
		"conf/webhooks.yaml": `# the contract's example, and one more
webhooks:
  crm:
    url: https://crm.example.com/hooks/mail
    secret_file: secrets/crm      # relative to this file's folder
    states: [sent, failed, sent]
  all-events_2:
    url: http://10.0.0.7:8080/in
    secret_file: ` + "ABS" + `
  future:
    url: https://x.example/
    secret_file: secrets/crm
    states:
      - scheduled
      - cancelled
`,
		"conf/secrets/crm": testSecret(),
		"abs-secret":       testSecret(),
	})
	path := filepath.Join(dir, "conf/webhooks.yaml")
	data, _ := os.ReadFile(path)
	_ = os.WriteFile(path, bytes.ReplaceAll(data, []byte("ABS"), []byte(filepath.Join(dir, "abs-secret"))), 0o600)

	got, err := LoadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	want := []Config{
		{Name: "all-events_2", URL: "http://10.0.0.7:8080/in", Secret: testKey},
		{Name: "crm", URL: "https://crm.example.com/hooks/mail", Secret: testKey, States: []schema.State{schema.StateSent, schema.StateFailed}},
		{Name: "future", URL: "https://x.example/", Secret: testKey, States: []schema.State{"scheduled", "cancelled"}},
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Fatalf("LoadFile (-want +got):\n%s", diff)
	}
}

func TestLoadFileErrors(t *testing.T) {
	t.Parallel()
	cases := []struct {
		name string
		yaml string
		want []string // each a line of the error, after "PATH"
	}{
		{"unknown setting", `webhooks:
  crm:
    url: https://crm.example.com/
    secret_file: s
    retries: 3
`, []string{`:5: field retries is not a webhook setting (known: url, secret_file, states)`}},
		{"unknown top key", `webhook:
  crm: {url: https://x.example/, secret_file: s}
`, []string{`:1: field webhook is not known; the file has one key, webhooks`}},
		{"bad state, with its line", `webhooks:
  crm:
    url: https://crm.example.com/
    secret_file: s
    states:
      - sent
      - bounced
`, []string{`:7: webhook "crm": state "bounced" is not known (known: accepted, deferred, sent, failed, scheduled, cancelled)`}},
		{"bad name", `webhooks:
  crm.prod:
    url: https://crm.example.com/
    secret_file: s
`, []string{`:2: webhook "crm.prod": not a valid name: use 1 to 64 letters, digits, '-' and '_' (it names the JetStream consumer jetmail-webhook-NAME)`}},
		{"every problem at once", `webhooks:
  a:
    secret_file: s
  b:
    url: ftp://files.example.com/
    secret_file: missing
  c:
  d:
    url: https://d.example/
    secret_file: short
`, []string{
			`:2: webhook "a": url is missing`,
			`:5: webhook "b": url ftp://files.example.com/: want http://HOST/… or https://HOST/…`,
			`:6: webhook "b": secret_file: open DIR/missing: no such file or directory`,
			`:7: webhook "c": no settings; want url and secret_file`,
			`:10: webhook "d": secret_file: DIR/short: secret is 5 bytes, want at least 24`,
		}},
		{"no secret_file", `webhooks:
  crm:
    url: https://crm.example.com/
`, []string{`:2: webhook "crm": secret_file is missing`}},
		{"not YAML", "webhooks: [\n", []string{`:1: did not find expected node content`}},
		{"wrong shape", "webhooks:\n  - crm\n", []string{`:2: cannot unmarshal !!seq into map[string]*a webhook`}},
		{"no webhooks", "webhooks: {}\n", []string{`:1: no webhooks in it`}},
		{"empty", "", []string{`: the file is empty`}},
		{"duplicate name", `webhooks:
  crm: {url: https://x.example/, secret_file: s}
  crm: {url: https://y.example/, secret_file: s}
`, []string{`:3: mapping key "crm" already defined at line 2`}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			dir := writeFiles(t, map[string]string{
				"w.yaml": tc.yaml,
				"s":      testSecret(),
				"short":  "whsec_" + base64.StdEncoding.EncodeToString([]byte("short")),
			})
			path := filepath.Join(dir, "w.yaml")
			_, err := LoadFile(path)
			if err == nil {
				t.Fatal("LoadFile: no error")
			}
			lines := strings.Split(err.Error(), "\n")
			if len(lines) != len(tc.want) {
				t.Fatalf("LoadFile: %d problems, want %d:\n%v", len(lines), len(tc.want), err)
			}
			for i, w := range tc.want {
				w = path + strings.ReplaceAll(w, "DIR", dir)
				if !strings.HasPrefix(lines[i], w) {
					t.Errorf("problem %d:\n got %s\nwant %s…", i+1, lines[i], w)
				}
			}
			if strings.Contains(err.Error(), strings.TrimSpace(testSecret())[6:]) {
				t.Errorf("the error shows a secret: %v", err)
			}
		})
	}
}

func TestLoadFileWrapsErrors(t *testing.T) {
	t.Parallel()
	dir := writeFiles(t, map[string]string{"w.yaml": "webhooks:\n  crm: {url: https://x.example/, secret_file: gone}\n"})
	if _, err := LoadFile(filepath.Join(dir, "w.yaml")); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("LoadFile with a missing secret file: %v does not wrap fs.ErrNotExist", err)
	}
}

func TestLoadFileMissing(t *testing.T) {
	t.Parallel()
	_, err := LoadFile(filepath.Join(t.TempDir(), "nope.yaml"))
	if !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("LoadFile of a missing file: %v does not wrap fs.ErrNotExist", err)
	}
}

func TestFromFlags(t *testing.T) {
	t.Parallel()
	dir := writeFiles(t, map[string]string{"s": testSecret(), "bad": "whsec_???"})
	c, err := FromFlags("https://h.example/in", filepath.Join(dir, "s"))
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(Config{Name: "default", URL: "https://h.example/in", Secret: testKey}, c); diff != "" {
		t.Fatalf("FromFlags (-want +got):\n%s", diff)
	}
	for _, tc := range []struct{ url, file, want string }{
		{"https://h.example/in", "", "--webhook needs --webhook-secret-file"},
		{"", filepath.Join(dir, "s"), "--webhook: url is missing"},
		{"h.example/in", filepath.Join(dir, "s"), "--webhook: url h.example/in: want http"},
		{"https://h.example/in", filepath.Join(dir, "none"), "--webhook-secret-file: open "},
		{"https://h.example/in", filepath.Join(dir, "bad"), "--webhook-secret-file: " + filepath.Join(dir, "bad") + ": secret is not"},
	} {
		if _, err := FromFlags(tc.url, tc.file); err == nil || !strings.HasPrefix(err.Error(), tc.want) {
			t.Errorf("FromFlags(%q, %q) = %v, want %q…", tc.url, tc.file, err, tc.want)
		}
	}
}

func TestConfigRedacts(t *testing.T) {
	t.Parallel()
	c := Config{Name: "crm", URL: "https://user:pw@crm.example.com/in?token=tok", Secret: []byte("the secret"), States: []schema.State{"sent"}}
	var buf bytes.Buffer
	slog.New(slog.NewJSONHandler(&buf, nil)).Info("x", "webhook", c)
	for _, out := range []string{c.String(), fmt.Sprint(c), fmt.Sprintf("%+v", c), buf.String()} {
		for _, secret := range []string{"the secret", "pw", "tok", fmt.Sprint(c.Secret)} {
			if strings.Contains(out, secret) {
				t.Errorf("%q shows %q", out, secret)
			}
		}
		if !strings.Contains(out, "crm.example.com/in") {
			t.Errorf("%q does not show the host and path", out)
		}
	}
}
