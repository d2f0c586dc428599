package schema_test

import (
	"encoding/json"
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
