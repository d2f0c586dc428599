package suppress_test

import (
	"bytes"
	"encoding/json"
	"os"
	"reflect"
	"slices"
	"testing"
	"time"

	"github.com/santhosh-tekuri/jsonschema/v6"

	"github.com/jetmail/jetmail/suppress"
)

const schemaFile = "../schema/suppression.schema.json"

// jsonUnmarshalStrict is json.Unmarshal that refuses unknown keys.
func jsonUnmarshalStrict(data []byte, v any) error {
	d := json.NewDecoder(bytes.NewReader(data))
	d.DisallowUnknownFields()
	return d.Decode(v)
}

// TestSchema: entries and events as Go writes them are valid against
// schema/suppression.schema.json, invalid ones are not, and the keys of
// the schema and of the Go types are the same.
func TestSchema(t *testing.T) {
	t.Parallel()
	c := jsonschema.NewCompiler()
	c.DefaultDraft(jsonschema.Draft2020)
	c.AssertFormat()
	entry, err := c.Compile(schemaFile)
	if err != nil {
		t.Fatal(err)
	}
	event, err := c.Compile(schemaFile + "#/$defs/unsubscribeEvent")
	if err != nil {
		t.Fatal(err)
	}
	at := time.Date(2026, 3, 1, 12, 0, 0, 123456789, time.UTC)
	exp := at.Add(suppress.DefaultBounceTTL)
	validate := func(sch *jsonschema.Schema, v any) error {
		data, err := json.Marshal(v)
		if err != nil {
			t.Fatal(err)
		}
		doc, err := jsonschema.UnmarshalJSON(bytes.NewReader(data))
		if err != nil {
			t.Fatal(err)
		}
		return sch.Validate(doc)
	}
	for _, e := range []suppress.Entry{
		{Address: "jan@example.com", Reason: suppress.Bounce, Time: at, Id: "order-1234", Expires: &exp},
		{Address: "@example.com", Reason: suppress.Manual, Time: at},
		{Address: "jan doe@example.com", Reason: suppress.Unsubscribe, Time: at},
	} {
		if err := validate(entry, e); err != nil {
			t.Errorf("%+v: %v", e, err)
		}
	}
	for _, e := range []any{
		suppress.Entry{Address: "jan@example.com", Reason: suppress.Bounce, Time: at}, // no Expires
		suppress.Entry{Address: "jan@example.com", Reason: suppress.Manual, Time: at, Expires: &exp},
		suppress.Entry{Address: "jan@example.com", Reason: "spam", Time: at},
		suppress.Entry{Address: "jan", Reason: suppress.Manual, Time: at},
		suppress.Entry{Address: "jan@example.com", Reason: suppress.Manual, Time: at, Id: "a.b"},
		map[string]any{"Address": "jan@example.com", "Reason": "manual", "Time": at, "Extra": 1},
	} {
		if err := validate(entry, e); err == nil {
			t.Errorf("%+v: valid, want invalid", e)
		}
	}
	if err := validate(event, suppress.Event{Address: "jan@example.com", Time: at, Id: "Xk2Ux0FwJ8Yp"}); err != nil {
		t.Errorf("event: %v", err)
	}
	if err := validate(event, map[string]any{"Address": "jan@example.com", "Time": at}); err == nil {
		t.Error("event without Id: valid")
	}

	var doc map[string]any
	data, err := os.ReadFile(schemaFile)
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(data, &doc); err != nil {
		t.Fatal(err)
	}
	defs := doc["$defs"].(map[string]any)
	for _, c := range []struct {
		typ reflect.Type
		obj map[string]any
	}{
		{reflect.TypeFor[suppress.Entry](), doc},
		{reflect.TypeFor[suppress.Event](), defs["unsubscribeEvent"].(map[string]any)},
	} {
		var keys []string
		for k := range c.obj["properties"].(map[string]any) {
			keys = append(keys, k)
		}
		var fields []string
		for f := range c.typ.Fields() {
			fields = append(fields, f.Name)
		}
		slices.Sort(keys)
		slices.Sort(fields)
		if !slices.Equal(keys, fields) {
			t.Errorf("%s: schema keys %v, Go fields %v", c.typ, keys, fields)
		}
	}
}
