package producer

import (
	"encoding/json"
	"testing"
)

func TestWithID(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct{ in, want string }{
		{`{"Id":"x","To":"a@b.c"}`, `{"Id":"x","To":"a@b.c"}`},
		{`{"id":"x"}`, `{"id":"x"}`},
		{`{"To":"a@b.c"}`, `{"Id":"the-id","To":"a@b.c"}`},
		{` { "To" : "a@b.c" }`, `{"Id":"the-id", "To" : "a@b.c" }`},
		{`{}`, `{"Id":"the-id"}`},
		{`{"ID":"","To":"a@b.c"}`, `{"Id":"the-id","To":"a@b.c"}`},
	} {
		got, err := withID(json.RawMessage(tc.in), "the-id")
		if err != nil || string(got) != tc.want {
			t.Errorf("withID(%s) = %s, %v; want %s", tc.in, got, err, tc.want)
		}
		if err == nil && !json.Valid(got) {
			t.Errorf("withID(%s) is not JSON: %s", tc.in, got)
		}
	}
	if _, err := withID(json.RawMessage(`[1]`), "x"); err == nil {
		t.Error("withID of an array: no error")
	}
}
