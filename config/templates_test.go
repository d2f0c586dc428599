package config

import (
	"os"
	"path/filepath"
	"testing"
)

func writeTemplates(t *testing.T, files map[string]string) string {
	t.Helper()
	dir := t.TempDir()
	for name, src := range files {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(src), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

func TestLoadTemplatesRejectsBadFiles(t *testing.T) {
	t.Parallel()
	for name, files := range map[string]map[string]string{
		"unknown part": {"a.body.tmpl": "x"},
		"no name":      {"subject.tmpl": "x"},
		"parse error":  {"a.text.tmpl": "{{.X"},
		"empty folder": {},
	} {
		if _, err := LoadTemplates(writeTemplates(t, files)); err == nil {
			t.Errorf("%s: loaded without error", name)
		}
	}
}
