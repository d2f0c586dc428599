package schema_test

import (
	"encoding/json"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/jetmail/jetmail/schema"
)

func TestLane(t *testing.T) {
	for in, want := range map[string]schema.Lane{
		"urgent": schema.LaneUrgent, "URGENT": schema.LaneUrgent, "Normal": schema.LaneNormal,
		"bulk": schema.LaneBulk, "bUlK": schema.LaneBulk, "": "",
	} {
		got, err := schema.ParseLane(in)
		if err != nil || got != want {
			t.Errorf("ParseLane(%q) = %q, %v; want %q", in, got, err, want)
		}
		if !got.Valid() {
			t.Errorf("%q.Valid() = false", got)
		}
		var l schema.Lane = "x"
		if err := json.Unmarshal([]byte(`"`+in+`"`), &l); err != nil || l != want {
			t.Errorf("Unmarshal(%q) = %q, %v; want %q", in, l, err, want)
		}
	}
	for _, in := range []string{" bulk", "bulk ", "high", "low", "mail.bulk", "urgentt", "x"} {
		if got, err := schema.ParseLane(in); err == nil {
			t.Errorf("ParseLane(%q) = %q, want an error", in, got)
		} else if want := `want urgent, normal or bulk, got "` + in + `"`; err.Error() != want {
			t.Errorf("ParseLane(%q) error %q, want %q", in, err, want)
		}
		if schema.Lane(in).Valid() {
			t.Errorf("Lane(%q).Valid() = true", in)
		}
		// Decoding keeps other strings, for Validate to report.
		var l schema.Lane
		if err := json.Unmarshal([]byte(`"`+in+`"`), &l); err != nil || l != schema.Lane(in) {
			t.Errorf("Unmarshal(%q) = %q, %v; want it kept", in, l, err)
		}
	}
	for _, l := range []schema.Lane{schema.LaneUrgent, schema.LaneNormal, schema.LaneBulk} {
		if !l.Valid() {
			t.Errorf("%q.Valid() = false", l)
		}
	}
	if schema.Lane("Bulk").Valid() {
		t.Error(`Lane("Bulk").Valid() = true: only the normalised spelling is a lane`)
	}
	var l schema.Lane = "bulk"
	if err := json.Unmarshal([]byte(`null`), &l); err != nil || l != "" {
		t.Errorf("Unmarshal(null) = %q, %v; want empty", l, err)
	}
	for _, in := range []string{`1`, `true`, `["bulk"]`, `{}`} {
		if err := json.Unmarshal([]byte(in), &l); err == nil {
			t.Errorf("Unmarshal(%s) = %q, want an error", in, l)
		}
	}
}

// TestSendAtForms checks which strings decode as a SendAt: RFC 3339 with an
// offset, nothing else.
func TestSendAtForms(t *testing.T) {
	valid := map[string]time.Time{
		`"2026-12-01T09:00:00+01:00"`:           time.Date(2026, 12, 1, 8, 0, 0, 0, time.UTC),
		`"2026-12-01T09:00:00Z"`:                time.Date(2026, 12, 1, 9, 0, 0, 0, time.UTC),
		`"2026-12-01T09:00:00-00:00"`:           time.Date(2026, 12, 1, 9, 0, 0, 0, time.UTC),
		`"2026-12-01T09:00:00.123456789-23:59"`: time.Date(2026, 12, 2, 8, 59, 0, 123456789, time.UTC),
		`"2026-12-01T09:00:00.1234567891Z"`:     time.Date(2026, 12, 1, 9, 0, 0, 123456789, time.UTC),
		`"2028-02-29T00:00:00Z"`:                time.Date(2028, 2, 29, 0, 0, 0, 0, time.UTC),
		`"0000-01-01T00:00:00+01:00"`:           time.Date(-1, 12, 31, 23, 0, 0, 0, time.UTC),
		`"2026-12-01T09:00:00\u002b01:00"`:      time.Date(2026, 12, 1, 8, 0, 0, 0, time.UTC), // escapes are JSON's business
	}
	for in, want := range valid {
		r, err := schema.Decode([]byte(`{"To": "a@example.com", "SendAt": ` + in + `}`))
		if err != nil || r.SendAt == nil || !r.SendAt.Equal(want) {
			t.Errorf("SendAt %s: %v, %v; want %v", in, r, err, want)
		}
	}
	for _, in := range []string{
		`"2026-12-01T09:00:00"`, `"2026-12-01 09:00:00Z"`, `"2026-12-01t09:00:00Z"`, `"2026-12-01T09:00:00z"`,
		`"2026-12-01T09:00:00,5Z"`, `"2026-12-01T09:00:00.Z"`, `"2026-12-01T09:00Z"`, `"2026-12-01"`, `"09:00:00Z"`,
		`"2026-02-29T09:00:00Z"`, `"2026-04-31T09:00:00Z"`, `"2026-13-01T09:00:00Z"`, `"2026-12-00T09:00:00Z"`,
		`"2026-12-01T24:00:00Z"`, `"2026-12-01T09:60:00Z"`, `"2026-12-31T23:59:60Z"`,
		`"2026-12-01T09:00:00+24:00"`, `"2026-12-01T09:00:00+01:60"`, `"2026-12-01T09:00:00+0100"`, `"2026-12-01T09:00:00+01"`,
		`"2026-12-01T09:00:00 +01:00"`, `" 2026-12-01T09:00:00Z"`, `"2026-12-01T09:00:00Z "`, `"2026-12-01T09:00:00Z\n"`,
		`"+2026-12-01T09:00:00Z"`, `"12026-12-01T09:00:00Z"`, `"２０２６-12-01T09:00:00Z"`,
		`"Tue, 01 Dec 2026 09:00:00 +0100"`, `"now"`, `""`, `1764576000`, `true`, `{}`, `["2026-12-01T09:00:00Z"]`,
	} {
		_, err := schema.Decode([]byte(`{"To": "a@example.com", "sendAt": ` + in + `}`))
		want := []schema.FieldError{{Field: "SendAt", Message: "want an RFC 3339 time with an offset, such as 2026-12-01T09:00:00+01:00"}}
		if diff := cmp.Diff(want, fieldErrors(t, err)); diff != "" {
			t.Errorf("SendAt %s (-want +got):\n%s", in, diff)
		}
	}
}

func TestValidateAt(t *testing.T) {
	now := time.Date(2026, 12, 1, 12, 0, 0, 0, time.UTC)
	at := func(d time.Duration) *time.Time { return ptr(now.Add(d)) }
	cet := time.FixedZone("", 3600)
	type fe = schema.FieldError
	tests := []struct {
		name   string
		sendAt *time.Time
		lim    schema.Limits
		want   []fe
	}{
		{"none", nil, schema.Limits{}, nil},
		{"now", at(0), schema.Limits{}, nil},
		{"in the past", at(-48 * time.Hour), schema.Limits{}, nil},
		{"long ago", ptr(time.Date(1, 1, 1, 0, 0, 0, 0, time.UTC)), schema.Limits{}, nil},
		{"30 days ahead", at(720 * time.Hour), schema.Limits{}, nil},
		{"a nanosecond more", at(720*time.Hour + 1), schema.Limits{},
			[]fe{{Field: "SendAt", Message: "2026-12-31T12:00:00.000000001Z is more than 720h0m0s ahead (the schedule limit)"}}},
		{"written with its offset", ptr(time.Date(2027, 1, 1, 10, 0, 0, 0, cet)), schema.Limits{},
			[]fe{{Field: "SendAt", Message: "2027-01-01T10:00:00+01:00 is more than 720h0m0s ahead (the schedule limit)"}}},
		{"a smaller limit", at(2 * time.Hour), schema.Limits{MaxSchedule: time.Hour},
			[]fe{{Field: "SendAt", Message: "2026-12-01T14:00:00Z is more than 1h0m0s ahead (the schedule limit)"}}},
		{"at a smaller limit", at(time.Hour), schema.Limits{MaxSchedule: time.Hour}, nil},
		{"negative means none", ptr(time.Date(9999, 12, 31, 0, 0, 0, 0, time.UTC)), schema.Limits{MaxSchedule: -1}, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := &schema.Request{To: schema.AddressList{"a@example.com"}, SendAt: tt.sendAt}
			err := r.ValidateAt(tt.lim, now)
			if diff := cmp.Diff(tt.want, fieldErrors(t, err)); diff != "" {
				t.Errorf("field errors mismatch (-want +got):\n%s", diff)
			}
			if err != nil && err.(*schema.ValidationError).TooLarge() {
				t.Errorf("TooLarge() = true for %v: the schedule limit is a 400, not a 413", err)
			}
		})
	}
	// Validate and ValidateLimits check against the clock.
	soon := &schema.Request{To: schema.AddressList{"a@example.com"}, SendAt: ptr(time.Now().Add(29 * 24 * time.Hour))}
	late := &schema.Request{To: schema.AddressList{"a@example.com"}, SendAt: ptr(time.Now().Add(31 * 24 * time.Hour))}
	if err := soon.Validate(); err != nil {
		t.Errorf("Validate, SendAt in 29 days: %v", err)
	}
	if err := late.Validate(); err == nil || !strings.Contains(err.Error(), "ahead (the schedule limit)") {
		t.Errorf("Validate, SendAt in 31 days: %v, want the schedule limit", err)
	}
	if err := late.ValidateLimits(schema.Limits{MaxSchedule: 32 * 24 * time.Hour}); err != nil {
		t.Errorf("ValidateLimits, SendAt in 31 days with a limit of 32: %v", err)
	}
}

func TestLimitsWithDefaults(t *testing.T) {
	if schema.DefaultMaxSchedule != 720*time.Hour {
		t.Errorf("DefaultMaxSchedule = %v, want 720h (30 days)", schema.DefaultMaxSchedule)
	}
	if got := (schema.Limits{}).WithDefaults().MaxSchedule; got != schema.DefaultMaxSchedule {
		t.Errorf("default MaxSchedule = %v, want %v", got, schema.DefaultMaxSchedule)
	}
	if got := schema.DefaultLimits.WithDefaults().MaxSchedule; got != schema.DefaultMaxSchedule {
		t.Errorf("DefaultLimits.WithDefaults().MaxSchedule = %v, want %v", got, schema.DefaultMaxSchedule)
	}
	for _, d := range []time.Duration{-1, time.Hour, 1000 * time.Hour} {
		if got := (schema.Limits{MaxSchedule: d}).WithDefaults().MaxSchedule; got != d {
			t.Errorf("MaxSchedule %v becomes %v", d, got)
		}
	}
	// The other limits keep their defaults.
	want := schema.DefaultLimits
	want.MaxSchedule = schema.DefaultMaxSchedule
	if diff := cmp.Diff(want, schema.Limits{}.WithDefaults()); diff != "" {
		t.Errorf("Limits{}.WithDefaults() (-want +got):\n%s", diff)
	}
}

func TestUnsubscribeJSON(t *testing.T) {
	for in, want := range map[string]schema.Unsubscribe{
		`true`:                      {OneClick: true},
		` true `:                    {OneClick: true},
		`false`:                     {},
		`null`:                      {},
		`"https://example.com/u/1"`: {URL: "https://example.com/u/1"},
		`"mailto:u@example.com"`:    {URL: "mailto:u@example.com"},
		`"\u0068ttps://x.com"`:      {URL: "https://x.com"},
		`"not a URL"`:               {URL: "not a URL"}, // Validate reports it
		`"true"`:                    {URL: "true"},      // a string is a URL, and this one is not valid
	} {
		u := schema.Unsubscribe{URL: "before", OneClick: true}
		if err := json.Unmarshal([]byte(in), &u); err != nil || u != want {
			t.Errorf("Unmarshal(%s) = %+v, %v; want %+v", in, u, err, want)
		}
	}
	for _, in := range []string{`""`, `1`, `[]`, `{}`, `["https://x.com"]`} {
		var u schema.Unsubscribe
		if err := json.Unmarshal([]byte(in), &u); err == nil {
			t.Errorf("Unmarshal(%s) = %+v, want an error", in, u)
		}
	}
	for _, tt := range []struct {
		u    schema.Unsubscribe
		want string
	}{
		{schema.Unsubscribe{OneClick: true}, `true`},
		{schema.Unsubscribe{URL: "https://example.com/u?a=1&b=2"}, `"https://example.com/u?a=1\u0026b=2"`},
		{schema.Unsubscribe{}, `false`},
	} {
		if got, err := json.Marshal(tt.u); err != nil || string(got) != tt.want {
			t.Errorf("Marshal(%+v) = %s, %v; want %s", tt.u, got, err, tt.want)
		}
	}
	if got, err := json.Marshal(schema.Unsubscribe{OneClick: true, URL: "https://x.com"}); err == nil {
		t.Errorf("Marshal with OneClick and URL = %s, want an error", got)
	}
	// The zero value is omitted from a request, the others are not.
	for u, want := range map[schema.Unsubscribe]string{
		{}:                            `{"To":["a@x.com"]}`,
		{OneClick: true}:              `{"To":["a@x.com"],"Unsubscribe":true}`,
		{URL: "mailto:u@example.com"}: `{"To":["a@x.com"],"Unsubscribe":"mailto:u@example.com"}`,
	} {
		if u.IsZero() != (u == schema.Unsubscribe{}) {
			t.Errorf("%+v.IsZero() = %v", u, u.IsZero())
		}
		got, err := json.Marshal(&schema.Request{To: schema.AddressList{"a@x.com"}, Unsubscribe: u})
		if err != nil || string(got) != want {
			t.Errorf("Marshal(Request with %+v) = %s, %v; want %s", u, got, err, want)
		}
	}
	for u, want := range map[schema.Unsubscribe]bool{
		{URL: "https://example.com/u"}: true, {URL: "HTTPS://example.com/u"}: true, {URL: "hTtPs:x"}: true,
		{URL: "mailto:u@example.com"}: false, {URL: "http://example.com/u"}: false, {URL: "https"}: false,
		{URL: ""}: false, {OneClick: true}: false, {URL: "httpſ://example.com"}: false,
	} {
		if got := u.HTTPS(); got != want {
			t.Errorf("%+v.HTTPS() = %v, want %v", u, got, want)
		}
	}
}

// TestUnsubscribeURL checks the URLs Unsubscribe takes: https: with a host
// or mailto:, of RFC 3986 characters, that net/url parses.
func TestUnsubscribeURL(t *testing.T) {
	for _, u := range []string{
		"https://example.com", "https://example.com/u/42", "HTTPS://EXAMPLE.COM/u?id=42&list=news#x",
		"https://user:pass@example.com:8443/u", "https://[2001:db8::1]/u", "https://192.0.2.1/u",
		"https://a@b@example.com/u", "https://example.com:/u", "https://example.com/%E2%82%AC?x=%20",
		"https://example.com/u;a=1,b=2!$'()*+~", "mailto:u@example.com", "MailTo:u@example.com?subject=unsubscribe%2042",
		"mailto:?to=u@example.com", "mailto:x",
		"https://example.com/" + strings.Repeat("x", 4096-len("https://example.com/")),
	} {
		r := &schema.Request{To: schema.AddressList{"a@example.com"}, Unsubscribe: schema.Unsubscribe{URL: u}}
		if err := r.Validate(); err != nil {
			t.Errorf("Unsubscribe %q: %v", u, err)
		}
	}
	type fe = schema.FieldError
	scheme := func(u string) []fe {
		return []fe{{Field: "Unsubscribe", Message: "want an https: or mailto: URL, got " + strconv.Quote(u)}}
	}
	chars := func(u string) []fe {
		return []fe{{Field: "Unsubscribe", Message: "want an https: or mailto: URL of RFC 3986 characters (percent-encode others), got " + strconv.Quote(u)}}
	}
	parse := func(u string) []fe {
		return []fe{{Field: "Unsubscribe", Message: "not a valid URL: " + strconv.Quote(u)}}
	}
	long := "https://example.com/" + strings.Repeat("x", 4097-len("https://example.com/"))
	for u, want := range map[string][]fe{
		"http://example.com/u": scheme("http://example.com/u"), "ftp://example.com": scheme("ftp://example.com"),
		"example.com/u": scheme("example.com/u"), "//example.com/u": scheme("//example.com/u"),
		"https:example.com": scheme("https:example.com"), "https:/example.com": scheme("https:/example.com"),
		"https://": scheme("https://"), "https:///u": scheme("https:///u"), "https://?x": scheme("https://?x"),
		"https://:443/u": scheme("https://:443/u"), "https://u@/x": scheme("https://u@/x"), "https://a@b@:1": scheme("https://a@b@:1"),
		"mailto:": scheme("mailto:"), "mailto": scheme("mailto"), "https": scheme("https"),
		"https://example.com/a b": chars("https://example.com/a b"), "https://example.com/<a>": chars("https://example.com/<a>"),
		"https://example.com/\"": chars("https://example.com/\""), "https://example.com/ż": chars("https://example.com/ż"),
		"https://example.com/%zz": chars("https://example.com/%zz"), "mailto:%zz": chars("mailto:%zz"), "https://example.com/%4": chars("https://example.com/%4"),
		"https://example.com/{x}": chars("https://example.com/{x}"), "https://example.com/a|b": chars("https://example.com/a|b"),
		"https://example.com/\x00": chars("https://example.com/\x00"), "httpſ://example.com": chars("httpſ://example.com"),
		"https://example.com/\r\nBcc: victim@example.org": {{Field: "Unsubscribe", Message: "must not contain CR or LF"}},
		"https://example.com:abc/":                        parse("https://example.com:abc/"), "https://[::1/": parse("https://[::1/"),
		"https://exa%41mple.com": parse("https://exa%41mple.com"), "https://[]/u": parse("https://[]/u"),
		long: {{Field: "Unsubscribe", Message: "4097 bytes, more than the limit of 4096", TooLarge: true}},
	} {
		r := &schema.Request{To: schema.AddressList{"a@example.com"}, Unsubscribe: schema.Unsubscribe{URL: u}}
		if diff := cmp.Diff(want, fieldErrors(t, r.Validate())); diff != "" {
			t.Errorf("Unsubscribe %q (-want +got):\n%s", u, diff)
		}
	}
	r := &schema.Request{To: schema.AddressList{"a@example.com"}, Unsubscribe: schema.Unsubscribe{OneClick: true, URL: "https://example.com/u"}}
	want := []fe{{Field: "Unsubscribe", Message: "set either true or a URL, not both"}}
	if diff := cmp.Diff(want, fieldErrors(t, r.Validate())); diff != "" {
		t.Errorf("Unsubscribe with OneClick and URL (-want +got):\n%s", diff)
	}
	// The limit is MaxHeaderLength.
	r = &schema.Request{To: schema.AddressList{"a@example.com"}, Unsubscribe: schema.Unsubscribe{URL: "https://x.y"}}
	if err := r.ValidateLimits(schema.Limits{MaxHeaderLength: 11}); err != nil {
		t.Errorf("11 bytes against a limit of 11: %v", err)
	}
	err := r.ValidateLimits(schema.Limits{MaxHeaderLength: 10})
	if diff := cmp.Diff([]fe{{Field: "Unsubscribe", Message: "11 bytes, more than the limit of 10", TooLarge: true}}, fieldErrors(t, err)); diff != "" {
		t.Errorf("11 bytes against a limit of 10 (-want +got):\n%s", diff)
	}
}
