package schema_test

import (
	"encoding/json"
	"fmt"
	"maps"
	"math/rand/v2"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"unicode"

	"github.com/google/go-cmp/cmp"

	"github.com/jetmail/jetmail/schema"
)

// addSeeds adds every example payload and a few edge cases to the corpus.
func addSeeds(f *testing.F) {
	files, _ := filepath.Glob("examples/*.json")
	invalid, _ := filepath.Glob("examples/invalid/*.json")
	for _, file := range append(files, invalid...) {
		data, err := os.ReadFile(file)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(data)
	}
	for _, s := range []string{
		`{"to":"a@x.com","To":"b@y.com"}`,
		`{"To":"\"Kowalski, Jan\" <jan@example.com>;anna@example.com","IsHtml":"FALSE","importance":"low"}`,
		`{"To":["a@x.com;b@y.com",null,""],"Headers":{},"Metadata":{"k":null}}`,
		`{"Bcc":"a@x.com","Attachments":[{"FileName":"a","ContentData":"QQ","ContentTransferEncoding":"base64","ContentType":"text/plain; charset=utf-8"}]}`,
		`{"cc":"<a@x.com>","Id":"` + strings.Repeat("x", 128) + `","ReplyTo":"r@x.com","Connection":"eu","TextBody":"t"}`,
		`{"To":"a@x.com","Headers":{"X-A":"1","List-Unsubscribe":"<mailto:u@x.com>"}}`,
		`null`, `[]`, `{}`, `{"To":5}`,
		// Edges where the JSON Schema and the Go code could part ways.
		`{"To":"a@x.com","IsHtml":" true"}`, `{"To":"a@x.com","IsHtml":"1"}`, `{"To":"a@x.com","IsHtml":"null"}`,
		`{"To":"a@x.com","Importance":" high"}`, `{"To":"a@x.com","Importance":""}`, `{"To":"a@x.com","Id":""}`,
		`{"To":" \u00a0;\u3000,\u0085"}`, `{"To":["\u2028",";"],"cc":"b@y.com"}`, `{"To":"\"\""}`,
		`{"To":"a@x.com","Headers":{"content-x@":"1"}}`, `{"To":"a@x.com","Headers":{"X-\u212a":"1"}}`,
		`{"To":"a@x.com","Headers":{"X-A":"1\u2028"}}`, `{"\u212ao":"a@x.com"}`, `{"\u017fubject":"a\nb","to":"a@x.com"}`,
		`{"To":"a@x.com","Attachments":[{"FileName":"\u00a0","ContentData":""}]}`,
		`{"To":"a@x.com","Attachments":[{"FileName":"\u200b","ContentData":""}]}`,
		`{"To":"a@x.com","Attachments":[{"FileName":"a","ContentData":"QQ=","ContentTransferEncoding":"base64"}]}`,
		`{"To":"a@x.com","Attachments":[{"FileName":"a","ContentData":"Q Q\r\n= =","ContentTransferEncoding":"BASE64"}]}`,
		`{"To":"a@x.com","Attachments":[{"FileName":"a","ContentData":"QQ=","ContentTransferEncoding":" base64"}]}`,
		`{"To":"a@x.com","Attachments":[{"FileName":"a","ContentData":"x","ContentType":"text"}]}`,
		`{"To":"a@x.com","Attachments":[{"FileName":"a","ContentData":"x","ContentType":"text/\u212aml"}]}`,
		`{"To":"a@x.com","Attachments":[{"FileName":"a","ContentData":"x","ContentType":"\u00a0text/plain\u3000;a=b"}]}`,
		`{"To":"a@x.com","Attachments":[{"FileName":"a","ContentData":"x","ContentId":"a b"}]}`,
		`{"To":"a@x.com","Attachments":[{"FileName":"a"}]}`, `{"To":"a@x.com","Attachments":[{"FileName":"a","contentdata":null}]}`,
		`{"To":"a@x.com","Attachments":[{"FileName":"a","ContentData":"x","contentTransferEncoding":null}]}`,
		// v2 keys.
		`{"To":"a@x.com","priority":"BUL\u212a","sendat":"2026-12-01T09:00:00.5-00:00","batchid":"b","unsubscribe":true,"ignoresuppression":"True"}`,
		`{"To":"a@x.com","SendAt":"2026-12-31T23:59:60Z"}`, `{"To":"a@x.com","SendAt":"0000-01-01T00:00:00+23:59"}`,
		`{"To":"a@x.com","SendAt":"2026-12-01T09:00:00,5+01:00"}`, `{"To":"a@x.com","SendAt":"2026-12-01T09:00:00"}`,
		`{"To":"a@x.com","Unsubscribe":"https://a@b@:1/x"}`, `{"To":"a@x.com","Unsubscribe":"mailto:%4"}`,
		`{"To":"a@x.com","Unsubscribe":"HTTPS://[::1]:8443/u?a=%20#f"}`, `{"To":"a@x.com","Unsubscribe":""}`,
		`{"To":"a@x.com","Unsubscribe":"mailto:u@x.com","Headers":{"list-unsubscribe-post":"x"}}`,
		`{"To":"a@x.com","Unsubscribe":false,"Headers":{"List-Unsubscribe":"<mailto:u@x.com>"}}`,
	} {
		f.Add([]byte(s))
	}
}

// FuzzDecodeRequest checks that Decode never panics, that it fails only
// with a *ValidationError, that it is deterministic, and that a valid
// request survives its own encoding: json.Marshal of it decodes to an equal
// request that is valid too, and encodes to the same bytes.
func FuzzDecodeRequest(f *testing.F) {
	addSeeds(f)
	f.Fuzz(func(t *testing.T, data []byte) {
		r1, err := schema.Decode(data)
		if err != nil {
			fieldErrors(t, err)
			return
		}
		again, err := schema.Decode(data)
		if err != nil {
			t.Fatalf("second Decode failed: %v", err)
		}
		if diff := cmp.Diff(r1, again); diff != "" {
			t.Fatalf("Decode is not deterministic (-first +second):\n%s", diff)
		}
		if err := r1.Validate(); err != nil {
			fieldErrors(t, err)
			return
		}
		enc, err := json.Marshal(r1)
		if err != nil {
			t.Fatalf("Marshal: %v", err)
		}
		r2, err := schema.Decode(enc)
		if err != nil {
			t.Fatalf("Decode of the encoding %s: %v", enc, err)
		}
		if err := r2.Validate(); err != nil {
			t.Fatalf("the encoding %s is not valid: %v", enc, err)
		}
		if diff := cmp.Diff(r1, r2); diff != "" {
			t.Fatalf("request changed through its encoding %s (-decoded +re-decoded):\n%s", enc, diff)
		}
		enc2, err := json.Marshal(r2)
		if err != nil || string(enc2) != string(enc) {
			t.Fatalf("encoding is not stable:\n%s\n%s (%v)", enc, enc2, err)
		}
	})
}

var addressField = regexp.MustCompile(`^(?:(?:To|CC|Bcc|ReplyTo)\[\d+\]|From)$`)

// goOnlyError reports whether a Go field error is one of the rules that
// the JSON Schema checks only loosely or not at all: the syntax of addresses
// (the schema wants an @ in each non-blank list and From), the parameters of
// a media type, the size limits, how far ahead SendAt is (the schedule
// limit counts from the time of validation, which a schema can not know),
// and what net/url makes of an Unsubscribe URL beyond its characters,
// scheme and host (ports, IP literals, escapes in the host).
func goOnlyError(f schema.FieldError) bool {
	switch {
	case f.TooLarge:
		return true
	case f.Field == "SendAt":
		return strings.HasSuffix(f.Message, " ahead (the schedule limit)")
	case f.Field == "Unsubscribe":
		return strings.HasPrefix(f.Message, "not a valid URL: ")
	case addressField.MatchString(f.Field):
		return strings.HasPrefix(f.Message, "not a valid email address") || f.Message == "must not contain CR or LF"
	case strings.HasSuffix(f.Field, ".ContentType"):
		return strings.HasPrefix(f.Message, "not a valid media type") && strings.Contains(f.Message, ";")
	}
	return false
}

// spelledTwice reports whether a JSON object, or an attachment in it, holds
// one key in several spellings, which Go resolves (see Decode) and the
// JSON Schema does not.
func spelledTwice(data []byte) bool {
	var obj map[string]json.RawMessage
	if json.Unmarshal(data, &obj) != nil {
		return false
	}
	twice := func(obj map[string]json.RawMessage) bool {
		seen := map[string]bool{}
		for k := range obj {
			f := foldKey(k)
			if seen[f] {
				return true
			}
			seen[f] = true
		}
		return false
	}
	if twice(obj) {
		return true
	}
	for k, v := range obj {
		if strings.EqualFold(k, "Attachments") {
			var items []map[string]json.RawMessage
			json.Unmarshal(v, &items)
			if slices.ContainsFunc(items, twice) {
				return true
			}
		}
	}
	return false
}

// foldKey maps each rune of k to the smallest rune of its case-folding
// orbit, so that two keys are strings.EqualFold exactly when their foldKey
// are equal.
func foldKey(k string) string {
	return strings.Map(func(r rune) rune {
		min := r
		for s := unicode.SimpleFold(r); s != r; s = unicode.SimpleFold(s) {
			min = minRune(min, s)
		}
		return min
	}, k)
}

func minRune(a, b rune) rune { return min(a, b) }

// FuzzSchemaAgreement checks the JSON Schema against the Go validator on
// any payload: whatever Go accepts, the schema accepts; whatever the schema
// accepts, Go accepts too or rejects only for a rule the schema leaves to
// Go (goOnlyError).
func FuzzSchemaAgreement(f *testing.F) {
	addSeeds(f)
	s := schemas(f)
	f.Fuzz(func(t *testing.T, data []byte) {
		if spelledTwice(data) {
			return
		}
		_, goErr := goRequest(data)
		schemaErr := validateSchema(s.request, data)
		switch {
		case goErr == nil && schemaErr != nil:
			t.Fatalf("Go accepts %q, the JSON Schema rejects it: %v", data, schemaErr)
		case goErr != nil && schemaErr == nil:
			for _, fe := range fieldErrors(t, goErr) {
				if !goOnlyError(fe) {
					t.Fatalf("the JSON Schema accepts %q, Go rejects it: %v", data, goErr)
				}
			}
		}
	})
}

// FuzzSplitAddresses checks that every entry is trimmed and not empty, has
// no separator outside quotes and angle brackets (splitting it again yields
// itself), and that splitting loses nothing but separators and white space.
func FuzzSplitAddresses(f *testing.F) {
	for _, s := range []string{
		"a@x.com;b@y.com", `"Kowalski, Jan" <jan@example.com>, anna@example.com`,
		`"a\";b" <a@x.com>; b@y.com`, `<a;b@x.com>,c@y.com`, `"unclosed; a@x.com`, " ;\u00a0, ",
	} {
		f.Add(s)
	}
	strip := func(s string) string {
		return strings.Map(func(r rune) rune {
			if r == ';' || r == ',' || unicode.IsSpace(r) {
				return -1
			}
			return r
		}, s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		entries := schema.SplitAddresses(s)
		for _, e := range entries {
			if e == "" || e != strings.TrimSpace(e) {
				t.Fatalf("SplitAddresses(%q): entry %q is empty or not trimmed", s, e)
			}
			if again := schema.SplitAddresses(e); len(again) != 1 || again[0] != e {
				t.Fatalf("SplitAddresses(%q): entry %q splits again into %q", s, e, again)
			}
		}
		if got, want := strip(strings.Join(entries, ";")), strip(s); got != want {
			t.Fatalf("SplitAddresses(%q) = %q loses content: %q, want %q", s, entries, got, want)
		}
	})
}

// TestSchemaAgreementGenerated is FuzzSchemaAgreement on payloads built from
// the edge values of every field, which byte mutations rarely reach: a valid
// payload (keys in random spellings) with a few values swapped for edge
// values.
func TestSchemaAgreementGenerated(t *testing.T) {
	// The first value of each list is valid.
	addresses := []string{`"a@x.com"`, `null`, `""`, `" ; , "`, `"\u00a0\u3000"`, `"a@x.com;b@y.com"`,
		`"\"K, J\" <j@x.com>, b@y.com"`, `"nope"`, `"a@x.com\nb@y.com"`, `"a@x.com;\r\n"`, `["a@x.com", null, ""]`,
		`[]`, `[""]`, `[5]`, `5`, `{}`}
	oneLine := []string{`"Zażółć gęślą jaźń"`, `null`, `""`, `"a\nb"`, `"a\rb"`, `"\u2028"`, `true`}
	values := map[string][]string{
		"To": addresses, "CC": addresses, "Bcc": addresses, "ReplyTo": addresses,
		"From":       {`"\"S\" <s@x.com>"`, `null`, `""`, `"a@x.com"`, `" "`, `"x"`, `"a@x.com\r\n"`, `5`},
		"Subject":    oneLine,
		"Connection": oneLine,
		"Body":       {`"x\ny"`, `null`, `5`},
		"TextBody":   {`""`, `null`, `"x\ny"`, `[]`},
		"IsHtml":     {`true`, `false`, `null`, `"true"`, `"FALSE"`, `""`, `" true"`, `"1"`, `1`, `"yes"`, `[]`},
		"Importance": {`"high"`, `"LOW"`, `"Normal"`, `""`, `null`, `" high"`, `"urgent"`, `1`},
		"Id":         {`"a-1_B"`, `""`, `null`, `"a b"`, `"` + strings.Repeat("x", 129) + `"`, `5`},
		"Headers": {`{"X-A":"1","List-Unsubscribe":"<mailto:u@x.com>"}`, `null`, `{}`, `{"bcc":"x"}`, `{"Content-Type":"x"}`,
			`{"X-A":"a\nb"}`, `{"X A":"1"}`, `{"X-A":null}`, `{"X-A":5}`, `[]`, `{"content-x@":"1"}`, `{"":"1"}`},
		"Metadata":    {`{"k":"v"}`, `null`, `{}`, `{"k":null}`, `{"k":1}`, `"x"`},
		"Attachments": {`[]`, `null`, `[null]`, `[5]`, `{}`},
		"Priority":    {`"bulk"`, `"URGENT"`, `"Normal"`, `""`, `null`, `" bulk"`, `"high"`, `"bul\u212a"`, `1`, `["bulk"]`},
		"SendAt": {`"2026-12-01T09:00:00+01:00"`, `null`, `"2026-11-30T23:59:59.999Z"`, `"2000-02-29T00:00:00-23:59"`,
			`"9999-12-31T23:59:59Z"`, `"2026-12-01T09:00:00"`, `"2026-12-01 09:00:00Z"`, `"2026-12-01t09:00:00z"`,
			`"2026-12-01T09:00:00,5Z"`, `"2026-02-29T09:00:00Z"`, `"2026-12-31T23:59:60Z"`, `"2026-12-01T24:00:00Z"`,
			`"2026-12-01T09:00:00+24:00"`, `"2026-12-01T09:00:00+0100"`, `""`, `1764576000`, `true`},
		"BatchId": {`"spring-2026_1"`, `""`, `null`, `"a b"`, `"` + strings.Repeat("b", 129) + `"`, `5`},
		"Unsubscribe": {`false`, `null`, `true`, `"https://example.com/u?id=1"`, `"MAILTO:u@example.com"`, `""`,
			`"http://example.com/u"`, `"https://"`, `"https://:443/u"`, `"https://a@b@/u"`, `"mailto:"`, `"https://x.com/a b"`,
			`"https://x.com/\u003c"`, `"https://x.com/%zz"`, `"https://x.com/\r\n"`, `"https://x.com:abc/"`,
			`"https://[::1/"`, `"https://x%41.com"`, `"httpſ://x.com"`, `"true"`, `1`, `{}`},
		"IgnoreSuppression": {`false`, `true`, `null`, `"TRUE"`, `""`, `"1"`, `1`},
	}
	attValues := map[string][]string{
		"ContentData":             {`"aGVsbG8="`, `null`, `""`, `"aGVs\r\nbG8="`, `"QQ="`, `"QQ"`, `"!!"`, `5`},
		"ContentType":             {`"text/plain"`, `null`, `""`, `"text"`, `" text/plain ; charset=utf-8"`, `"text/plain; charset"`, `"a/b\n"`, `5`},
		"ContentTransferEncoding": {`"base64"`, `null`, `""`, `"BASE64"`, `"none"`, `" base64"`, `"qp"`, `5`},
		"FileName":                {`"a.txt"`, `null`, `""`, `" "`, `"\u00a0"`, `"Zażółć.pdf"`, `"a\nb"`, `5`},
		"ContentId":               {`"logo"`, `null`, `""`, `"<logo>"`, `"a b"`, `"a\nb"`, `5`},
	}
	rng := rand.New(rand.NewPCG(1, 2))
	spell := func(key string) string {
		switch rng.IntN(4) {
		case 0:
			return strings.ToLower(key)
		case 1:
			return strings.ToUpper(key)
		case 2:
			return strings.Map(func(r rune) rune {
				if rng.IntN(2) == 0 {
					return unicode.ToUpper(r)
				}
				return unicode.ToLower(r)
			}, key)
		}
		return key
	}
	// object builds a valid object of the required keys and some others,
	// then swaps up to changes values for random ones.
	object := func(values map[string][]string, required []string, changes int, set map[string]string) string {
		obj := map[string]string{}
		for _, key := range slices.Sorted(maps.Keys(values)) {
			if slices.Contains(required, key) || rng.IntN(2) == 0 {
				obj[key] = values[key][0]
			}
		}
		keys := slices.Sorted(maps.Keys(values))
		for range rng.IntN(changes + 1) {
			key := keys[rng.IntN(len(keys))]
			obj[key] = values[key][rng.IntN(len(values[key]))]
		}
		maps.Copy(obj, set)
		var parts []string
		for k, v := range obj {
			parts = append(parts, fmt.Sprintf("%q: %s", spell(k), v))
		}
		rng.Shuffle(len(parts), func(i, j int) { parts[i], parts[j] = parts[j], parts[i] })
		return "{" + strings.Join(parts, ", ") + "}"
	}
	s := schemas(t)
	var valid, goOnly, invalid int
	for range 1000 {
		var set map[string]string
		if rng.IntN(2) == 0 {
			var items []string
			for range 1 + rng.IntN(2) {
				items = append(items, object(attValues, []string{"FileName", "ContentData"}, 2, nil))
			}
			set = map[string]string{"Attachments": "[" + strings.Join(items, ", ") + "]"}
		}
		data := []byte(object(values, []string{"To"}, 2, set))
		_, goErr := goRequest(data)
		schemaErr := validateSchema(s.request, data)
		switch {
		case goErr == nil && schemaErr != nil:
			t.Fatalf("Go accepts %s, the JSON Schema rejects it: %v", data, schemaErr)
		case goErr == nil:
			valid++
		case schemaErr != nil:
			invalid++
		default:
			for _, fe := range fieldErrors(t, goErr) {
				if !goOnlyError(fe) {
					t.Fatalf("the JSON Schema accepts %s, Go rejects it: %v", data, goErr)
				}
			}
			goOnly++
		}
	}
	t.Logf("valid %d, rejected by both %d, rejected by Go only %d", valid, invalid, goOnly)
	if valid < 200 || invalid < 200 {
		t.Errorf("too few valid (%d) or invalid (%d) payloads to mean much", valid, invalid)
	}
}
