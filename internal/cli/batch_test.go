package cli

import (
	"bytes"
	"crypto/sha256"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/jetmail/jetmail/schema"
)

// TestSendBatchRerunSendsNothingTwice runs the same file of requests
// without Ids twice, as after an interruption: the second run publishes
// nothing new and every message is delivered once.
func TestSendBatchRerunSendsNothingTwice(t *testing.T) {
	t.Parallel()
	_, url := startNATS(t)
	outbox := t.TempDir()
	startWorker(t, "--nats-url", url, "--outbox", outbox, "--http-addr", "127.0.0.1:0")
	var lines []string
	for i := range 30 {
		lines = append(lines, fmt.Sprintf(`{"To":"r%d@example.com","Subject":"n%d"}`, i%10, i%10)) // each line three times
	}
	file := filepath.Join(t.TempDir(), "batch.ndjson")
	if err := os.WriteFile(file, []byte(strings.Join(lines, "\n")+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	first := jetmail(t, testCtx(t), "", "send", "--nats-url", url, "--batch", file, "--wait")
	if first.code != 0 || !strings.Contains(first.stdout, "200\t30\n") {
		t.Fatalf("first run: exit %d\n%s\n%s", first.code, first.stdout, first.stderr)
	}
	second := jetmail(t, testCtx(t), "", "send", "--nats-url", url, "--batch", file, "--wait")
	if second.code != 0 || !strings.Contains(second.stderr, "(30 already published before)") {
		t.Fatalf("second run: exit %d\n%s\n%s", second.code, second.stdout, second.stderr)
	}
	ids := strings.Fields(first.stdout)
	if got := strings.Fields(second.stdout); strings.Join(got[:30], " ") != strings.Join(ids[:30], " ") {
		t.Errorf("the second run used other Ids:\n%v\n%v", ids[:30], got[:30])
	}
	emls, _ := filepath.Glob(filepath.Join(outbox, "*.eml"))
	if len(emls) != 30 {
		t.Errorf("%d messages delivered, want 30 (three each of ten identical lines, none twice)", len(emls))
	}
}

func TestBatchID(t *testing.T) {
	t.Parallel()
	seen := map[[sha256.Size]byte]int{}
	a1, a2 := batchID([]byte(`{"To":"a@x.com"}`), seen), batchID([]byte(`{"To":"a@x.com"}`), seen)
	b1 := batchID([]byte(`{"To":"b@x.com"}`), seen)
	if a1 == a2 || a1 == b1 || !schema.ValidID(a1) || !schema.ValidID(a2) {
		t.Fatalf("Ids %q %q %q", a1, a2, b1)
	}
	again := map[[sha256.Size]byte]int{}
	if batchID([]byte(`{"To":"a@x.com"}`), again) != a1 || batchID([]byte(`{"To":"a@x.com"}`), again) != a2 {
		t.Error("Ids are not stable across runs")
	}
}

func TestProgressStatus(t *testing.T) {
	t.Parallel()
	var sb strings.Builder
	p := newProgress(&sb, "publishing", 100)
	p.n = 50
	if s := p.status(); !strings.HasPrefix(s, "50/100 ") || !strings.Contains(s, "ETA") {
		t.Errorf("status = %q", s)
	}
	p.total = 0
	if s := p.status(); strings.Contains(s, "ETA") || !strings.HasPrefix(s, "50 ") {
		t.Errorf("status without a total = %q", s)
	}
}

// TestIsTerminal: /dev/null is a character device but no terminal, so
// progress bars must not be drawn into it.
func TestIsTerminal(t *testing.T) {
	t.Parallel()
	null, err := os.OpenFile(os.DevNull, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer null.Close()
	if isTerminal(null) {
		t.Error("/dev/null is taken for a terminal")
	}
	if isTerminal(&bytes.Buffer{}) {
		t.Error("a buffer is taken for a terminal")
	}
}
