package httpapi

import (
	"fmt"
	"net/http"
	"testing"

	"github.com/getkin/kin-openapi/openapi3"
)

// validationDoc loads schema/openapi.yaml for the checks of openAPI.check,
// with every schema reference inlined.
//
// Why: for OpenAPI 3.1, kin-openapi validates with a JSON Schema 2020-12
// compiler that knows only the schema it is given. A schema that reaches an
// external reference (request.schema.json, result.schema.json#/$defs/…)
// does not compile, and kin-openapi then falls back, silently, to its
// OpenAPI 3.0 validator, which ignores const, if/then/else and the other
// 2020-12 keywords: `Status: {const: 400}` of an error answer, and the
// rules of result.schema.json (a sent event has Status 200, …) went
// unchecked. With the references inlined every schema compiles.
func validationDoc(t testing.TB) *openapi3.T {
	t.Helper()
	loader := openapi3.NewLoader()
	loader.IsExternalRefsAllowed = true
	doc, err := loader.LoadFromFile(openAPIPath)
	if err != nil {
		t.Fatalf("load %s: %v", openAPIPath, err)
	}
	err = doc.WalkSchemas(func(_ string, sr *openapi3.SchemaRef) error {
		inlineRefs(sr, map[*openapi3.Schema]bool{})
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return doc
}

// inlineRefs clears the $ref of sr and of every schema under it, so that
// they marshal as their resolved value; a reference back to a schema on the
// way down (recursion) is kept.
func inlineRefs(sr *openapi3.SchemaRef, onPath map[*openapi3.Schema]bool) {
	if sr == nil || sr.Value == nil || onPath[sr.Value] {
		return
	}
	sr.Ref = ""
	s := sr.Value
	onPath[s] = true
	defer delete(onPath, s)
	refs := []*openapi3.SchemaRef{s.Items, s.Not, s.Contains, s.PropertyNames, s.If, s.Then, s.Else, s.ContentSchema,
		s.AdditionalProperties.Schema, s.UnevaluatedItems.Schema, s.UnevaluatedProperties.Schema}
	refs = append(refs, s.OneOf...)
	refs = append(refs, s.AnyOf...)
	refs = append(refs, s.AllOf...)
	refs = append(refs, s.PrefixItems...)
	for _, m := range []openapi3.Schemas{s.Properties, s.PatternProperties, s.DependentSchemas, s.Defs} {
		for _, r := range m {
			refs = append(refs, r)
		}
	}
	for _, r := range refs {
		inlineRefs(r, onPath)
	}
}

// recordTB is a testing.TB that keeps what Errorf reports.
type recordTB struct {
	testing.TB
	errs []string
}

func (r *recordTB) Helper() {}

func (r *recordTB) Errorf(format string, args ...any) {
	r.errs = append(r.errs, fmt.Sprintf(format, args...))
}

// TestOpenAPICheckIsStrict makes sure openAPI.check applies the JSON Schema
// 2020-12 keywords of the document and of the schemas it references: const
// in an error answer, the if/then rules of result.schema.json, const in a
// batch item. (Before validationDoc, all of these passed.)
func TestOpenAPICheckIsStrict(t *testing.T) {
	t.Parallel()
	oa := loadOpenAPI(t)
	jsonHeader := http.Header{"Content-Type": {"application/json"}}
	sentAs410 := `{"Id": "x", "Status": 410, "State": "sent", "Attempt": 1, "Time": "2026-03-01T12:00:00Z"}`
	for _, c := range []struct {
		name, method, path string
		status             int
		body               string
		bad                bool
	}{
		{"error answer with another Status", http.MethodGet, "/v1/messages/x", 404, `{"Status": 400, "Error": "unknown Id"}`, true},
		{"error answer", http.MethodGet, "/v1/messages/x", 404, `{"Status": 404, "Error": "unknown Id"}`, false},
		{"sent event with Status 410", http.MethodGet, "/v1/messages/x", 200, sentAs410, true},
		{"cancel answering a sent event", http.MethodDelete, "/v1/messages/x", 200, `{"Id": "x", "Status": 200, "State": "sent", "Attempt": 1, "Time": "2026-03-01T12:00:00Z"}`, true},
		{"cancel answering a cancelled event", http.MethodDelete, "/v1/messages/x", 200, `{"Id": "x", "Status": 410, "State": "cancelled", "Attempt": 0, "Time": "2026-03-01T12:00:00Z"}`, false},
		{"too late with a scheduled event", http.MethodDelete, "/v1/messages/x", 409, `{"Id": "x", "Status": 202, "State": "scheduled", "Attempt": 0, "SendAt": "2026-03-01T12:00:00Z", "Envelope": {"From": "a@example.com", "Recipients": ["b@example.com"], "Subject": ""}, "Time": "2026-03-01T12:00:00Z"}`, true},
		{"negative count", http.MethodDelete, "/v1/batches/x", 200, `{"Cancelled": 1, "TooLate": -1}`, true},
	} {
		req, err := http.NewRequest(c.method, "http://localhost:8080"+c.path, nil)
		if err != nil {
			t.Fatal(err)
		}
		rec := &recordTB{TB: t}
		oa.check(rec, req, nil, httpResult{status: c.status, header: jsonHeader, body: []byte(c.body)})
		if c.bad && len(rec.errs) == 0 {
			t.Errorf("%s: the check took %s", c.name, c.body)
		}
		if !c.bad && len(rec.errs) > 0 {
			t.Errorf("%s: the check refused a good answer: %v", c.name, rec.errs)
		}
	}
	// A batch answer with a wrong item, for the schemas behind $refs of
	// components.
	req, err := http.NewRequest(http.MethodPost, "http://localhost:8080/v1/messages/batch", nil)
	if err != nil {
		t.Fatal(err)
	}
	rec := &recordTB{TB: t}
	oa.check(rec, req, []byte(`[{"To": "a@example.com"}]`), httpResult{status: 202, header: jsonHeader,
		body: []byte(`{"Results": [{"Id": "x", "Status": 201}]}`)})
	if len(rec.errs) == 0 {
		t.Error("the check took a batch item with Status 201")
	}
}
