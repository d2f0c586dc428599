package schema

import (
	"encoding/json"
	"testing"
)

// FuzzFastString checks that fastString, where it answers, decodes a JSON
// string exactly as json.Unmarshal does.
func FuzzFastString(f *testing.F) {
	for _, s := range []string{`"plain"`, `"Zażółć"`, `"a\"b"`, `"\u00e9"`, "\"\xff\"", `""`, `"a\\b"`, `"<p>x</p>"`,
		`"line\nline\r\n\ttab\/\b\f"`, `"\u003cp\u003e"`, `"\ud83d\ude00"`, `"\ud83d"`, `"\ude00\ud83d"`,
		`"\ud83dx"`, `"\ud83d\u0041"`, `"\ud83d\ud83d\ude00"`, `"\uDBFF\uDFFF"`, `"é\"\\"`} {
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

// TestFastStringAnswersEscapes keeps the fast path honest: strings with
// escapes (a body's line breaks, json.Marshal's \u003c for '<') are
// decoded by fastString, not handed back to json.Unmarshal.
func TestFastStringAnswersEscapes(t *testing.T) {
	for raw, want := range map[string]string{
		`"a\nb"`:                  "a\nb",
		`"\u003cjan@x.com\u003e"`: "<jan@x.com>",
		`"\ud83d\ude00!"`:         "😀!",
		`"\ud83d!"`:               "\ufffd!",
		`"\"q\" \\ \/"`:           `"q" \ /`,
	} {
		got, ok := fastString(json.RawMessage(raw))
		if !ok || got != want {
			t.Errorf("fastString(%s) = %q, %v; want %q, true", raw, got, ok, want)
		}
	}
	if _, ok := fastString(json.RawMessage("\"\xff\\n\"")); ok {
		t.Error("fastString answered for invalid UTF-8, which encoding/json replaces byte by byte")
	}
}

// FuzzLookup checks that decoder.lookup finds what lookupFold finds, for
// every key of the contract, in any object.
func FuzzLookup(f *testing.F) {
	for _, s := range []string{`{"to":"a","To":"b","TO":"c"}`, `{"tO":"a","TO":"b"}`, `{"\u212ao":"a","TO":"b"}`,
		`{"\u017fubject":"a","SUBJECT":"b"}`, `{"SUBJECT":"b","subjecT":"c"}`, `{"Body":"x","isHTML":"true","ISHTML":"false"}`} {
		f.Add([]byte(s))
	}
	keys := []string{"To", "CC", "Bcc", "From", "Subject", "Body", "IsHtml", "Importance", "Attachments", "ContentData",
		"Id", "ReplyTo", "TextBody", "Headers", "Connection", "Metadata", "Template", "TemplateData", "Priority",
		"SendAt", "BatchId", "Unsubscribe", "IgnoreSuppression"}
	f.Fuzz(func(t *testing.T, data []byte) {
		var obj map[string]json.RawMessage
		if json.Unmarshal(data, &obj) != nil || obj == nil {
			return
		}
		d := decoder{obj: obj}
		for _, k := range keys {
			want, wok := lookupFold(obj, k)
			got, gok := d.lookup(k)
			if gok != wok || string(got) != string(want) {
				t.Fatalf("lookup(%q) in %s = %s, %v; lookupFold gives %s, %v", k, data, got, gok, want, wok)
			}
		}
	})
}
