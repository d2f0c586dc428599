package schema_test

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
	"unicode"

	"github.com/google/go-cmp/cmp"
	"github.com/santhosh-tekuri/jsonschema/v6"

	"github.com/jetmail/jetmail/schema"
)

// fieldErrors returns the field errors of err, which must be nil or a
// *schema.ValidationError with at least one field.
func fieldErrors(t testing.TB, err error) []schema.FieldError {
	t.Helper()
	if err == nil {
		return nil
	}
	var ve *schema.ValidationError
	if !errors.As(err, &ve) {
		t.Fatalf("error %v (%T) is not a *schema.ValidationError", err, err)
	}
	if len(ve.Fields) == 0 {
		t.Fatalf("ValidationError without fields: %v", err)
	}
	return ve.Fields
}

// decodeValidate runs Decode and, when that succeeds, Validate.
func decodeValidate(t testing.TB, payload string) (*schema.Request, []schema.FieldError) {
	t.Helper()
	r, err := schema.Decode([]byte(payload))
	if err != nil {
		return nil, fieldErrors(t, err)
	}
	return r, fieldErrors(t, r.Validate())
}

func TestDecodeConnectorPayloads(t *testing.T) {
	tests := []struct {
		name    string
		payload string
		want    *schema.Request
	}{{
		name: "keys in any case",
		payload: `{"to": "jan@example.com", "SUBJECT": "Hi", "bOdY": "<p>Hi</p>", "ishtml": "true",
			"importance": "HIGH", "cC": "anna@example.com", "BCC": "archive@example.com",
			"from": "shop@example.com", "replyto": "help@example.com", "TEXTBODY": "Hi",
			"id": "order-1", "connection": "eu", "headers": {"X-Campaign": "spring"},
			"METADATA": {"tenant": "acme"}}`,
		want: &schema.Request{
			To: schema.AddressList{"jan@example.com"}, CC: schema.AddressList{"anna@example.com"},
			Bcc: schema.AddressList{"archive@example.com"}, From: "shop@example.com",
			Subject: "Hi", Body: "<p>Hi</p>", IsHtml: true, Importance: schema.ImportanceHigh,
			Id: "order-1", ReplyTo: schema.AddressList{"help@example.com"}, TextBody: "Hi",
			Headers: map[string]string{"X-Campaign": "spring"}, Connection: "eu",
			Metadata: map[string]string{"tenant": "acme"},
		},
	}, {
		name:    "To separated by semicolons",
		payload: `{"To": "a@example.com;b@example.org; c@example.net ;"}`,
		want:    &schema.Request{To: schema.AddressList{"a@example.com", "b@example.org", "c@example.net"}},
	}, {
		name:    "To separated by commas",
		payload: `{"To": "a@example.com, b@example.org,c@example.net"}`,
		want:    &schema.Request{To: schema.AddressList{"a@example.com", "b@example.org", "c@example.net"}},
	}, {
		name:    "To as an array, entries may hold lists",
		payload: `{"To": ["a@example.com", " b@example.org; c@example.net", "", null]}`,
		want:    &schema.Request{To: schema.AddressList{"a@example.com", "b@example.org", "c@example.net"}},
	}, {
		name:    "display names with separators inside quotes and angle brackets",
		payload: `{"To": "\"Kowalski, Jan\" <jan@example.com>; \"Nowak; Anna\" <anna@example.com>, Bartek <\"b;c\"@example.org>"}`,
		want: &schema.Request{To: schema.AddressList{
			`"Kowalski, Jan" <jan@example.com>`, `"Nowak; Anna" <anna@example.com>`, `Bartek <"b;c"@example.org>`,
		}},
	}, {
		name:    "escaped quote inside a display name",
		payload: `{"To": "\"Jan \\\"JK, Jr\\\" Kowalski\" <jan@example.com>, anna@example.com"}`,
		want:    &schema.Request{To: schema.AddressList{`"Jan \"JK, Jr\" Kowalski" <jan@example.com>`, "anna@example.com"}},
	}, {
		name:    "IsHtml as a bool",
		payload: `{"To": "a@example.com", "IsHtml": true}`,
		want:    &schema.Request{To: schema.AddressList{"a@example.com"}, IsHtml: true},
	}, {
		name:    "IsHtml as a string",
		payload: `{"To": "a@example.com", "IsHtml": "TRUE"}`,
		want:    &schema.Request{To: schema.AddressList{"a@example.com"}, IsHtml: true},
	}, {
		name:    "IsHtml FALSE",
		payload: `{"To": "a@example.com", "IsHtml": "FALSE"}`,
		want:    &schema.Request{To: schema.AddressList{"a@example.com"}},
	}, {
		name:    "IsHtml empty string",
		payload: `{"To": "a@example.com", "IsHtml": ""}`,
		want:    &schema.Request{To: schema.AddressList{"a@example.com"}},
	}, {
		name:    "Importance low in any case",
		payload: `{"To": "a@example.com", "Importance": "lOw"}`,
		want:    &schema.Request{To: schema.AddressList{"a@example.com"}, Importance: schema.ImportanceLow},
	}, {
		name:    "Importance normal",
		payload: `{"To": "a@example.com", "Importance": "NORMAL"}`,
		want:    &schema.Request{To: schema.AddressList{"a@example.com"}, Importance: schema.ImportanceNormal},
	}, {
		name: "null values are absent",
		payload: `{"To": "a@example.com", "CC": null, "Bcc": null, "From": null, "Subject": null, "Body": null,
			"IsHtml": null, "Importance": null, "Attachments": null, "Id": null, "ReplyTo": null,
			"TextBody": null, "Headers": null, "Connection": null, "Metadata": null,
			"Priority": null, "SendAt": null, "BatchId": null, "Unsubscribe": null, "IgnoreSuppression": null}`,
		want: &schema.Request{To: schema.AddressList{"a@example.com"}},
	}, {
		name:    "null entries in Headers and Metadata are empty strings",
		payload: `{"To": "a@example.com", "Headers": {"X-Empty": null}, "Metadata": {"k": null}}`,
		want: &schema.Request{To: schema.AddressList{"a@example.com"},
			Headers: map[string]string{"X-Empty": ""}, Metadata: map[string]string{"k": ""}},
	}, {
		name:    "empty objects and arrays decode as nil",
		payload: `{"To": "a@example.com", "CC": "", "Bcc": [], "Headers": {}, "Metadata": {}, "Attachments": []}`,
		want:    &schema.Request{To: schema.AddressList{"a@example.com"}},
	}, {
		name:    "unknown keys are ignored",
		payload: `{"To": "a@example.com", "Categories": 3, "Sensitivity": {"x": [1]}, "Attachment": 5}`,
		want:    &schema.Request{To: schema.AddressList{"a@example.com"}},
	}, {
		name: "attachments in any case, base64 with line breaks",
		payload: `{"To": "a@example.com", "attachments": [
			{"contentdata": "aGVs\r\nbG8g\nd29y bGQ=", "CONTENTTRANSFERENCODING": "Base64", "filename": "hello.txt"},
			{"ContentData": "plain", "ContentType": "text/plain", "FileName": "Zażółć gęślą jaźń.txt", "ContentId": "part1"}]}`,
		want: &schema.Request{To: schema.AddressList{"a@example.com"}, Attachments: []schema.Attachment{
			{ContentData: "aGVs\r\nbG8g\nd29y bGQ=", ContentTransferEncoding: "Base64", FileName: "hello.txt"},
			{ContentData: "plain", ContentType: "text/plain", FileName: "Zażółć gęślą jaźń.txt", ContentId: "part1"},
		}},
	}, {
		name:    "a key spelled twice: the lower-case spelling wins",
		payload: `{"To": "upper@example.com", "to": "lower@example.com", "tO": "mixed@example.com"}`,
		want:    &schema.Request{To: schema.AddressList{"lower@example.com"}},
	}, {
		name:    "a key spelled twice: then the contract's spelling",
		payload: `{"TO": "shout@example.com", "To": "canonical@example.com", "tO": "mixed@example.com"}`,
		want:    &schema.Request{To: schema.AddressList{"canonical@example.com"}},
	}, {
		name:    "a key spelled twice: then the first in byte order",
		payload: `{"tO": "mixed@example.com", "TO": "shout@example.com"}`,
		want:    &schema.Request{To: schema.AddressList{"shout@example.com"}},
	}, {
		name: "v2 keys in any case",
		payload: `{"to": "a@example.com", "PRIORITY": "Urgent", "sendat": "2026-12-01T09:00:00+01:00",
			"batchID": "spring-2026", "UNSUBSCRIBE": true, "ignoresuppression": "TRUE"}`,
		want: &schema.Request{To: schema.AddressList{"a@example.com"}, Priority: schema.LaneUrgent,
			SendAt: ptr(time.Date(2026, 12, 1, 8, 0, 0, 0, time.UTC)), BatchId: "spring-2026",
			Unsubscribe: schema.Unsubscribe{OneClick: true}, IgnoreSuppression: true},
	}, {
		name:    "Priority lanes are normalised to lower case",
		payload: `{"To": "a@example.com", "Priority": "BULK"}`,
		want:    &schema.Request{To: schema.AddressList{"a@example.com"}, Priority: schema.LaneBulk},
	}, {
		name:    "Priority empty is none",
		payload: `{"To": "a@example.com", "Priority": "", "BatchId": ""}`,
		want:    &schema.Request{To: schema.AddressList{"a@example.com"}},
	}, {
		name:    "SendAt in UTC with a fraction",
		payload: `{"To": "a@example.com", "SendAt": "2026-11-30T23:59:59.25Z"}`,
		want: &schema.Request{To: schema.AddressList{"a@example.com"},
			SendAt: ptr(time.Date(2026, 11, 30, 23, 59, 59, 250_000_000, time.UTC))},
	}, {
		name:    "SendAt in the past is valid",
		payload: `{"To": "a@example.com", "SendAt": "2000-01-01T00:00:00-05:30"}`,
		want: &schema.Request{To: schema.AddressList{"a@example.com"},
			SendAt: ptr(time.Date(2000, 1, 1, 5, 30, 0, 0, time.UTC))},
	}, {
		name:    "Unsubscribe URL",
		payload: `{"To": "a@example.com", "Unsubscribe": "https://example.com/u?id=42&list=news"}`,
		want: &schema.Request{To: schema.AddressList{"a@example.com"},
			Unsubscribe: schema.Unsubscribe{URL: "https://example.com/u?id=42&list=news"}},
	}, {
		name:    "Unsubscribe false is none, and List-Unsubscribe may be in Headers",
		payload: `{"To": "a@example.com", "Unsubscribe": false, "Headers": {"List-Unsubscribe": "<mailto:u@example.com>"}}`,
		want: &schema.Request{To: schema.AddressList{"a@example.com"},
			Headers: map[string]string{"List-Unsubscribe": "<mailto:u@example.com>"}},
	}, {
		name:    "IgnoreSuppression false",
		payload: `{"To": "a@example.com", "IgnoreSuppression": false}`,
		want:    &schema.Request{To: schema.AddressList{"a@example.com"}},
	}}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			// Decode several times: the outcome must not depend on map order.
			for range 5 {
				got, errs := decodeValidate(t, tt.payload)
				if errs != nil {
					t.Fatalf("Decode+Validate: %v", errs)
				}
				if diff := cmp.Diff(tt.want, got); diff != "" {
					t.Fatalf("Decode mismatch (-want +got):\n%s", diff)
				}
			}
		})
	}
}

func ptr[T any](v T) *T { return &v }

func TestAttachmentContent(t *testing.T) {
	tests := []struct {
		data, enc string
		want      string
		ok        bool
	}{
		{"aGVsbG8=", "base64", "hello", true},
		{"aGVsbG8", "BASE64", "hello", true},
		{"aGVs\r\nbG8=\r\n", "Base64", "hello", true},
		{" a G V s\tb G 8 = ", "base64", "hello", true},
		{"", "base64", "", true},
		{"QQ==", "base64", "A", true},
		{"QQ", "base64", "A", true},
		{"QUI=", "base64", "AB", true},
		{"QUI", "base64", "AB", true},
		{"QQ=", "base64", "", false},
		{"QQ===", "base64", "", false},
		{"QUI==", "base64", "", false},
		{"Q", "base64", "", false},
		{"====", "base64", "", false},
		{"aGVsbG8-", "base64", "", false}, // URL alphabet
		{"not base64!", "base64", "", false},
		{"aGVsbG8=", "none", "aGVsbG8=", true},
		{"aGVsbG8=", "", "aGVsbG8=", true},
		{"aGVsbG8=", " base64", "aGVsbG8=", true}, // not base64: Validate rejects the encoding
	}
	for _, tt := range tests {
		a := schema.Attachment{ContentData: tt.data, ContentTransferEncoding: tt.enc}
		got, err := a.Content()
		if (err == nil) != tt.ok || (tt.ok && string(got) != tt.want) {
			t.Errorf("Content(%q, %q) = %q, %v; want %q, ok %v", tt.data, tt.enc, got, err, tt.want, tt.ok)
		}
	}
}

func TestSplitAddresses(t *testing.T) {
	tests := []struct {
		in   string
		want []string
	}{
		{"", nil},
		{" ; , ;", nil},
		{"a@x.com", []string{"a@x.com"}},
		{"a@x.com;b@y.com", []string{"a@x.com", "b@y.com"}},
		{" a@x.com , b@y.com ;; c@z.com ", []string{"a@x.com", "b@y.com", "c@z.com"}},
		{`"Kowalski, Jan" <jan@example.com>`, []string{`"Kowalski, Jan" <jan@example.com>`}},
		{`"a\";b" <a@x.com>; b@y.com`, []string{`"a\";b" <a@x.com>`, "b@y.com"}},
		{`Jan <jan;x@example.com>, b@y.com`, []string{`Jan <jan;x@example.com>`, "b@y.com"}},
		{"\u00a0a@x.com\u3000;\u2028b@y.com", []string{"a@x.com", "b@y.com"}},
		{"a@x.com;\xff@y.com", []string{"a@x.com", "\xff@y.com"}}, // bytes kept as they are
	}
	for _, tt := range tests {
		if diff := cmp.Diff(tt.want, schema.SplitAddresses(tt.in)); diff != "" {
			t.Errorf("SplitAddresses(%q) mismatch (-want +got):\n%s", tt.in, diff)
		}
	}
}

func TestBool(t *testing.T) {
	for in, want := range map[string]bool{
		`true`: true, `false`: false, `null`: false, `"true"`: true, `"TRUE"`: true, `"True"`: true,
		`"false"`: false, `"FALSE"`: false, `""`: false, ` true `: true,
	} {
		var b schema.Bool = !schema.Bool(want)
		if err := json.Unmarshal([]byte(in), &b); err != nil || bool(b) != want {
			t.Errorf("Unmarshal(%s) = %v, %v; want %v", in, b, err, want)
		}
	}
	for _, in := range []string{`1`, `0`, `"1"`, `"yes"`, `" true"`, `"null"`, `[]`, `{}`} {
		var b schema.Bool
		if err := json.Unmarshal([]byte(in), &b); err == nil {
			t.Errorf("Unmarshal(%s) = %v, want an error", in, b)
		}
	}
	for b, want := range map[schema.Bool]string{true: "true", false: "false"} {
		if got, _ := json.Marshal(b); string(got) != want {
			t.Errorf("Marshal(%v) = %s, want %s", b, got, want)
		}
	}
}

func TestIsStructuralHeader(t *testing.T) {
	for _, name := range []string{"From", "to", "CC", "bcc", "SUBJECT", "Date", "Message-ID", "message-id",
		"MIME-Version", "Reply-To", "Sender", "Return-Path", "Importance", "X-Priority", "Content-Type",
		"content-transfer-encoding", "CONTENT-DISPOSITION", "Content-X@"} {
		if !schema.IsStructuralHeader(name) {
			t.Errorf("IsStructuralHeader(%q) = false, want true", name)
		}
	}
	for _, name := range []string{"List-Unsubscribe", "X-Campaign", "Contents", "X-Content-Type", "Fromage", "Received-SPF"} {
		if schema.IsStructuralHeader(name) {
			t.Errorf("IsStructuralHeader(%q) = true, want false", name)
		}
	}
}

func TestValidID(t *testing.T) {
	for id, want := range map[string]bool{
		"a": true, "order-10023_shipped": true, strings.Repeat("x", 128): true,
		"": false, strings.Repeat("x", 129): false, "a b": false, "a.b": false, "a/b": false,
		"zażółć": false, "a\n": false, "*": false, ">": false,
	} {
		if got := schema.ValidID(id); got != want {
			t.Errorf("ValidID(%q) = %v, want %v", id, got, want)
		}
	}
}

func TestRequestErrors(t *testing.T) {
	att := func(items ...string) string { return `[` + strings.Join(items, ",") + `]` }
	many := func(n int) string {
		var b strings.Builder
		for i := range n {
			fmt.Fprintf(&b, "r%d@example.com;", i)
		}
		return b.String()
	}
	type fe = schema.FieldError
	tests := []struct {
		name    string
		payload string
		want    []fe
	}{
		// Decode: the shape of the payload.
		{"not JSON", `{"To": }`, []fe{{Message: "not valid JSON: invalid character '}' looking for beginning of value (at byte 8)"}}},
		{"empty payload", ``, []fe{{Message: "not valid JSON: unexpected end of JSON input (at byte 0)"}}},
		{"an array", `["a@example.com"]`, []fe{{Message: "want a JSON object, got array"}}},
		{"a string", `"a@example.com"`, []fe{{Message: "want a JSON object, got string"}}},
		{"null", `null`, []fe{{Message: "want a JSON object, got null"}}},
		{"wrong types, every one reported in contract order",
			`{"To": 5, "cc": [1], "Subject": true, "Body": {}, "IsHtml": 1, "Importance": 2, "Attachments": {},
			  "Id": 7, "ReplyTo": false, "Headers": [], "Connection": 1.5, "Metadata": {"a": 1, "b": "ok", "c": []}}`,
			[]fe{
				{Field: "To", Message: "want a string or an array of strings, got 5"},
				{Field: "CC", Message: "want a string, got number"},
				{Field: "Subject", Message: "want a string, got bool"},
				{Field: "Body", Message: "want a string, got object"},
				{Field: "IsHtml", Message: "want true or false, got 1"},
				{Field: "Importance", Message: `want "High", "Normal" or "Low"`},
				{Field: "Attachments", Message: "want an array of objects"},
				{Field: "Id", Message: "want a string, got number"},
				{Field: "ReplyTo", Message: "want a string or an array of strings, got false"},
				{Field: "Headers", Message: "want an object of strings, got array"},
				{Field: "Connection", Message: "want a string, got number"},
				{Field: `Metadata["a"]`, Message: "want a string, got number"},
				{Field: `Metadata["c"]`, Message: "want a string, got array"},
			}},
		{"IsHtml strings other than true and false", `{"To": "a@example.com", "IsHtml": "yes, please use HTML here"}`,
			[]fe{{Field: "IsHtml", Message: `want true or false, got "yes, please use HTM…`}}},
		{"header value not a string", `{"To": "a@example.com", "Headers": {"X-Count": 3}}`,
			[]fe{{Field: `Headers["X-Count"]`, Message: "want a string, got number"}}},
		{"attachment items", `{"To": "a@example.com", "Attachments": ` + att(`5`, `null`, `{"FileName": "a.txt"}`,
			`{"FileName": "b.txt", "ContentData": null}`, `{"FileName": 1, "ContentData": 2, "ContentId": false}`) + `}`,
			[]fe{
				{Field: "Attachments[0]", Message: "want an object"},
				{Field: "Attachments[1]", Message: "want an object"},
				{Field: "Attachments[2].ContentData", Message: "required"},
				{Field: "Attachments[3].ContentData", Message: "required"},
				{Field: "Attachments[4].ContentData", Message: "want a string, got number"},
				{Field: "Attachments[4].FileName", Message: "want a string, got number"},
				{Field: "Attachments[4].ContentId", Message: "want a string, got bool"},
			}},

		// Validate: the rules of the contract.
		{"no recipient", `{"To": "", "CC": " ; ", "Bcc": [], "ReplyTo": "r@example.com"}`,
			[]fe{{Message: "no recipient: To, CC and Bcc are all empty"}}},
		{"no recipient, no keys", `{}`, []fe{{Message: "no recipient: To, CC and Bcc are all empty"}}},
		{"bad base64 in the second attachment", `{"To": "a@example.com", "Attachments": ` + att(
			`{"FileName": "a.txt", "ContentData": "aGVsbG8=", "ContentTransferEncoding": "base64"}`,
			`{"FileName": "b.txt", "ContentData": "aGVsbG8=!", "ContentTransferEncoding": "base64"}`) + `}`,
			[]fe{{Field: "Attachments[1].ContentData", Message: "not valid base64"}}},
		{"partial padding is not base64", `{"To": "a@example.com", "Attachments": ` + att(
			`{"FileName": "a.txt", "ContentData": "QQ=", "ContentTransferEncoding": "base64"}`) + `}`,
			[]fe{{Field: "Attachments[0].ContentData", Message: "not valid base64"}}},
		{"bad addresses", `{"To": "jan.example.com; \"Jan\" <jan@>", "CC": ["ok@example.com", "@example.com"],
			"Bcc": "<a@b@c>", "ReplyTo": "nobody", "From": "shop@example.com, other@example.com"}`,
			[]fe{
				{Field: "To[0]", Message: `not a valid email address: "jan.example.com"`},
				{Field: "To[1]", Message: `not a valid email address: "\"Jan\" <jan@>"`},
				{Field: "CC[1]", Message: `not a valid email address: "@example.com"`},
				{Field: "Bcc[0]", Message: `not a valid email address: "<a@b@c>"`},
				{Field: "ReplyTo[0]", Message: `not a valid email address: "nobody"`},
				{Field: "From", Message: `not a valid email address: "shop@example.com, other@example.com"`},
			}},
		{"CR or LF in Subject", `{"To": "a@example.com", "Subject": "Hi\r\nBcc: victim@example.org"}`,
			[]fe{{Field: "Subject", Message: "must not contain CR or LF"}}},
		{"LF alone in Subject", `{"To": "a@example.com", "Subject": "Hi\nthere"}`,
			[]fe{{Field: "Subject", Message: "must not contain CR or LF"}}},
		{"CR or LF in From", `{"To": "a@example.com", "From": "shop@example.com\r\nBcc: victim@example.org"}`,
			[]fe{{Field: "From", Message: "must not contain CR or LF"}}},
		{"CR or LF inside a recipient entry", `{"To": ["a@example.com\nBcc: victim@example.org"]}`,
			[]fe{{Field: "To[0]", Message: "must not contain CR or LF"}}},
		{"line breaks around entries are white space", `{"To": "a@example.com;\r\n b@example.com\r\n"}`, nil},
		{"CR or LF in a header value", `{"To": "a@example.com", "Headers": {"X-A": "1\r\nBcc: victim@example.org", "X-B": "2\r"}}`,
			[]fe{
				{Field: `Headers["X-A"]`, Message: "must not contain CR or LF"},
				{Field: `Headers["X-B"]`, Message: "must not contain CR or LF"},
			}},
		{"CR or LF in a file name and a content id", `{"To": "a@example.com", "Attachments": ` + att(
			`{"FileName": "a.txt\r\nContent-Type: text/html", "ContentData": "x", "ContentId": "x\ny"}`) + `}`,
			[]fe{
				{Field: "Attachments[0].FileName", Message: "must not contain CR or LF"},
				{Field: "Attachments[0].ContentId", Message: "must not contain CR or LF"},
			}},
		{"CR or LF in Connection and ContentType", `{"To": "a@example.com", "Connection": "eu\n", "Attachments": ` + att(
			`{"FileName": "a.txt", "ContentData": "x", "ContentType": "text/plain\r\nX-A: 1"}`) + `}`,
			[]fe{
				{Field: "Connection", Message: "must not contain CR or LF"},
				{Field: "Attachments[0].ContentType", Message: "must not contain CR or LF"},
			}},
		{"structural headers", `{"To": "a@example.com", "Headers": {"bcc": "x@example.org", "Content-Type": "text/html",
			"MIME-Version": "1.0", "message-id": "<x@y>", "X-Priority": "1", "List-Unsubscribe": "<mailto:u@example.com>"}}`,
			[]fe{
				{Field: `Headers["Content-Type"]`, Message: "a structural header can not be set through Headers"},
				{Field: `Headers["MIME-Version"]`, Message: "a structural header can not be set through Headers"},
				{Field: `Headers["X-Priority"]`, Message: "a structural header can not be set through Headers"},
				{Field: `Headers["bcc"]`, Message: "a structural header can not be set through Headers"},
				{Field: `Headers["message-id"]`, Message: "a structural header can not be set through Headers"},
			}},
		{"bad header names", `{"To": "a@example.com", "Headers": {"X A": "1", "X:B": "2", "": "3", "X-Zażółć": "4", "X-` + strings.Repeat("a", 75) + `": "5"}}`,
			[]fe{
				{Field: `Headers[""]`, Message: "not a valid header name"},
				{Field: `Headers["X A"]`, Message: "not a valid header name"},
				{Field: `Headers["X-Zażółć"]`, Message: "not a valid header name"},
				{Field: `Headers["X-` + strings.Repeat("a", 75) + `"]`, Message: "not a valid header name"},
				{Field: `Headers["X:B"]`, Message: "not a valid header name"},
			}},
		{"bad Id", `{"To": "a@example.com", "Id": "order 10023/shipped"}`,
			[]fe{{Field: "Id", Message: "must match [A-Za-z0-9_-]{1,128}"}}},
		{"Id too long", `{"To": "a@example.com", "Id": "` + strings.Repeat("x", 129) + `"}`,
			[]fe{{Field: "Id", Message: "must match [A-Za-z0-9_-]{1,128}"}}},
		{"bad Importance", `{"To": "a@example.com", "Importance": " high"}`,
			[]fe{{Field: "Importance", Message: `want High, Normal or Low, got " high"`}}},
		{"too many recipients", `{"To": "` + many(60) + `", "CC": "` + many(40) + `", "Bcc": "one-more@example.com"}`,
			[]fe{{Message: "101 recipients, more than the limit of 100", TooLarge: true}}},
		{"recipients at the limit", `{"To": "` + many(60) + `", "CC": "` + many(40) + `", "ReplyTo": "` + many(5) + `"}`, nil},
		{"Subject over the limit", `{"To": "a@example.com", "Subject": "` + strings.Repeat("ż", 2049) + `"}`,
			[]fe{{Field: "Subject", Message: "4098 bytes, more than the limit of 4096", TooLarge: true}}},
		{"attachment fields", `{"To": "a@example.com", "Attachments": ` + att(
			`{"FileName": " ", "ContentData": "x", "ContentTransferEncoding": "quoted-printable"}`,
			`{"FileName": "a.png", "ContentData": "x", "ContentId": "<logo>", "ContentType": "image"}`,
			`{"FileName": "b.txt", "ContentData": "x", "ContentId": "my logo", "ContentType": "text/plain; charset"}`,
			`{"FileName": "c.txt", "ContentData": "x", "ContentType": " text/plain ; charset=\"utf-8\";"}`) + `}`,
			[]fe{
				{Field: "Attachments[0].FileName", Message: "required"},
				{Field: "Attachments[0].ContentTransferEncoding", Message: `want base64 or none, got "quoted-printable"`},
				{Field: "Attachments[1].ContentId", Message: "must not contain angle brackets or spaces"},
				{Field: "Attachments[1].ContentType", Message: `not a valid media type: "image"`},
				{Field: "Attachments[2].ContentId", Message: "must not contain angle brackets or spaces"},
				{Field: "Attachments[2].ContentType", Message: `not a valid media type: "text/plain; charset"`},
			}},
		// v2 keys.
		{"v2 keys of the wrong types, in contract order",
			`{"To": "a@example.com", "IgnoreSuppression": "yes", "Unsubscribe": 5, "BatchId": 7, "SendAt": 5, "Priority": 1}`,
			[]fe{
				{Field: "Priority", Message: `want "urgent", "normal" or "bulk"`},
				{Field: "SendAt", Message: "want an RFC 3339 time with an offset, such as 2026-12-01T09:00:00+01:00"},
				{Field: "BatchId", Message: "want a string, got number"},
				{Field: "Unsubscribe", Message: "want true, false or an https: or mailto: URL, got 5"},
				{Field: "IgnoreSuppression", Message: `want true or false, got "yes"`},
			}},
		{"Unsubscribe empty or of other types", `{"To": "a@example.com", "Unsubscribe": ""}`,
			[]fe{{Field: "Unsubscribe", Message: `want true, false or an https: or mailto: URL, got ""`}}},
		{"Unsubscribe an object", `{"To": "a@example.com", "unsubscribe": {"URL": "https://example.com/u"}}`,
			[]fe{{Field: "Unsubscribe", Message: `want true, false or an https: or mailto: URL, got {"URL": "https://exa…`}}},
		{"bad Priority", `{"To": "a@example.com", "Priority": "high"}`,
			[]fe{{Field: "Priority", Message: `want urgent, normal or bulk, got "high"`}}},
		{"Priority with spaces", `{"To": "a@example.com", "Priority": " bulk"}`,
			[]fe{{Field: "Priority", Message: `want urgent, normal or bulk, got " bulk"`}}},
		{"bad BatchId", `{"To": "a@example.com", "BatchId": "spring 2026"}`,
			[]fe{{Field: "BatchId", Message: "must match [A-Za-z0-9_-]{1,128}"}}},
		{"BatchId too long", `{"To": "a@example.com", "BatchId": "` + strings.Repeat("b", 129) + `"}`,
			[]fe{{Field: "BatchId", Message: "must match [A-Za-z0-9_-]{1,128}"}}},
		{"SendAt more than 30 days ahead", `{"To": "a@example.com", "SendAt": "9999-12-31T23:59:59+01:00"}`,
			[]fe{{Field: "SendAt", Message: "9999-12-31T23:59:59+01:00 is more than 720h0m0s ahead (the schedule limit)"}}},
		{"Unsubscribe and List-Unsubscribe headers", `{"To": "a@example.com", "Unsubscribe": true, "Headers": {
			"list-unsubscribe": "<mailto:u@example.com>", "List-Unsubscribe-POST": "List-Unsubscribe=One-Click", "X-List-Unsubscribe": "1"}}`,
			[]fe{
				{Field: `Headers["List-Unsubscribe-POST"]`, Message: "set either Unsubscribe or this header, not both"},
				{Field: `Headers["list-unsubscribe"]`, Message: "set either Unsubscribe or this header, not both"},
			}},
		{"Unsubscribe URL and a List-Unsubscribe-Post header", `{"To": "a@example.com", "Unsubscribe": "mailto:u@example.com",
			"Headers": {"List-Unsubscribe-Post": "List-Unsubscribe=One-Click"}}`,
			[]fe{{Field: `Headers["List-Unsubscribe-Post"]`, Message: "set either Unsubscribe or this header, not both"}}},
		{"Unsubscribe: a bad URL and a header", `{"To": "a@example.com", "Unsubscribe": "http://example.com/u",
			"Headers": {"List-Unsubscribe": "<https://example.com/u>"}}`,
			[]fe{
				{Field: "Unsubscribe", Message: `want an https: or mailto: URL, got "http://example.com/u"`},
				{Field: `Headers["List-Unsubscribe"]`, Message: "set either Unsubscribe or this header, not both"},
			}},
		{"many errors at once", `{"Id": "a b", "To": "jan.example.com", "From": "x", "Subject": "a\nb",
			"Importance": "urgent", "Headers": {"Bcc": "v@example.org", "X-A": "\n"},
			"Attachments": [{"FileName": "", "ContentData": "@@@", "ContentTransferEncoding": "base64"}]}`,
			[]fe{
				{Field: "Id", Message: "must match [A-Za-z0-9_-]{1,128}"},
				{Field: "To[0]", Message: `not a valid email address: "jan.example.com"`},
				{Field: "From", Message: `not a valid email address: "x"`},
				{Field: "Subject", Message: "must not contain CR or LF"},
				{Field: "Importance", Message: `want High, Normal or Low, got "urgent"`},
				{Field: `Headers["Bcc"]`, Message: "a structural header can not be set through Headers"},
				{Field: `Headers["X-A"]`, Message: "must not contain CR or LF"},
				{Field: "Attachments[0].FileName", Message: "required"},
				{Field: "Attachments[0].ContentData", Message: "not valid base64"},
			}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, got := decodeValidate(t, tt.payload)
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("field errors mismatch (-want +got):\n%s", diff)
			}
		})
	}
}

func TestValidateLimits(t *testing.T) {
	r := &schema.Request{
		To:          schema.AddressList{"a@example.com", "b@example.com"},
		CC:          schema.AddressList{"c@example.com"},
		Subject:     "0123456789!",
		Headers:     map[string]string{"X-A": "1", "X-B": "0123456789!"},
		Attachments: []schema.Attachment{{FileName: "a", ContentData: "12345"}},
	}
	type fe = schema.FieldError
	tests := []struct {
		name string
		lim  schema.Limits
		want []fe
	}{
		{"defaults", schema.Limits{}, nil},
		{"small", schema.Limits{MaxRecipients: 2, MaxHeaders: 1, MaxHeaderLength: 10, MaxAttachmentBytes: 4}, []fe{
			{Message: "3 recipients, more than the limit of 2", TooLarge: true},
			{Field: "Subject", Message: "11 bytes, more than the limit of 10", TooLarge: true},
			{Field: "Headers", Message: "2 headers, more than the limit of 1", TooLarge: true},
			{Field: `Headers["X-B"]`, Message: "11 bytes, more than the limit of 10", TooLarge: true},
			{Field: "Attachments", Message: "5 bytes in all, more than the limit of 4", TooLarge: true},
		}},
		{"at the limits", schema.Limits{MaxRecipients: 3, MaxHeaders: 2, MaxHeaderLength: 11, MaxAttachmentBytes: 5}, nil},
		{"negative means none", schema.Limits{MaxRecipients: -1, MaxHeaders: -1, MaxHeaderLength: -1, MaxAttachmentBytes: -1}, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := r.ValidateLimits(tt.lim)
			if diff := cmp.Diff(tt.want, fieldErrors(t, err)); diff != "" {
				t.Errorf("field errors mismatch (-want +got):\n%s", diff)
			}
			if err != nil && !err.(*schema.ValidationError).TooLarge() {
				t.Errorf("TooLarge() = false for %v", err)
			}
		})
	}
	// Decoded base64 counts, not its encoding.
	b64 := &schema.Request{To: schema.AddressList{"a@example.com"}, Attachments: []schema.Attachment{
		{FileName: "a", ContentData: "MTIzNDU=", ContentTransferEncoding: "base64"}}}
	if err := b64.ValidateLimits(schema.Limits{MaxAttachmentBytes: 5}); err != nil {
		t.Errorf("5 decoded bytes against a limit of 5: %v", err)
	}
}

func TestValidationError(t *testing.T) {
	err := &schema.ValidationError{Fields: []schema.FieldError{
		{Message: "no recipient: To, CC and Bcc are all empty"},
		{Field: "Attachments[1].ContentData", Message: "not valid base64"},
	}}
	want := "invalid request: no recipient: To, CC and Bcc are all empty; Attachments[1].ContentData: not valid base64"
	if got := err.Error(); got != want {
		t.Errorf("Error() = %q, want %q", got, want)
	}
	if err.TooLarge() {
		t.Error("TooLarge() = true without a size error")
	}
	// FieldError travels in results as {"Field", "Message"}; TooLarge does not.
	b, _ := json.Marshal(schema.FieldError{Field: "Subject", Message: "too long", TooLarge: true})
	if string(b) != `{"Field":"Subject","Message":"too long"}` {
		t.Errorf("FieldError JSON = %s", b)
	}
}

// --- the JSON Schema documents and the Go code must agree ---

type compiledSchemas struct{ request, result *jsonschema.Schema }

var loadSchemas = sync.OnceValues(func() (compiledSchemas, error) {
	c := jsonschema.NewCompiler()
	c.DefaultDraft(jsonschema.Draft2020)
	c.AssertFormat()
	req, err := c.Compile("request.schema.json")
	if err != nil {
		return compiledSchemas{}, err
	}
	res, err := c.Compile("result.schema.json")
	if err != nil {
		return compiledSchemas{}, err
	}
	return compiledSchemas{req, res}, nil
})

func schemas(t testing.TB) compiledSchemas {
	t.Helper()
	s, err := loadSchemas()
	if err != nil {
		t.Fatalf("compile the JSON Schema documents: %v", err)
	}
	return s
}

// validateSchema validates a JSON text against sch.
func validateSchema(sch *jsonschema.Schema, data []byte) error {
	doc, err := jsonschema.UnmarshalJSON(bytes.NewReader(data))
	if err != nil {
		return err
	}
	return sch.Validate(doc)
}

// goRequest is the Go side's verdict on a request payload.
func goRequest(data []byte) (*schema.Request, error) {
	r, err := schema.Decode(data)
	if err != nil {
		return nil, err
	}
	return r, r.Validate()
}

// goResult is the Go side's verdict on a result event: it decodes into
// schema.Result without unknown keys and checks the rules of contract §3.
func goResult(data []byte) (*schema.Result, error) {
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	var r schema.Result
	if err := dec.Decode(&r); err != nil {
		return nil, err
	}
	if dec.More() {
		return nil, errors.New("data after the result")
	}
	return &r, checkResult(&r)
}

// statusOf maps each state to the statuses it may carry (contract §3).
var statusOf = map[schema.State][]schema.Status{
	schema.StateScheduled: {schema.Status202},
	schema.StateAccepted:  {schema.Status202},
	schema.StateDeferred:  {schema.Status202},
	schema.StateSent:      {schema.Status200},
	schema.StateFailed:    {schema.Status400, schema.Status401, schema.Status403, schema.Status404, schema.Status500},
	schema.StateCancelled: {schema.Status410},
}

var resultStatuses = []schema.Status{schema.Status200, schema.Status202, schema.Status400, schema.Status401,
	schema.Status403, schema.Status404, schema.Status410, schema.Status500}

// suppressionReasons are the reasons of the suppression list (contract §9).
var suppressionReasons = []string{"bounce", "unsubscribe", "manual"}

func checkResult(r *schema.Result) error {
	var errs []error
	if !schema.ValidID(r.Id) {
		errs = append(errs, fmt.Errorf("Id %q is not valid", r.Id))
	}
	if !slices.Contains(statusOf[r.State], r.Status) {
		errs = append(errs, fmt.Errorf("Status %v with State %q", r.Status, r.State))
	}
	if r.Attempt < 0 {
		errs = append(errs, fmt.Errorf("Attempt %d", r.Attempt))
	}
	if r.Time.IsZero() {
		errs = append(errs, errors.New("no Time"))
	}
	if r.State == schema.StateDeferred && r.NextAttemptAt == nil {
		errs = append(errs, errors.New("deferred without NextAttemptAt"))
	}
	if r.State == schema.StateScheduled && r.SendAt == nil {
		errs = append(errs, errors.New("scheduled without SendAt"))
	}
	if r.State == schema.StateScheduled && r.Envelope == nil {
		errs = append(errs, errors.New("scheduled without Envelope"))
	}
	if r.Envelope != nil && r.State != schema.StateAccepted && r.State != schema.StateScheduled {
		errs = append(errs, fmt.Errorf("Envelope on a %s event", r.State))
	}
	if e := r.Envelope; e != nil && (e.From == "" || len(e.Recipients) == 0 || slices.Contains(e.Recipients, "")) {
		errs = append(errs, fmt.Errorf("Envelope %+v", *e))
	}
	if r.Lane != "" && !slices.Contains([]schema.Lane{schema.LaneUrgent, schema.LaneNormal, schema.LaneBulk}, r.Lane) {
		errs = append(errs, fmt.Errorf("Lane %q", r.Lane))
	}
	if r.BatchId != "" && !schema.ValidID(r.BatchId) {
		errs = append(errs, fmt.Errorf("BatchId %q is not valid", r.BatchId))
	}
	if r.Smtp != nil && (r.Smtp.Code < 200 || r.Smtp.Code > 599) {
		errs = append(errs, fmt.Errorf("Smtp.Code %d", r.Smtp.Code))
	}
	for i, rr := range r.Recipients {
		if rr.Address == "" || !slices.Contains(resultStatuses, rr.Status) {
			errs = append(errs, fmt.Errorf("Recipients[%d] = %+v", i, rr))
		}
		if rr.Suppressed && (rr.Status != schema.Status403 || !slices.Contains(suppressionReasons, rr.Reason)) {
			errs = append(errs, fmt.Errorf("suppressed Recipients[%d] = %+v", i, rr))
		}
		if !rr.Suppressed && rr.Reason != "" {
			errs = append(errs, fmt.Errorf("Recipients[%d] has a Reason but is not suppressed: %+v", i, rr))
		}
	}
	return errors.Join(errs...)
}

func TestExamplesAgree(t *testing.T) {
	s := schemas(t)
	files, err := filepath.Glob("examples/*.json")
	if err != nil {
		t.Fatal(err)
	}
	invalid, _ := filepath.Glob("examples/invalid/*.json")
	files = append(files, invalid...)
	// The examples the contract's readers are pointed at must stay.
	for _, name := range []string{
		"examples/request-connector.json", "examples/request-html-inline.json", "examples/request-minimal.json",
		"examples/result-accepted.json", "examples/result-deferred.json", "examples/result-sent.json",
		"examples/result-failed-404.json", "examples/result-failed-400.json",
		"examples/invalid/no-recipient.json", "examples/invalid/bad-base64.json",
		"examples/invalid/crlf-subject.json", "examples/invalid/bad-address.json",
		"examples/request-v2.json", "examples/result-accepted-v2.json", "examples/result-scheduled.json",
		"examples/result-cancelled.json", "examples/result-deferred-partial.json", "examples/result-failed-403-suppressed.json",
		"examples/invalid/sendat-without-offset.json", "examples/invalid/bad-priority.json",
		"examples/invalid/unsubscribe-with-header.json", "examples/invalid/bad-unsubscribe-scheme.json",
	} {
		if !slices.Contains(files, name) {
			t.Errorf("example %s is missing", name)
		}
	}
	for _, file := range files {
		t.Run(filepath.ToSlash(file), func(t *testing.T) {
			data, err := os.ReadFile(file)
			if err != nil {
				t.Fatal(err)
			}
			wantValid := filepath.Base(filepath.Dir(file)) != "invalid"
			isResult := strings.HasPrefix(filepath.Base(file), "result-")

			sch := s.request
			var goErr error
			var encoded []byte
			if isResult {
				sch = s.result
				var r *schema.Result
				if r, goErr = goResult(data); goErr == nil {
					encoded, err = json.Marshal(r)
				}
			} else {
				var r *schema.Request
				if r, goErr = goRequest(data); goErr == nil {
					encoded, err = json.Marshal(r)
				}
			}
			if err != nil {
				t.Fatal(err)
			}
			schemaErr := validateSchema(sch, data)
			switch {
			case wantValid && schemaErr != nil:
				t.Errorf("JSON Schema rejects a valid example: %v", schemaErr)
			case !wantValid && schemaErr == nil:
				t.Errorf("JSON Schema accepts an invalid example")
			}
			switch {
			case wantValid && goErr != nil:
				t.Errorf("Go rejects a valid example: %v", goErr)
			case !wantValid && goErr == nil:
				t.Errorf("Go accepts an invalid example")
			}
			if !wantValid {
				// Both must reject it for the reason it was written for.
				why, ok := invalidWhy[filepath.Base(file)]
				if !ok {
					t.Fatalf("add %s to invalidWhy", filepath.Base(file))
				}
				if goErr != nil && !strings.Contains(goErr.Error(), why.goErr) {
					t.Errorf("Go rejects it for another reason: %v\nwant %q", goErr, why.goErr)
				}
				if locs := schemaLocations(schemaErr); schemaErr != nil && !slices.Contains(locs, why.schemaAt) {
					t.Errorf("JSON Schema rejects it at %q, want at %q: %v", locs, why.schemaAt, schemaErr)
				}
				return
			}
			// What Go writes for a valid example must be valid too.
			if err := validateSchema(sch, encoded); err != nil {
				t.Errorf("JSON Schema rejects Go's encoding %s: %v", encoded, err)
			}
		})
	}
}

// invalidWhy says why each example under invalid/ is invalid: a part of the
// Go error, and where the JSON Schema finds an error (a JSON pointer).
var invalidWhy = map[string]struct{ goErr, schemaAt string }{
	"no-recipient.json":                         {"no recipient", ""},
	"bad-base64.json":                           {"Attachments[0].ContentData: not valid base64", "/Attachments/0/ContentData"},
	"crlf-subject.json":                         {"Subject: must not contain CR or LF", "/Subject"},
	"bad-address.json":                          {`To[0]: not a valid email address: "jan.kowalski.example.com"`, "/To"},
	"structural-header.json":                    {`Headers["bcc"]: a structural header`, ""}, // jsonschema v6.0.3 locates propertyNames errors badly
	"bad-id.json":                               {"Id: must match", "/Id"},
	"bad-importance.json":                       {"Importance: want High, Normal or Low", "/Importance"},
	"ishtml-number.json":                        {"IsHtml: want true or false", "/IsHtml"},
	"attachment-without-filename.json":          {"Attachments[0].FileName: required", "/Attachments/0"},
	"crlf-header-value.json":                    {`Headers["X-Campaign"]: must not contain CR or LF`, "/Headers/X-Campaign"},
	"not-an-object.json":                        {"want a JSON object, got array", ""},
	"result-deferred-without-next-attempt.json": {"deferred without NextAttemptAt", ""},
	"result-sent-with-status-500.json":          {`Status 500 with State "sent"`, "/Status"},
	"result-unknown-key.json":                   {`unknown field "Retries"`, ""},
	"sendat-without-offset.json":                {"SendAt: want an RFC 3339 time with an offset", "/SendAt"},
	"bad-priority.json":                         {`Priority: want urgent, normal or bulk, got "high"`, "/Priority"},
	"unsubscribe-with-header.json":              {`Headers["List-Unsubscribe"]: set either Unsubscribe or this header, not both`, ""}, // propertyNames, as above
	"bad-unsubscribe-scheme.json":               {`Unsubscribe: want an https: or mailto: URL, got "http://example.com/unsubscribe?u=42"`, "/Unsubscribe"},
	"result-scheduled-without-sendat.json":      {"scheduled without SendAt", ""},
	"result-cancelled-with-status-200.json":     {`Status 200 with State "cancelled"`, "/Status"},
	"result-envelope-on-sent.json":              {"Envelope on a sent event", "/State"},
	"result-suppressed-without-reason.json":     {"suppressed Recipients[0]", "/Recipients/0"},
}

// schemaLocations lists the instance locations (JSON pointers) of the
// innermost causes of a JSON Schema validation error.
func schemaLocations(err error) []string {
	var ve *jsonschema.ValidationError
	if !errors.As(err, &ve) {
		return nil
	}
	var out []string
	var walk func(*jsonschema.ValidationError)
	walk = func(e *jsonschema.ValidationError) {
		if len(e.Causes) == 0 {
			loc := ""
			for _, tok := range e.InstanceLocation {
				loc += "/" + tok
			}
			out = append(out, loc)
		}
		for _, c := range e.Causes {
			walk(c)
		}
	}
	walk(ve)
	return out
}

// TestExampleAttachments checks that the attachments of the HTML example are
// what they claim to be.
func TestExampleAttachments(t *testing.T) {
	data, err := os.ReadFile("examples/request-html-inline.json")
	if err != nil {
		t.Fatal(err)
	}
	r, err := goRequest(data)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(r.Body, `src="cid:logo"`) || r.Attachments[0].ContentId != "logo" {
		t.Errorf("the HTML body does not refer to the inline part")
	}
	for prefix, a := range map[string]schema.Attachment{"\x89PNG\r\n\x1a\n": r.Attachments[0], "%PDF-": r.Attachments[1]} {
		b, err := a.Content()
		if err != nil || !bytes.HasPrefix(b, []byte(prefix)) {
			t.Errorf("%s: content %.10q, %v; want it to start with %q", a.FileName, b, err, prefix)
		}
	}
}

// jsonKeys returns the JSON keys of a struct type and those it always
// writes (no omitempty).
func jsonKeys(t reflect.Type) (all, always []string) {
	for i := range t.NumField() {
		f := t.Field(i)
		tag := f.Tag.Get("json")
		name, opts, _ := strings.Cut(tag, ",")
		if name == "-" || !f.IsExported() {
			continue
		}
		if name == "" {
			name = f.Name
		}
		all = append(all, name)
		if !strings.Contains(opts, "omitempty") {
			always = append(always, name)
		}
	}
	slices.Sort(all)
	slices.Sort(always)
	return all, always
}

func readSchema(t *testing.T, file string) map[string]any {
	t.Helper()
	data, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]any
	if err := json.Unmarshal(data, &m); err != nil {
		t.Fatal(err)
	}
	return m
}

func at(m map[string]any, path ...string) map[string]any {
	for _, p := range path {
		m, _ = m[p].(map[string]any)
	}
	return m
}

func sortedKeys(m map[string]any) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}

func strs(v any) []string {
	var out []string
	for _, s := range v.([]any) {
		out = append(out, s.(string))
	}
	slices.Sort(out)
	return out
}

// TestSchemaCoversStructs keeps the keys of the JSON Schema documents and
// of the Go types the same, so that a field added on one side only fails.
func TestSchemaCoversStructs(t *testing.T) {
	req := readSchema(t, "request.schema.json")
	res := readSchema(t, "result.schema.json")
	tests := []struct {
		name    string
		typ     reflect.Type
		obj     map[string]any
		request bool // keys are matched case-insensitively
	}{
		{"Request", reflect.TypeFor[schema.Request](), req, true},
		{"Attachment", reflect.TypeFor[schema.Attachment](), at(req, "$defs", "attachment"), true},
		{"Result", reflect.TypeFor[schema.Result](), res, false},
		{"SMTPReply", reflect.TypeFor[schema.SMTPReply](), at(res, "$defs", "smtpReply"), false},
		{"RecipientResult", reflect.TypeFor[schema.RecipientResult](), at(res, "$defs", "recipient"), false},
		{"Envelope", reflect.TypeFor[schema.Envelope](), at(res, "$defs", "envelope"), false},
		{"FieldError", reflect.TypeFor[schema.FieldError](), at(res, "$defs", "fieldError"), false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			all, always := jsonKeys(tt.typ)
			if diff := cmp.Diff(all, sortedKeys(at(tt.obj, "properties"))); diff != "" {
				t.Errorf("properties differ from the Go fields (-go +schema):\n%s", diff)
			}
			if !tt.request {
				// What Go always writes is required, and nothing else is.
				if diff := cmp.Diff(always, strs(tt.obj["required"])); diff != "" {
					t.Errorf("required differs from the fields without omitempty (-go +schema):\n%s", diff)
				}
				if tt.obj["additionalProperties"] != false {
					t.Errorf("additionalProperties is not false")
				}
				return
			}
			// Every key has a case-insensitive twin with the same definition.
			pattern := at(tt.obj, "patternProperties")
			for _, key := range all {
				want := at(tt.obj, "properties", key)["$ref"]
				var found []string
				for re, def := range pattern {
					rx := regexp.MustCompile(re)
					if rx.MatchString(key) && rx.MatchString(strings.ToLower(key)) && rx.MatchString(strings.ToUpper(key)) {
						found = append(found, re)
						if got := def.(map[string]any)["$ref"]; got != want {
							t.Errorf("%s: patternProperties %s is %v, properties is %v", key, re, got, want)
						}
					}
				}
				if len(found) != 1 {
					t.Errorf("%s: %d patternProperties match it in any case: %q", key, len(found), found)
				}
			}
		})
	}
	// The statuses of the schema are the Go constants of results.
	var enum []int
	for _, v := range at(res, "$defs", "status")["enum"].([]any) {
		enum = append(enum, int(v.(float64)))
	}
	var want []int
	for _, s := range resultStatuses {
		want = append(want, int(s))
	}
	if diff := cmp.Diff(want, enum); diff != "" {
		t.Errorf("status enum (-go +schema):\n%s", diff)
	}
	// The states of the schema are those of statusOf, and so are the
	// lanes and reasons.
	var states []string
	for st := range statusOf {
		states = append(states, string(st))
	}
	slices.Sort(states)
	if diff := cmp.Diff(states, strs(at(res, "properties", "State")["enum"])); diff != "" {
		t.Errorf("state enum (-go +schema):\n%s", diff)
	}
	lanes := []string{string(schema.LaneBulk), string(schema.LaneNormal), string(schema.LaneUrgent)}
	if diff := cmp.Diff(lanes, strs(at(res, "properties", "Lane")["enum"])); diff != "" {
		t.Errorf("lane enum (-go +schema):\n%s", diff)
	}
	if diff := cmp.Diff(slices.Sorted(slices.Values(suppressionReasons)), strs(at(res, "$defs", "recipient", "properties", "Reason")["enum"])); diff != "" {
		t.Errorf("reason enum (-go +schema):\n%s", diff)
	}
}

// TestResultJSON checks that the v2 fields are omitted when empty, so that
// an event without them is encoded as before, and spelled as in the
// contract when set.
func TestResultJSON(t *testing.T) {
	at := time.Date(2026, 11, 26, 18, 41, 22, 0, time.UTC)
	v1 := schema.Result{Id: "a", Status: schema.Status202, State: schema.StateAccepted, Attempt: 1, Time: at,
		Recipients: []schema.RecipientResult{{Address: "a@x.com", Status: schema.Status200}}}
	got, err := json.Marshal(v1)
	want := `{"Id":"a","Status":202,"State":"accepted","Attempt":1,"Recipients":[{"Address":"a@x.com","Status":200}],"Time":"2026-11-26T18:41:22Z"}`
	if err != nil || string(got) != want {
		t.Errorf("Marshal = %s, %v; want %s", got, err, want)
	}
	v2 := v1
	v2.State, v2.Lane, v2.BatchId, v2.SendAt, v2.Uncertain = schema.StateScheduled, schema.LaneBulk, "b-1", &at, true
	v2.Envelope = &schema.Envelope{From: "s@x.com", Recipients: []string{"a@x.com", "bcc@x.com"}, Subject: ""}
	v2.Recipients = []schema.RecipientResult{{Address: "a@x.com", Status: schema.Status403, Suppressed: true, Reason: "manual"}}
	got, err = json.Marshal(v2)
	want = `{"Id":"a","Status":202,"State":"scheduled","Attempt":1,` +
		`"Recipients":[{"Address":"a@x.com","Status":403,"Suppressed":true,"Reason":"manual"}],` +
		`"Lane":"bulk","BatchId":"b-1","SendAt":"2026-11-26T18:41:22Z",` +
		`"Envelope":{"From":"s@x.com","Recipients":["a@x.com","bcc@x.com"],"Subject":""},"Uncertain":true,` +
		`"Time":"2026-11-26T18:41:22Z"}`
	if err != nil || string(got) != want {
		t.Errorf("Marshal = %s, %v; want %s", got, err, want)
	}
	if _, err := goResult(got); err != nil {
		t.Errorf("the v2 event is not consistent: %v", err)
	}
	if err := validateSchema(schemas(t).result, got); err != nil {
		t.Errorf("the JSON Schema rejects the v2 event: %v", err)
	}
}

func TestStateFinal(t *testing.T) {
	for st, want := range map[schema.State]bool{
		schema.StateScheduled: false, schema.StateAccepted: false, schema.StateDeferred: false,
		schema.StateSent: true, schema.StateFailed: true, schema.StateCancelled: true, "": false, "sending": false,
	} {
		if got := st.Final(); got != want {
			t.Errorf("State(%q).Final() = %v, want %v", st, got, want)
		}
		if got := (&schema.Result{State: st}).Final(); got != want {
			t.Errorf("Result{State: %q}.Final() = %v, want %v", st, got, want)
		}
	}
	if schema.StateScheduled != "scheduled" || schema.StateCancelled != "cancelled" || schema.Status410 != 410 {
		t.Error("the v2 states and status are spelled as in the contract")
	}
}

// TestSchemaWhiteSpace checks that the white space class of the request
// schema is exactly what strings.TrimSpace trims (unicode.IsSpace), since
// the Go code decides blank addresses and file names with it.
func TestSchemaWhiteSpace(t *testing.T) {
	req := readSchema(t, "request.schema.json")
	pattern := at(req, "$defs", "noAddresses")["pattern"].(string) // ^[<space>;,]*$
	class := strings.TrimSuffix(strings.TrimPrefix(pattern, "^["), ";,]*$")
	rx := regexp.MustCompile("^[" + class + "]$")
	if len(unicode.White_Space.R32) > 0 {
		t.Fatal("unicode.White_Space has runes beyond the BMP; test them too")
	}
	for r := rune(0); r <= 0xffff; r++ {
		if r >= 0xd800 && r <= 0xdfff {
			continue // surrogates are not runes of a Go string
		}
		if got, want := rx.MatchString(string(r)), unicode.IsSpace(r); got != want {
			t.Errorf("schema white space class: %U matches %v, unicode.IsSpace %v", r, got, want)
		}
	}
}
