package schema

import (
	"encoding/json"
	"testing"
)

// FuzzFastString checks that fastString, where it answers, decodes a JSON
// string exactly as json.Unmarshal does.
func FuzzFastString(f *testing.F) {
	for _, s := range []string{`"plain"`, `"Zażółć"`, `"a\"b"`, `"\u00e9"`, "\"\xff\"", `""`, `"a\\b"`, `"<p>x</p>"`} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, raw []byte) {
		var want string
		if json.Unmarshal(raw, &want) != nil {
			return // fastString only ever sees validated JSON
		}
		if got, ok := fastString(raw); ok && got != want {
			t.Fatalf("fastString(%q) = %q, json.Unmarshal gives %q", raw, got, want)
		}
	})
}
