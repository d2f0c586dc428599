package worker

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/jetmail/jetmail/schema"
)

func TestFileOutboxSmoke(t *testing.T) {
	t.Parallel()
	outbox := t.TempDir()
	b := setup(t, Config{Outbox: outbox})
	b.publish(t, map[string]any{"Id": "smoke-1", "To": "a@example.com", "From": "me@example.com", "Subject": "hi", "Body": "hello"}, "smoke-1")
	fin, all := b.results.final(t, "smoke-1")
	if fin.Status != schema.Status200 || fin.State != schema.StateSent {
		t.Fatalf("final = %+v", fin)
	}
	if len(all) != 2 || all[0].State != schema.StateAccepted {
		t.Fatalf("events = %+v", all)
	}
	data, err := os.ReadFile(filepath.Join(outbox, "smoke-1.eml"))
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("%s", data)
}
