package schema

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"regexp"
	"slices"
	"strings"
	"time"
	"unicode"
	"unicode/utf16"
	"unicode/utf8"
)

// Decode parses a request payload. Keys are matched case-insensitively and
// unknown keys are ignored, so connector payloads decode unchanged; JSON null
// is the same as an absent key. A payload that is not a JSON object, whose
// values have the wrong types, or that has an attachment without ContentData
// yields a *ValidationError naming every offending field, in the order of
// the contract's table.
//
// Decode checks only the shape of the payload, not the rules of the contract;
// call Validate for those. Empty Headers and Metadata objects decode as nil
// maps, so that a decoded request equals the decoding of its own encoding.
func Decode(data []byte) (*Request, error) {
	var raw map[string]json.RawMessage
	if err := json.Unmarshal(data, &raw); err != nil {
		msg := "not valid JSON"
		var se *json.SyntaxError
		var te *json.UnmarshalTypeError
		switch {
		case errors.As(err, &se):
			msg = fmt.Sprintf("not valid JSON: %v (at byte %d)", se, se.Offset)
		case errors.As(err, &te):
			msg = "want a JSON object, got " + te.Value
		}
		return nil, &ValidationError{Fields: []FieldError{{Field: "", Message: msg}}}
	}
	if raw == nil {
		return nil, &ValidationError{Fields: []FieldError{{Field: "", Message: "want a JSON object, got null"}}}
	}
	var r Request
	d := decoder{obj: raw}
	d.value("To", &r.To)
	d.value("CC", &r.CC)
	d.value("Bcc", &r.Bcc)
	d.value("From", &r.From)
	d.value("Subject", &r.Subject)
	d.value("Body", &r.Body)
	d.value("IsHtml", &r.IsHtml)
	d.value("Importance", &r.Importance)
	if v, ok := d.lookup("Attachments"); ok && !isNull(v) {
		// The common case, an array of objects, is decoded in one go; only
		// when that fails is it taken apart item by item, to name the item
		// at fault.
		var objs []map[string]json.RawMessage
		if err := json.Unmarshal(v, &objs); err != nil {
			objs = nil
			var items []json.RawMessage
			if err := json.Unmarshal(v, &items); err != nil {
				d.fail("Attachments", "want an array of objects")
			}
			for _, item := range items {
				var obj map[string]json.RawMessage
				if json.Unmarshal(item, &obj) != nil {
					obj = nil
				}
				objs = append(objs, obj)
			}
		}
		for i, obj := range objs {
			path := fmt.Sprintf("Attachments[%d]", i)
			if obj == nil {
				d.fail(path, "want an object")
				continue
			}
			var a Attachment
			ad := decoder{obj: obj, prefix: path + ".", errs: d.errs}
			if v, ok := ad.lookup("ContentData"); !ok || isNull(v) {
				ad.fail("ContentData", "required")
			} else {
				ad.value("ContentData", &a.ContentData)
			}
			ad.value("ContentType", &a.ContentType)
			ad.value("ContentTransferEncoding", &a.ContentTransferEncoding)
			ad.value("FileName", &a.FileName)
			ad.value("ContentId", &a.ContentId)
			d.errs = ad.errs
			r.Attachments = append(r.Attachments, a)
		}
	}
	d.value("Id", &r.Id)
	d.value("ReplyTo", &r.ReplyTo)
	d.value("TextBody", &r.TextBody)
	r.Headers = d.stringMap("Headers")
	d.value("Connection", &r.Connection)
	r.Metadata = d.stringMap("Metadata")
	d.value("Template", &r.Template)
	d.value("TemplateData", &r.TemplateData)
	if len(r.TemplateData) == 0 {
		r.TemplateData = nil
	}
	d.value("Priority", &r.Priority)
	r.SendAt = d.timeValue("SendAt")
	d.value("BatchId", &r.BatchId)
	d.value("Unsubscribe", &r.Unsubscribe)
	d.value("IgnoreSuppression", &r.IgnoreSuppression)
	if len(d.errs) > 0 {
		return nil, &ValidationError{Fields: d.errs}
	}
	return &r, nil
}

// Identify reads, from a payload that Decode refused, what the result event
// of the invalid request should still carry: its Id and BatchId, and with
// metadata its Metadata, as far as they can be read (a key of the wrong
// type is left out; so are Metadata entries that are not strings). A
// payload that is not a JSON object yields an empty Request. Contract §2:
// the Id of a request is its Id key whenever the body can be parsed.
func Identify(data []byte, metadata bool) *Request {
	var raw map[string]json.RawMessage
	if json.Unmarshal(data, &raw) != nil || raw == nil {
		return &Request{}
	}
	d := decoder{obj: raw}
	var r Request
	d.value("Id", &r.Id)
	d.value("BatchId", &r.BatchId)
	if metadata {
		r.Metadata = d.stringMap("Metadata")
	}
	return &r
}

// decoder decodes the values of one JSON object, collecting a FieldError
// per value of the wrong type.
type decoder struct {
	obj    map[string]json.RawMessage
	prefix string // path of the object, with a trailing dot
	errs   []FieldError
	// least maps each lower-case key of an object whose keys are all
	// ASCII to the least of its spellings; it is built at the first
	// look-up that needs it, and stays nil for other objects.
	least map[string]string
	// unicode is set when obj has a key beyond ASCII, which only
	// strings.EqualFold matches as lookupFold does.
	unicode bool
}

// lookup is lookupFold(d.obj, key), without going through every key of
// the object for each key the request leaves out.
func (d *decoder) lookup(key string) (json.RawMessage, bool) {
	lk := strings.ToLower(key)
	if v, ok := d.obj[lk]; ok {
		return v, true
	}
	if v, ok := d.obj[key]; ok {
		return v, true
	}
	if d.least == nil && !d.unicode {
		d.least = make(map[string]string, len(d.obj))
		for k := range d.obj {
			if !isASCII(k) {
				d.least, d.unicode = nil, true
				break
			}
			l := strings.ToLower(k)
			if cur, ok := d.least[l]; !ok || k < cur {
				d.least[l] = k
			}
		}
	}
	if d.unicode {
		return lookupFold(d.obj, key)
	}
	k, ok := d.least[lk]
	return d.obj[k], ok
}

// isASCII reports whether s is all ASCII.
func isASCII(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] >= utf8.RuneSelf {
			return false
		}
	}
	return true
}

func (d *decoder) fail(field, msg string) {
	d.errs = append(d.errs, FieldError{Field: d.prefix + field, Message: msg})
}

// value unmarshals the value of key (matched without regard to case) into
// target. JSON null leaves target at its zero value.
func (d *decoder) value(key string, target any) {
	v, ok := d.lookup(key)
	if !ok || isNull(v) {
		return
	}
	switch t := target.(type) {
	case *string:
		if str, ok := fastString(v); ok {
			*t = str
			return
		}
	case *AddressList:
		// What AddressList.UnmarshalJSON does with a string, without
		// validating the JSON twice more.
		if str, ok := fastString(v); ok {
			*t = SplitAddresses(str)
			return
		}
	}
	if err := json.Unmarshal(v, target); err != nil {
		d.fail(key, typeMessage(err))
	}
}

// rfc3339 is the form of a time in a request: RFC 3339 with an offset, in
// upper case, with the ranges a regular expression can check. time.Parse
// checks the rest (the days of each month) and would also take a comma
// before the fraction, which RFC 3339 does not.
var rfc3339 = regexp.MustCompile(`^[0-9]{4}-(?:0[1-9]|1[0-2])-(?:0[1-9]|[12][0-9]|3[01])T(?:[01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9](?:\.[0-9]+)?(?:Z|[+-](?:[01][0-9]|2[0-3]):[0-5][0-9])$`)

// errTime is the message of a time that is not one.
const errTime = "want an RFC 3339 time with an offset, such as 2026-12-01T09:00:00+01:00"

// timeValue decodes the value of key as an RFC 3339 time with an offset. JSON
// null yields nil, as does a value of any other form, which is an error.
func (d *decoder) timeValue(key string) *time.Time {
	v, ok := d.lookup(key)
	if !ok || isNull(v) {
		return nil
	}
	var s string
	if json.Unmarshal(v, &s) != nil || !rfc3339.MatchString(s) {
		d.fail(key, errTime)
		return nil
	}
	t, err := time.Parse(time.RFC3339, s)
	if err != nil {
		d.fail(key, errTime)
		return nil
	}
	return &t
}

// fastString decodes a JSON string straight from its bytes. The payload
// has already been validated as a whole, so scanning a large Body or
// ContentData again, as json.Unmarshal would, buys nothing. Strings with
// invalid UTF-8 (which encoding/json replaces byte by byte) are left to
// json.Unmarshal; FuzzFastString holds the two to the same answer.
func fastString(v json.RawMessage) (string, bool) {
	if len(v) < 2 || v[0] != '"' || v[len(v)-1] != '"' {
		return "", false
	}
	inner := v[1 : len(v)-1]
	if !utf8.Valid(inner) {
		return "", false
	}
	first := bytes.IndexByte(inner, '\\')
	if first < 0 {
		return string(inner), true
	}
	return unescape(inner, first)
}

// unescape decodes the escapes of the inside of a JSON string, the first
// of which is at inner[first], as encoding/json does: a \u escape of a
// surrogate that does not start a valid pair becomes U+FFFD. It answers
// false for anything that is not a well-formed escape.
func unescape(inner []byte, first int) (string, bool) {
	out := make([]byte, 0, len(inner))
	out = append(out, inner[:first]...)
	for i := first; i < len(inner); {
		c := inner[i]
		if c != '\\' {
			j := bytes.IndexByte(inner[i:], '\\')
			if j < 0 {
				out = append(out, inner[i:]...)
				break
			}
			out = append(out, inner[i:i+j]...)
			i += j
			continue
		}
		if i+1 >= len(inner) {
			return "", false
		}
		switch inner[i+1] {
		case '"', '\\', '/':
			out = append(out, inner[i+1])
		case 'b':
			out = append(out, '\b')
		case 'f':
			out = append(out, '\f')
		case 'n':
			out = append(out, '\n')
		case 'r':
			out = append(out, '\r')
		case 't':
			out = append(out, '\t')
		case 'u':
			r := hex4(inner[i+2:])
			if r < 0 {
				return "", false
			}
			i += 6
			if utf16.IsSurrogate(r) {
				if len(inner) >= i+6 && inner[i] == '\\' && inner[i+1] == 'u' {
					if dec := utf16.DecodeRune(r, hex4(inner[i+2:])); dec != unicode.ReplacementChar {
						out = utf8.AppendRune(out, dec)
						i += 6
						continue
					}
				}
				r = unicode.ReplacementChar
			}
			out = utf8.AppendRune(out, r)
			continue
		default:
			return "", false
		}
		i += 2
	}
	return string(out), true
}

// hex4 is the value of the four hexadecimal digits b starts with, or -1.
func hex4(b []byte) rune {
	if len(b) < 4 {
		return -1
	}
	var r rune
	for _, c := range b[:4] {
		switch {
		case '0' <= c && c <= '9':
			c -= '0'
		case 'a' <= c && c <= 'f':
			c = c - 'a' + 10
		case 'A' <= c && c <= 'F':
			c = c - 'A' + 10
		default:
			return -1
		}
		r = r<<4 | rune(c)
	}
	return r
}

// stringMap decodes the value of key as an object of strings, naming the
// entry at fault in errors. Null entries are empty strings. An empty object
// yields nil.
func (d *decoder) stringMap(key string) map[string]string {
	v, ok := d.lookup(key)
	if !ok || isNull(v) {
		return nil
	}
	var raw map[string]json.RawMessage
	if err := json.Unmarshal(v, &raw); err != nil {
		d.fail(key, "want an object of strings, got "+jsonKind(v))
		return nil
	}
	if len(raw) == 0 {
		return nil
	}
	m := make(map[string]string, len(raw))
	for _, k := range slices.Sorted(maps.Keys(raw)) {
		var s string
		if isNull(raw[k]) {
			m[k] = ""
		} else if fs, ok := fastString(raw[k]); ok {
			m[k] = fs
		} else if err := json.Unmarshal(raw[k], &s); err != nil {
			d.fail(fmt.Sprintf("%s[%q]", key, k), "want a string, got "+jsonKind(raw[k]))
		} else {
			m[k] = s
		}
	}
	return m
}

// lookupFold finds key in obj without regard to case. When an object holds
// the same key in several spellings, the lower-case one wins, then the
// contract's spelling (key), then the first of the others in byte order, so
// that the outcome does not depend on map order.
func lookupFold(obj map[string]json.RawMessage, key string) (json.RawMessage, bool) {
	if v, ok := obj[strings.ToLower(key)]; ok {
		return v, true
	}
	if v, ok := obj[key]; ok {
		return v, true
	}
	best, found := "", false
	for k := range obj {
		if strings.EqualFold(k, key) && (!found || k < best) {
			best, found = k, true
		}
	}
	return obj[best], found
}

func isNull(v json.RawMessage) bool { return bytes.Equal(bytes.TrimSpace(v), []byte("null")) }

// jsonKind names the kind of a JSON value as encoding/json does in its
// errors: "string", "number", "bool", "array", "object" or "null".
func jsonKind(v json.RawMessage) string {
	v = bytes.TrimSpace(v)
	if len(v) == 0 {
		return "nothing"
	}
	switch v[0] {
	case '"':
		return "string"
	case '{':
		return "object"
	case '[':
		return "array"
	case 't', 'f':
		return "bool"
	case 'n':
		return "null"
	}
	return "number"
}

// typeMessage turns a json error for a single value into a short message.
func typeMessage(err error) string {
	var te *json.UnmarshalTypeError
	if errors.As(err, &te) {
		want := te.Type.Kind().String()
		switch want {
		case "map":
			want = "an object of strings"
		case "string":
			want = "a string"
		}
		return fmt.Sprintf("want %s, got %s", want, te.Value)
	}
	return err.Error()
}
