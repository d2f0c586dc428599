package config

import (
	"bytes"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"gopkg.in/yaml.v3"
)

// TestConnectionsExample checks deploy/connections.example.yaml against the
// file format.
func TestConnectionsExample(t *testing.T) {
	t.Parallel()
	data, err := os.ReadFile(filepath.Join("..", "deploy", "connections.example.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	var file connectionsFile
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	if err := dec.Decode(&file); err != nil && err != io.EOF {
		t.Fatal(err)
	}
	d, m := file.Connections["default"], file.Connections["marketing"]
	if d == nil || m == nil || d.RateLimit != 50 || d.PoolSize != 8 || m.PasswordEnv != "BULK_SMTP_PASSWORD" {
		t.Fatalf("example = %+v", file.Connections)
	}
	for _, key := range strings.Split(fileConnectionKeys(), ", ") {
		if !bytes.Contains(data, []byte("#   "+key+" ")) {
			t.Errorf("the example does not document %s", key)
		}
	}
}
