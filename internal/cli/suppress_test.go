package cli

import (
	"encoding/json"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/jetmail/jetmail/internal/jstest"
	"github.com/jetmail/jetmail/schema"
	"github.com/jetmail/jetmail/suppress"
)

// TestSuppress runs the suppress commands against a server no worker ever
// ran on (the first creates the bucket), and checks what they print, their
// exit codes, and that a worker's Store sees the same list.
func TestSuppress(t *testing.T) {
	t.Parallel()
	_, url := startNATS(t)
	ctx := testCtx(t)
	run := func(stdin string, args ...string) runResult {
		t.Helper()
		return jetmail(t, ctx, stdin, append(args, "--nats-url", url)...)
	}

	r := run("", "suppress", "list")
	if r.code != 0 || r.stdout != "" || !strings.Contains(r.stderr, "the suppression list is empty") {
		t.Fatalf("list of an empty list: %+v", r)
	}
	r = run("", "suppress", "check", "jan@example.com")
	if r.code != 1 || r.stdout != "jan@example.com is not suppressed\n" || r.stderr != "" {
		t.Errorf("check before add: %+v", r)
	}

	r = run("", "suppress", "add", "Jan <Jan@Example.com>", "@blocked.example")
	if r.code != 0 || r.stdout != "added jan@example.com (manual)\nadded @blocked.example (manual)\n" {
		t.Errorf("add: %+v", r)
	}
	r = run("", "suppress", "add", "jan@example.com", "--reason", "bounce")
	if r.code != 0 || !regexp.MustCompile(`^kept jan@example.com \(manual since \S+Z\): stronger than bounce\n$`).MatchString(r.stdout) {
		t.Errorf("add a weaker reason: %+v", r)
	}
	r = run("", "suppress", "add", "jan@example.com")
	if r.code != 0 || !strings.HasSuffix(r.stdout, "): already suppressed\n") {
		t.Errorf("add again: %+v", r)
	}
	r = run("", "suppress", "add", "ola@example.com", "--reason", "BOUNCE", "--id", "order-1234", "--bounce-ttl", "48h")
	if r.code != 0 || r.stdout != "added ola@example.com (bounce)\n" {
		t.Errorf("add a bounce: %+v", r)
	}
	r = run("", "suppress", "add", "ola@example.com", "--reason", "unsubscribe")
	if r.code != 0 || r.stdout != "added ola@example.com (unsubscribe, replacing bounce)\n" {
		t.Errorf("add over a bounce: %+v", r)
	}
	r = run("", "suppress", "add", "gone@example.com", "--reason", "bounce", "--id", "order-1234", "--bounce-ttl", "48h")
	if r.code != 0 {
		t.Fatalf("add a bounce: %+v", r)
	}

	// check: its own entry, or its domain's; exit 0.
	for addr, want := range map[string]string{
		"JAN@example.com":        `^jan@example.com is suppressed: manual since \S+Z \(every message\)\n$`,
		"x@mail.blocked.example": `^x@mail.blocked.example is suppressed by @blocked.example: manual since \S+Z \(every message\)\n$`,
		"ola@example.com":        `^ola@example.com is suppressed: unsubscribe since \S+Z \(the bulk lane and messages with Unsubscribe\)\n$`,
		"gone@example.com":       `^gone@example.com is suppressed: bounce since \S+Z until \S+Z \(every message\)\n$`,
	} {
		r := run("", "suppress", "check", addr)
		if r.code != 0 || !regexp.MustCompile(want).MatchString(r.stdout) {
			t.Errorf("check %s: %+v, want exit 0 and %s", addr, r, want)
		}
	}

	// The table, by address; then JSON lines as stored.
	r = run("", "suppress", "list")
	lines := strings.Split(strings.TrimSpace(r.stdout), "\n")
	if r.code != 0 || len(lines) != 5 || !strings.HasPrefix(lines[0], "ADDRESS  ") {
		t.Fatalf("list: %+v", r)
	}
	for i, want := range []string{`^@blocked.example +manual +\S+Z +- +-$`, `^gone@example.com +bounce +\S+Z +\S+Z +order-1234$`,
		`^jan@example.com +manual `, `^ola@example.com +unsubscribe +\S+Z +- +-$`} {
		if !regexp.MustCompile(want).MatchString(lines[i+1]) {
			t.Errorf("row %d %q, want %s", i+1, lines[i+1], want)
		}
	}
	r = run("", "suppress", "list", "--json")
	var entries []suppress.Entry
	for line := range strings.Lines(r.stdout) {
		var e suppress.Entry
		if err := json.Unmarshal([]byte(line), &e); err != nil {
			t.Fatalf("not a JSON line: %q: %v", line, err)
		}
		entries = append(entries, e)
	}
	if len(entries) != 4 || entries[1].Address != "gone@example.com" || entries[1].Id != "order-1234" ||
		entries[1].Expires == nil || entries[1].Expires.Sub(entries[1].Time).Hours() < 47.9 {
		t.Errorf("list --json: %+v", entries)
	}

	// What a worker sees is the same list.
	_, js := jstest.Connect(t, url)
	store, err := suppress.Open(ctx, js, schema.Names{}, suppress.Options{})
	if err != nil {
		t.Fatal(err)
	}
	if e, err := store.Match(ctx, "x@blocked.example"); err != nil || e.Address != "@blocked.example" {
		t.Errorf("the store: %+v, %v", e, err)
	}

	// remove: exit 1 when one is not there; the others are removed.
	r = run("", "suppress", "remove", "jan@example.com", "nobody@example.com", "@blocked.example")
	if r.code != 1 || r.stdout != "removed jan@example.com (manual)\nremoved @blocked.example (manual)\n" ||
		r.stderr != "jetmail: nobody@example.com is not on the suppression list\n" {
		t.Errorf("remove: %+v", r)
	}
	if r := run("", "suppress", "check", "jan@example.com"); r.code != 1 {
		t.Errorf("check after remove: %+v", r)
	}
	if r := run("", "suppress", "remove", "ola@example.com"); r.code != 0 {
		t.Errorf("remove: %+v", r)
	}
}

// TestSuppressImport: add --file reports bad lines with their numbers,
// adds the rest, and exits 1; a clean file exits 0; - is standard input.
func TestSuppressImport(t *testing.T) {
	t.Parallel()
	_, url := startNATS(t)
	ctx := testCtx(t)
	file := filepath.Join(t.TempDir(), "list.txt")
	if err := os.WriteFile(file, []byte("# from elsewhere\nemail,created\na@example.com,2025-01-01\n\nnope\nb@example.com\n@example.org\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	r := jetmail(t, ctx, "", "suppress", "add", "--file", file, "--reason", "unsubscribe", "--nats-url", url)
	wantErr := "jetmail: " + file + ":2: not a valid email address or @domain: \"email\"\n" +
		"jetmail: " + file + ":5: not a valid email address or @domain: \"nope\"\n"
	if r.code != 1 || r.stdout != "imported 3 entries from "+file+" (unsubscribe); 2 bad lines\n" || r.stderr != wantErr {
		t.Errorf("import: %+v\nwant stderr %q", r, wantErr)
	}
	r = jetmail(t, ctx, "c@example.com\n", "suppress", "add", "d@example.com", "--file", "-", "--nats-url", url)
	if r.code != 0 || r.stdout != "added d@example.com (manual)\nimported 1 entry from standard input (manual)\n" {
		t.Errorf("import from stdin: %+v", r)
	}
	r = jetmail(t, ctx, "", "suppress", "list", "--json", "--nats-url", url)
	if n := strings.Count(r.stdout, "\n"); n != 5 || !strings.Contains(r.stdout, `"Address":"@example.org","Reason":"unsubscribe"`) {
		t.Errorf("list after the imports: %s", r.stdout)
	}
}

func TestSuppressUsage(t *testing.T) {
	t.Parallel()
	_, url := startNATS(t)
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"suppress", "bogus"}, "unknown command"},
		{[]string{"suppress", "add", "--nats-url", url}, "wants the addresses to add, or --file"},
		{[]string{"suppress", "add", "jan@", "--nats-url", url}, `"jan@" is not a valid email address or @domain`},
		{[]string{"suppress", "add", "a@example.com", "--reason", "spam", "--nats-url", url}, "--reason: want bounce, unsubscribe or manual"},
		{[]string{"suppress", "add", "a@example.com", "--id", "a.b", "--nats-url", url}, "--id"},
		{[]string{"suppress", "add", "a@example.com", "--bounce-ttl", "0s", "--nats-url", url}, "--bounce-ttl must be positive"},
		{[]string{"suppress", "add", "--file", filepath.Join(t.TempDir(), "missing"), "--nats-url", url}, "--file"},
		{[]string{"suppress", "remove", "--nats-url", url}, "wants the addresses to remove"},
		{[]string{"suppress", "check", "--nats-url", url}, "wants one address, got 0"},
		{[]string{"suppress", "check", "a@example.com", "b@example.com", "--nats-url", url}, "wants one address, got 2"},
		{[]string{"suppress", "check", "not an address", "--nats-url", url}, "not a valid email address"},
		{[]string{"suppress", "list", "extra"}, "takes no arguments"},
		{[]string{"suppress", "list", "--nats-url", deadURL(t)}, "is `jetmail worker` running?"},
		{[]string{"suppress", "check", "a@example.com", "--nats-url", deadURL(t)}, "is `jetmail worker` running?"},
	} {
		r := jetmail(t, testCtx(t), "", tc.args...)
		if r.code != 2 || !strings.Contains(r.stderr, tc.want) {
			t.Errorf("jetmail %s: exit %d, stderr %q; want 2 and %q", strings.Join(tc.args, " "), r.code, r.stderr, tc.want)
		}
	}
}
