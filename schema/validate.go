package schema

import (
	"cmp"
	"errors"
	"fmt"
	"maps"
	"mime"
	"net/url"
	"regexp"
	"slices"
	"strings"
	"time"
	"unicode/utf8"
)

var errCRLF = errors.New("must not contain CR or LF")

// FieldError is one broken rule of a request, with the path of the field
// that breaks it, such as "Attachments[1].ContentData". The path is empty
// when the payload as a whole is at fault (not JSON, no recipient).
type FieldError struct {
	// Field is the path of the offending field, such as To[2],
	// Headers["Bcc"] or Attachments[1].ContentData; empty for the payload
	// as a whole.
	Field string `json:"Field"`
	// Message says what is wrong, for people.
	Message string `json:"Message"`
	// TooLarge marks a size limit; HTTP answers 413 for it.
	TooLarge bool `json:"-"`
}

// String returns "Field: Message", or the message alone when Field is empty.
func (e FieldError) String() string {
	if e.Field == "" {
		return e.Message
	}
	return e.Field + ": " + e.Message
}

// ValidationError lists every broken rule of a request at once. A request
// that yields one is never sent or retried: its result has Status 400.
type ValidationError struct {
	// Fields are the broken rules, at least one, in a stable order.
	Fields []FieldError
}

// Error joins the field errors with "; ".
func (e *ValidationError) Error() string {
	parts := make([]string, len(e.Fields))
	for i, f := range e.Fields {
		parts[i] = f.String()
	}
	return "invalid request: " + strings.Join(parts, "; ")
}

// TooLarge reports whether any field error is a size limit.
func (e *ValidationError) TooLarge() bool {
	return slices.ContainsFunc(e.Fields, func(f FieldError) bool { return f.TooLarge })
}

// Limits bounds what a request may ask for. A zero field means its default
// (see WithDefaults); a negative one means no limit.
type Limits struct {
	// MaxRequestBytes is the largest payload accepted. Default 8 MiB.
	// Validate can not see the payload; whoever reads it (worker, HTTP API)
	// compares its length with this limit before Decode.
	MaxRequestBytes int
	// MaxAttachmentBytes is the largest total decoded size of the
	// attachments. Default 6 MiB.
	MaxAttachmentBytes int
	// MaxRecipients is the largest number of To, CC and Bcc entries
	// together. Default 100.
	MaxRecipients int
	// MaxHeaders is the largest number of extra Headers. Default 50.
	MaxHeaders int
	// MaxHeaderLength is the longest extra header value, subject and
	// Unsubscribe URL, in bytes. Default 4096.
	MaxHeaderLength int
	// MaxSchedule is how far ahead of now SendAt may be. Default
	// DefaultMaxSchedule (30 days).
	MaxSchedule time.Duration
}

// DefaultMaxSchedule is the default of Limits.MaxSchedule: 30 days.
const DefaultMaxSchedule = 720 * time.Hour

// DefaultLimits are the limits a worker applies when configured with none.
var DefaultLimits = Limits{
	MaxRequestBytes:    8 << 20,
	MaxAttachmentBytes: 6 << 20,
	MaxRecipients:      100,
	MaxHeaders:         50,
	MaxHeaderLength:    4096,
}

// WithDefaults returns l with each zero field replaced by its default: that
// of DefaultLimits, and DefaultMaxSchedule for MaxSchedule.
func (l Limits) WithDefaults() Limits {
	def := func(v, d int) int {
		if v == 0 {
			return d
		}
		return v
	}
	return Limits{
		MaxRequestBytes:    def(l.MaxRequestBytes, DefaultLimits.MaxRequestBytes),
		MaxAttachmentBytes: def(l.MaxAttachmentBytes, DefaultLimits.MaxAttachmentBytes),
		MaxRecipients:      def(l.MaxRecipients, DefaultLimits.MaxRecipients),
		MaxHeaders:         def(l.MaxHeaders, DefaultLimits.MaxHeaders),
		MaxHeaderLength:    def(l.MaxHeaderLength, DefaultLimits.MaxHeaderLength),
		MaxSchedule:        cmp.Or(l.MaxSchedule, DefaultMaxSchedule),
	}
}

// over reports whether n exceeds the limit max (negative: no limit).
func over(n, max int) bool { return max >= 0 && n > max }

var templateName = regexp.MustCompile(`^[A-Za-z0-9_-]{1,64}$`)

var idPattern = regexp.MustCompile(`^[A-Za-z0-9_-]{1,128}$`)

// ValidID reports whether id is a valid request Id: [A-Za-z0-9_-]{1,128}.
func ValidID(id string) bool { return idPattern.MatchString(id) }

// structuralHeaders are the header fields a request can not set through
// Headers, because jetmail writes them from other fields; in lower case.
var structuralHeaders = map[string]bool{
	"from": true, "to": true, "cc": true, "bcc": true, "subject": true,
	"date": true, "message-id": true, "mime-version": true, "reply-to": true,
	"sender": true, "return-path": true, "importance": true, "x-priority": true,
}

// IsStructuralHeader reports whether name is a header field that Headers may
// not set: From, To, Cc, Bcc, Subject, Date, Message-ID, MIME-Version,
// Reply-To, Sender, Return-Path, Importance, X-Priority and any Content-*,
// in any case.
func IsStructuralHeader(name string) bool {
	lower := asciiLower(name)
	return structuralHeaders[lower] || strings.HasPrefix(lower, "content-")
}

// isListUnsubscribe reports whether name is List-Unsubscribe or
// List-Unsubscribe-Post in any case: the header fields that Unsubscribe
// writes.
func isListUnsubscribe(name string) bool {
	switch asciiLower(name) {
	case "list-unsubscribe", "list-unsubscribe-post":
		return true
	}
	return false
}

// uriChars reports whether s consists of the characters RFC 3986 allows in
// a URI (unreserved, reserved, and percent-encodings of two hex digits), so
// that it can stand between the angle brackets of List-Unsubscribe as it
// is.
func uriChars(s string) bool {
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c == '%':
			if i+2 >= len(s) || !isHex(s[i+1]) || !isHex(s[i+2]) {
				return false
			}
			i += 2
		case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9':
		case strings.IndexByte("-._~:/?#[]@!$&'()*+,;=", c) < 0:
			return false
		}
	}
	return true
}

// isHex reports whether c is a hexadecimal digit, in either case.
func isHex(c byte) bool {
	return '0' <= c && c <= '9' || 'a' <= c && c <= 'f' || 'A' <= c && c <= 'F'
}

// unsubscribeTarget reports whether the ASCII string s is a mailto: URL
// with something after the colon, or an https: URL with a host (after the
// last @ of the authority, if any, and before a port), schemes in any case.
func unsubscribeTarget(s string) bool {
	if hasPrefixFold(s, "mailto:") {
		return len(s) > len("mailto:")
	}
	if !hasPrefixFold(s, "https://") {
		return false
	}
	auth := s[len("https://"):]
	if i := strings.IndexAny(auth, "/?#"); i >= 0 {
		auth = auth[:i]
	}
	host := auth[strings.LastIndexByte(auth, '@')+1:]
	return host != "" && host[0] != ':'
}

// hasPrefixFold reports whether s begins with the ASCII prefix in any case.
func hasPrefixFold(s, prefix string) bool {
	return len(s) >= len(prefix) && asciiLower(s[:len(prefix)]) == prefix
}

// asciiLower lower-cases the ASCII letters of s only, as header field names
// are compared (strings.ToLower would also map, for example, the Kelvin sign
// to "k").
func asciiLower(s string) string {
	return strings.Map(func(r rune) rune {
		if 'A' <= r && r <= 'Z' {
			return r + ('a' - 'A')
		}
		return r
	}, s)
}

// validMediaType reports whether s is a media type with a subtype and
// well-formed parameters, such as "text/plain; charset=utf-8".
func validMediaType(s string) bool {
	if _, _, err := mime.ParseMediaType(s); err != nil {
		return false
	}
	// mime.ParseMediaType also takes a bare "text" (as in a
	// Content-Disposition) and lower-cases before it checks, so that a
	// Kelvin sign passes as "k"; check the type/subtype as written.
	base, _, _ := strings.Cut(s, ";")
	typ, sub, ok := strings.Cut(strings.TrimSpace(base), "/")
	return ok && isToken(typ) && isToken(sub)
}

// isToken reports whether s is an RFC 2045 token.
func isToken(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c <= ' ' || c >= 0x7f || strings.IndexByte(`()<>@,;:\"/[]?=`, c) >= 0 {
			return false
		}
	}
	return true
}

// validHeaderName reports whether name is an RFC 5322 field name: printable
// US-ASCII other than colon.
func validHeaderName(name string) bool {
	if name == "" || len(name) > 76 {
		return false
	}
	for i := 0; i < len(name); i++ {
		if c := name[i]; c < 33 || c > 126 || c == ':' {
			return false
		}
	}
	return true
}

// Validate checks r against every rule of the contract with DefaultLimits
// at the current time and returns a *ValidationError listing all broken
// rules, or nil.
func (r *Request) Validate() error { return r.ValidateLimits(DefaultLimits) }

// ValidateLimits is Validate with the given limits (zero fields take their
// defaults): ValidateAt(lim, time.Now()).
func (r *Request) ValidateLimits(lim Limits) error { return r.ValidateAt(lim, time.Now()) }

// ValidateAt is ValidateLimits at the time now, against which SendAt is
// checked: a SendAt more than lim.MaxSchedule after now is invalid, one
// before now is valid (it means now).
func (r *Request) ValidateAt(lim Limits, now time.Time) error {
	lim = lim.WithDefaults()
	var errs []FieldError
	add := func(field, format string, args ...any) {
		errs = append(errs, FieldError{Field: field, Message: fmt.Sprintf(format, args...)})
	}
	tooLarge := func(field, format string, args ...any) {
		errs = append(errs, FieldError{Field: field, Message: fmt.Sprintf(format, args...), TooLarge: true})
	}
	text := func(field, v string, header bool) {
		if !utf8.ValidString(v) {
			add(field, "not valid UTF-8")
		}
		if header && strings.ContainsAny(v, "\r\n") {
			add(field, "%v", errCRLF)
		}
	}

	if r.Id != "" && !ValidID(r.Id) {
		add("Id", "must match [A-Za-z0-9_-]{1,128}")
	}
	n := 0
	for _, f := range []struct {
		name string
		list AddressList
	}{{"To", r.To}, {"CC", r.CC}, {"Bcc", r.Bcc}, {"ReplyTo", r.ReplyTo}} {
		for i, s := range f.list {
			if _, err := ParseAddress(s); err != nil {
				add(fmt.Sprintf("%s[%d]", f.name, i), "%v", err)
			}
		}
		if f.name != "ReplyTo" {
			n += len(f.list)
		}
	}
	if n == 0 {
		add("", "no recipient: To, CC and Bcc are all empty")
	}
	if over(n, lim.MaxRecipients) {
		tooLarge("", "%d recipients, more than the limit of %d", n, lim.MaxRecipients)
	}
	if r.From != "" {
		if _, err := ParseAddress(r.From); err != nil {
			add("From", "%v", err)
		}
	}
	text("Subject", r.Subject, true)
	if over(len(r.Subject), lim.MaxHeaderLength) {
		tooLarge("Subject", "%d bytes, more than the limit of %d", len(r.Subject), lim.MaxHeaderLength)
	}
	text("Body", r.Body, false)
	text("TextBody", r.TextBody, false)
	if !r.Importance.Valid() {
		add("Importance", "want High, Normal or Low, got %q", string(r.Importance))
	}
	text("Connection", r.Connection, true)
	if r.Template != "" && !templateName.MatchString(r.Template) {
		add("Template", "must match [A-Za-z0-9_-]{1,64}")
	}
	if !r.Priority.Valid() {
		add("Priority", "want urgent, normal or bulk, got %q", string(r.Priority))
	}
	if r.SendAt != nil && lim.MaxSchedule >= 0 && r.SendAt.Sub(now) > lim.MaxSchedule {
		add("SendAt", "%s is more than %v ahead (the schedule limit)", r.SendAt.Format(time.RFC3339Nano), lim.MaxSchedule)
	}
	if r.BatchId != "" && !ValidID(r.BatchId) {
		add("BatchId", "must match [A-Za-z0-9_-]{1,128}")
	}
	if u := r.Unsubscribe; u.OneClick && u.URL != "" {
		add("Unsubscribe", "set either true or a URL, not both")
	} else if u.URL != "" {
		switch {
		case strings.ContainsAny(u.URL, "\r\n"):
			add("Unsubscribe", "%v", errCRLF)
		case !uriChars(u.URL):
			add("Unsubscribe", "want an https: or mailto: URL of RFC 3986 characters (percent-encode others), got %q", u.URL)
		case !unsubscribeTarget(u.URL):
			add("Unsubscribe", "want an https: or mailto: URL, got %q", u.URL)
		default:
			if _, err := url.Parse(u.URL); err != nil {
				add("Unsubscribe", "not a valid URL: %q", u.URL)
			}
		}
		if over(len(u.URL), lim.MaxHeaderLength) {
			tooLarge("Unsubscribe", "%d bytes, more than the limit of %d", len(u.URL), lim.MaxHeaderLength)
		}
	}

	if over(len(r.Headers), lim.MaxHeaders) {
		tooLarge("Headers", "%d headers, more than the limit of %d", len(r.Headers), lim.MaxHeaders)
	}
	for _, name := range slices.Sorted(maps.Keys(r.Headers)) {
		v := r.Headers[name]
		path := fmt.Sprintf("Headers[%q]", name)
		switch {
		case !validHeaderName(name):
			add(path, "not a valid header name")
		case IsStructuralHeader(name):
			add(path, "a structural header can not be set through Headers")
		case !r.Unsubscribe.IsZero() && isListUnsubscribe(name):
			add(path, "set either Unsubscribe or this header, not both")
		}
		text(path, v, true)
		if over(len(v), lim.MaxHeaderLength) {
			tooLarge(path, "%d bytes, more than the limit of %d", len(v), lim.MaxHeaderLength)
		}
	}
	for _, k := range slices.Sorted(maps.Keys(r.Metadata)) {
		text(fmt.Sprintf("Metadata[%q]", k), r.Metadata[k], false)
	}

	total := 0
	for i := range r.Attachments {
		a := &r.Attachments[i]
		p := fmt.Sprintf("Attachments[%d].", i)
		if strings.TrimSpace(a.FileName) == "" {
			add(p+"FileName", "required")
		}
		text(p+"FileName", a.FileName, true)
		text(p+"ContentId", a.ContentId, true)
		if strings.ContainsAny(a.ContentId, "<> \t") {
			add(p+"ContentId", "must not contain angle brackets or spaces")
		}
		if a.ContentType != "" {
			if strings.ContainsAny(a.ContentType, "\r\n") {
				add(p+"ContentType", "%v", errCRLF)
			} else if !validMediaType(a.ContentType) {
				add(p+"ContentType", "not a valid media type: %q", a.ContentType)
			}
		}
		switch enc := strings.ToLower(a.ContentTransferEncoding); enc {
		case "", "none", "base64":
		default:
			add(p+"ContentTransferEncoding", "want base64 or none, got %q", a.ContentTransferEncoding)
		}
		b, err := a.Content()
		if err != nil {
			add(p+"ContentData", "not valid base64")
		}
		total += len(b)
	}
	if over(total, lim.MaxAttachmentBytes) {
		tooLarge("Attachments", "%d bytes in all, more than the limit of %d", total, lim.MaxAttachmentBytes)
	}
	if len(errs) > 0 {
		return &ValidationError{Fields: errs}
	}
	return nil
}
