package deploy

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"testing"

	"gopkg.in/yaml.v3"
)

// The tests run in the package folder, deploy/; the repository root is its
// parent.
const root = ".."

// Files this package is about, relative to the repository root.
const (
	composeFile        = "docker-compose.yml"
	dockerfile         = "deploy/Dockerfile"
	dockerignore       = "deploy/Dockerfile.dockerignore"
	prometheusFile     = "deploy/prometheus/prometheus.yml"
	alertsFile         = "deploy/prometheus/alerts.yml"
	dashboardFile      = "deploy/grafana/dashboards/jetmail.json"
	grafanaDatasources = "deploy/grafana/provisioning/datasources"
	grafanaDashboards  = "deploy/grafana/provisioning/dashboards"
	kubernetesDir      = "deploy/kubernetes"
)

// reporter is what the checks report to: a *testing.T, or a recorder in
// the tests that make sure a check can fail.
type reporter interface {
	Helper()
	Errorf(format string, args ...any)
	Logf(format string, args ...any)
}

// recorder is a reporter that keeps the errors.
type recorder struct{ errs []string }

func (*recorder) Helper()                        {}
func (*recorder) Logf(string, ...any)            {}
func (r *recorder) Errorf(f string, args ...any) { r.errs = append(r.errs, fmt.Sprintf(f, args...)) }

// mustFail runs check against a recorder and fails t unless the check
// reported an error containing want.
func mustFail(t *testing.T, what, want string, check func(r reporter)) {
	t.Helper()
	r := &recorder{}
	check(r)
	for _, e := range r.errs {
		if strings.Contains(e, want) {
			return
		}
	}
	t.Errorf("%s: the check did not report %q; it reported %q", what, want, r.errs)
}

// rootPath turns a path relative to the repository root into one the test
// can open.
func rootPath(rel string) string { return filepath.Join(root, filepath.FromSlash(rel)) }

// TestFilesParse parses every YAML and JSON file under deploy/ and
// docker-compose.yml, and fails on a file type that no test reads (so a new
// kind of file gets a check).
func TestFilesParse(t *testing.T) {
	files := []string{composeFile}
	err := filepath.WalkDir(".", func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		files = append(files, filepath.ToSlash(filepath.Join("deploy", p)))
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	var parsed int
	for _, f := range files {
		base := filepath.Base(f)
		switch ext := filepath.Ext(f); {
		case ext == ".yml" || ext == ".yaml":
			docs := loadYAML(t, f)
			if len(docs) == 0 {
				t.Errorf("%s: no YAML document", f)
			}
			parsed++
		case ext == ".json":
			loadJSON(t, f)
			parsed++
		case ext == ".go", base == "Dockerfile", base == "Dockerfile.dockerignore":
			// Go: compiled by go vet and go test; Dockerfile: TestDockerfile.
		default:
			t.Errorf("%s: no test reads this kind of file; add a check to deploy/deploy_test.go", f)
		}
	}
	if parsed < 10 {
		t.Errorf("parsed only %d YAML/JSON files; are the deployment files missing?", parsed)
	}
}

// loadYAML decodes every document of the YAML file rel (relative to the
// repository root), skipping empty ones. yaml.v3 rejects duplicate keys.
func loadYAML(t testing.TB, rel string) []any {
	t.Helper()
	data, err := os.ReadFile(rootPath(rel))
	if err != nil {
		t.Fatal(err)
	}
	docs, err := decodeYAML(data)
	if err != nil {
		t.Fatalf("%s: %v", rel, err)
	}
	return docs
}

func decodeYAML(data []byte) ([]any, error) {
	dec := yaml.NewDecoder(bytes.NewReader(data))
	var docs []any
	for {
		var doc any
		err := dec.Decode(&doc)
		if errors.Is(err, io.EOF) {
			return docs, nil
		}
		if err != nil {
			return nil, err
		}
		if doc != nil {
			docs = append(docs, doc)
		}
	}
}

// loadYAMLDoc loads a file of exactly one YAML document.
func loadYAMLDoc(t testing.TB, rel string) any {
	t.Helper()
	docs := loadYAML(t, rel)
	if len(docs) != 1 {
		t.Fatalf("%s: want one YAML document, got %d", rel, len(docs))
	}
	return docs[0]
}

// loadJSON decodes the JSON file rel, rejecting duplicate keys (which
// encoding/json would silently resolve to the last) and trailing data.
func loadJSON(t testing.TB, rel string) any {
	t.Helper()
	data, err := os.ReadFile(rootPath(rel))
	if err != nil {
		t.Fatal(err)
	}
	var v any
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.UseNumber()
	if err := dec.Decode(&v); err != nil {
		t.Fatalf("%s: %v", rel, err)
	}
	if dec.More() {
		t.Fatalf("%s: data after the JSON value", rel)
	}
	if err := checkDuplicateKeys(json.NewDecoder(bytes.NewReader(data)), "$"); err != nil {
		t.Fatalf("%s: %v", rel, err)
	}
	return v
}

// checkDuplicateKeys walks one JSON value token by token and reports the
// first object that has a key twice.
func checkDuplicateKeys(dec *json.Decoder, path string) error {
	tok, err := dec.Token()
	if err != nil {
		return err
	}
	d, ok := tok.(json.Delim)
	if !ok {
		return nil
	}
	switch d {
	case '{':
		seen := map[string]bool{}
		for dec.More() {
			kt, err := dec.Token()
			if err != nil {
				return err
			}
			k := kt.(string)
			if seen[k] {
				return fmt.Errorf("%s: key %q appears twice", path, k)
			}
			seen[k] = true
			if err := checkDuplicateKeys(dec, path+"."+k); err != nil {
				return err
			}
		}
	case '[':
		for i := 0; dec.More(); i++ {
			if err := checkDuplicateKeys(dec, fmt.Sprintf("%s[%d]", path, i)); err != nil {
				return err
			}
		}
	}
	_, err = dec.Token() // the closing delimiter
	return err
}

// get walks v along path (string keys into maps, int indexes into lists)
// and returns nil where something is missing.
func get(v any, path ...any) any {
	for _, p := range path {
		switch k := p.(type) {
		case string:
			m, ok := v.(map[string]any)
			if !ok {
				return nil
			}
			v = m[k]
		case int:
			l, ok := v.([]any)
			if !ok || k < 0 || k >= len(l) {
				return nil
			}
			v = l[k]
		default:
			panic(fmt.Sprintf("get: bad path element %T", p))
		}
	}
	return v
}

// getString is get for a scalar, formatted as a string ("" when missing).
func getString(v any, path ...any) string {
	switch s := get(v, path...).(type) {
	case nil:
		return ""
	case string:
		return s
	case json.Number:
		return s.String()
	case int:
		return strconv.Itoa(s)
	case float64:
		return strconv.FormatFloat(s, 'f', -1, 64)
	case bool:
		return strconv.FormatBool(s)
	default:
		return fmt.Sprint(s)
	}
}

func getMap(v any, path ...any) map[string]any {
	m, _ := get(v, path...).(map[string]any)
	return m
}

func getList(v any, path ...any) []any {
	l, _ := get(v, path...).([]any)
	return l
}

// getInt is get for an integer; ok is false when it is missing or not one.
func getInt(v any, path ...any) (int, bool) {
	switch n := get(v, path...).(type) {
	case int:
		return n, true
	case json.Number:
		i, err := strconv.Atoi(n.String())
		return i, err == nil
	case float64:
		return int(n), n == float64(int(n))
	}
	return 0, false
}

// stringList returns the strings of a YAML list (or a lone string as a
// list of one).
func stringList(v any) []string {
	switch l := v.(type) {
	case string:
		return []string{l}
	case []any:
		var out []string
		for _, e := range l {
			out = append(out, fmt.Sprint(e))
		}
		return out
	}
	return nil
}

// portOfAddr returns the port of a listen address such as ":8080".
func portOfAddr(t testing.TB, addr string) int {
	t.Helper()
	_, p, err := net.SplitHostPort(addr)
	if err != nil {
		t.Fatalf("address %q: %v", addr, err)
	}
	n, err := strconv.Atoi(p)
	if err != nil || n <= 0 {
		t.Fatalf("address %q: port %q is not a number", addr, p)
	}
	return n
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

// TestJSONDuplicateKeysAreCaught makes sure the duplicate-key check can fail.
func TestJSONDuplicateKeysAreCaught(t *testing.T) {
	err := checkDuplicateKeys(json.NewDecoder(strings.NewReader(`{"a":1,"b":[{"c":1,"c":2}]}`)), "$")
	if err == nil || !strings.Contains(err.Error(), `"c"`) {
		t.Fatalf("duplicate key not reported: %v", err)
	}
	if err := checkDuplicateKeys(json.NewDecoder(strings.NewReader(`{"a":{"c":1},"b":{"c":2}}`)), "$"); err != nil {
		t.Fatalf("same key in two objects reported: %v", err)
	}
	if _, err := decodeYAML([]byte("a: 1\na: 2\n")); err == nil {
		t.Fatal("yaml.v3 accepted a duplicate key")
	}
}
