package suppress_test

import (
	"errors"
	"io"
	"strings"
	"testing"
	"testing/iotest"

	"github.com/google/go-cmp/cmp"

	"github.com/jetmail/jetmail/suppress"
)

func TestImport(t *testing.T) {
	t.Parallel()
	b := setup(t)
	add(t, b.store, "kept@example.com", suppress.Manual, 0)
	file := "\ufeffemail,created,reason\n" + // line 1: a CSV header, bad
		"# exported from elsewhere\n" +
		"\n" +
		"jan@example.com,2025-01-01,bounce\n" +
		"  Ola Nowak <ola@example.com>  \n" +
		"not an address\n" + // line 6
		"\"quoted@example.com\",x\n" +
		"tab@example.com\tmore\n" +
		"@example.org\n" +
		"jan@EXAMPLE.com\n" + // a duplicate: stored once
		"kept@example.com\n" + // stronger already: not stored
		"jan@\n" + // line 12
		"   # indented comment\n" +
		"last@example.com" // no final newline
	added, bad, err := b.store.Import(t.Context(), strings.NewReader(file), suppress.Unsubscribe)
	if err != nil {
		t.Fatal(err)
	}
	if added != 6 {
		t.Errorf("added %d, want 6", added)
	}
	var lines []int
	for _, le := range bad {
		lines = append(lines, le.Line)
		if !errors.Is(&le, suppress.ErrInvalidAddress) || !strings.Contains(le.Error(), "line ") {
			t.Errorf("line error %v", &le)
		}
	}
	if diff := cmp.Diff([]int{1, 6, 12}, lines); diff != "" {
		t.Errorf("bad lines (-want +got):\n%s", diff)
	}
	if bad[1].Text != "not an address" {
		t.Errorf("bad line text %q", bad[1].Text)
	}
	got := map[string]suppress.Reason{}
	for _, e := range list(t, b.store) {
		got[e.Address] = e.Reason
	}
	want := map[string]suppress.Reason{
		"jan@example.com": "unsubscribe", "ola@example.com": "unsubscribe", "quoted@example.com": "unsubscribe",
		"tab@example.com": "unsubscribe", "@example.org": "unsubscribe", "last@example.com": "unsubscribe",
		"kept@example.com": "manual",
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("list after the import (-want +got):\n%s", diff)
	}

	// A failure to read stops the import with an error.
	r := io.MultiReader(strings.NewReader("r1@example.com\n"), iotest.ErrReader(errors.New("disk on fire")))
	if _, _, err := b.store.Import(t.Context(), r, suppress.Manual); err == nil || !strings.Contains(err.Error(), "disk on fire") {
		t.Errorf("Import of a failing reader: %v", err)
	}
	if _, _, err := b.store.Import(t.Context(), strings.NewReader("a@example.com"), "spam"); !errors.Is(err, suppress.ErrInvalidReason) {
		t.Errorf("Import with a bad reason: %v", err)
	}
	// Bounces get the store's TTL.
	if _, _, err := b.store.Import(t.Context(), strings.NewReader("bounced@example.com\n"), suppress.Bounce); err != nil {
		t.Fatal(err)
	}
	if e, err := b.store.Get(t.Context(), "bounced@example.com"); err != nil || e.Expires == nil || !e.Expires.Equal(b.clock.Now().Add(suppress.DefaultBounceTTL)) {
		t.Errorf("imported bounce %+v, %v", e, err)
	}
}

// TestImportNATSFailure: a failure to write stops the import with an
// error.
func TestImportNATSFailure(t *testing.T) {
	t.Parallel()
	b := setup(t)
	nc, js := b.srv.Connect(t)
	s := b.open(t, js)
	nc.Close()
	_, _, err := s.Import(t.Context(), strings.NewReader("a@example.com\nb@example.com\n"), suppress.Manual)
	if err == nil || !strings.Contains(err.Error(), "line ") {
		t.Errorf("Import over a closed connection: %v", err)
	}
}
