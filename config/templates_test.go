package config

import (
	"path/filepath"
	"testing"
)

func TestLoadTemplatesRejectsBadFiles(t *testing.T) {
	t.Parallel()
	for _, dir := range []string{"unknown-part", "no-name", "parse-error", "empty"} {
		if _, err := LoadTemplates(filepath.Join("testdata", "templates", dir)); err == nil {
			t.Errorf("%s: loaded without error", dir)
		}
	}
	if ts, err := LoadTemplates(""); err != nil || len(ts) != 0 {
		t.Errorf("no folder: %v, %v; want no templates", ts, err)
	}
}
