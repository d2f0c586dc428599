package suppress

import (
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/jetmail/jetmail/schema"
)

// Reason is why an address is on the suppression list.
type Reason string

// The reasons of the contract (§9).
const (
	// Bounce is a recipient refused permanently as unknown (550/551/553
	// with 5.1.x, or 5.1.x alone). It applies to every message and expires
	// (after 30 days by default).
	Bounce Reason = "bounce"
	// Unsubscribe is a recipient who unsubscribed, with the one-click
	// link or otherwise. It applies to the bulk lane and to messages that
	// carry Unsubscribe, and does not expire.
	Unsubscribe Reason = "unsubscribe"
	// Manual is an entry added by an operator. It applies to every message
	// and does not expire.
	Manual Reason = "manual"
)

// ParseReason returns the reason named s, in any case.
func ParseReason(s string) (Reason, error) {
	for _, r := range []Reason{Bounce, Unsubscribe, Manual} {
		if strings.EqualFold(s, string(r)) {
			return r, nil
		}
	}
	return "", fmt.Errorf("%w: want bounce, unsubscribe or manual, got %q", ErrInvalidReason, s)
}

// Valid reports whether r is one of the three reasons.
func (r Reason) Valid() bool { return r.rank() > 0 }

// rank orders the reasons by strength: an entry is replaced only by one of
// a stronger reason (and a bounce by a bounce, to renew it).
func (r Reason) rank() int {
	switch r {
	case Bounce:
		return 1
	case Unsubscribe:
		return 2
	case Manual:
		return 3
	}
	return 0
}

// replaces reports whether an entry of reason r takes the place of an
// existing, unexpired one of reason old.
func (r Reason) replaces(old Reason) bool {
	return r.rank() > old.rank() || (r == Bounce && old == Bounce)
}

// Entry is one address, or one @domain, on the suppression list. Its JSON
// is the contract's (schema/suppression.schema.json).
type Entry struct {
	// Address is the address in its canonical form (see Canonical), such
	// as "jan@example.com", or "@example.com" for a whole domain and its
	// subdomains.
	Address string `json:"Address"`
	// Reason is why it is listed.
	Reason Reason `json:"Reason"`
	// Time is when it was listed.
	Time time.Time `json:"Time"`
	// Id is the Id of the message that caused the entry, when there was
	// one (the bounced message); empty otherwise.
	Id string `json:"Id,omitempty"`
	// Expires is when the entry stops applying: set for bounces only.
	Expires *time.Time `json:"Expires,omitempty"`
}

// Domain reports whether e is an @domain entry.
func (e Entry) Domain() bool { return isDomain(e.Address) }

// Expired reports whether e has an expiry at or before now.
func (e Entry) Expired(now time.Time) bool { return e.Expires != nil && !now.Before(*e.Expires) }

// Applies reports whether e suppresses a message of lane l that carries
// Unsubscribe (unsubscribeMsg) or not: bounce and manual entries apply to
// every message, unsubscribe entries to the bulk lane and to messages with
// Unsubscribe. It does not look at the expiry.
func (e Entry) Applies(l schema.Lane, unsubscribeMsg bool) bool {
	if e.Reason == Unsubscribe {
		return l == schema.LaneBulk || unsubscribeMsg
	}
	return true
}

// Errors that callers can test for with errors.Is.
var (
	// ErrInvalidAddress is an address, or @domain, that Canonical does
	// not take.
	ErrInvalidAddress = errors.New("not a valid email address or @domain")
	// ErrInvalidReason is a reason other than bounce, unsubscribe and
	// manual.
	ErrInvalidReason = errors.New("not a valid reason")
	// ErrInvalidKey is a string that is not a key EncodeKey makes.
	ErrInvalidKey = errors.New("not a suppression list key")
	// ErrNotFound is an address that is not on the list (or whose entry
	// has expired).
	ErrNotFound = errors.New("not on the suppression list")
	// ErrMalformed is a key or value in the bucket that is not an entry
	// (written by something other than this package).
	ErrMalformed = errors.New("malformed suppression entry")
)

// Canonical returns the form in which the list holds address: its
// addr-spec as schema.ParseAddress reads it (without display name, the
// local part unquoted, as in net/mail.Address.Address), lower-cased; for
// "@domain", "@" and the domain lower-cased. It takes what ParseAddress
// takes, "Jan <Jan@Example.com>" and `"jan doe"@example.com` included, and
// the unquoted form it returns itself ("jan doe@example.com"), which is how
// workers and result events write recipients, when its local part has no
// specials other than inner spaces and dots (`"a@b"@example.com` must be
// written so). Surrounding white space is ignored. Errors wrap
// ErrInvalidAddress.
func Canonical(address string) (string, error) {
	s := strings.TrimSpace(address)
	if isDomain(s) {
		if c, ok := canonicalDomain(s[1:]); ok {
			return "@" + c, nil
		}
	} else if a, err := schema.ParseAddress(s); err == nil {
		return strings.ToLower(a.Address), nil
	} else if c := strings.ToLower(s); !strings.ContainsAny(c[:max(strings.LastIndexByte(c, '@'), 0)], `()<>[]:;@\,"`) && validUnquoted(c) {
		// Only the local parts that need quotes for white space or dots:
		// "a@b, c@d" is a typo, not the unquoted "a@b, c"@d.
		return c, nil
	}
	return "", fmt.Errorf("%w: %q", ErrInvalidAddress, address)
}

// isDomain reports whether s has the form of a domain entry: "@" and a
// domain (a local part may also begin with "@", but then another follows).
func isDomain(s string) bool { return strings.HasPrefix(s, "@") && !strings.Contains(s[1:], "@") }

// canonicalDomain returns d lower-cased when it is the domain of some
// address.
func canonicalDomain(d string) (string, bool) {
	a, err := schema.ParseAddress("x@" + d)
	if err != nil || !strings.HasPrefix(a.Address, "x@") {
		return "", false
	}
	return strings.ToLower(a.Address[2:]), true
}

// validUnquoted reports whether c is the unquoted addr-spec of a valid
// address: its local part, quoted, and its domain parse back to c.
func validUnquoted(c string) bool {
	at := strings.LastIndexByte(c, '@')
	if at <= 0 {
		return false
	}
	a, err := schema.ParseAddress(quoteLocal(c[:at]) + c[at:])
	return err == nil && a.Address == c
}

// quoteLocal writes a local part as an RFC 5322 quoted string.
func quoteLocal(local string) string {
	var b strings.Builder
	b.WriteByte('"')
	for i := 0; i < len(local); i++ {
		if c := local[i]; c == '"' || c == '\\' {
			b.WriteByte('\\')
		}
		b.WriteByte(local[i])
	}
	b.WriteByte('"')
	return b.String()
}

// Key prefixes: the first token of every key.
const (
	addrKeyPrefix   = "addr."
	domainKeyPrefix = "domain."
)

// EncodeKey returns the KV key of address (an address or "@domain", in any
// form Canonical takes). Addresses that differ only in case have the same
// key. The package documentation describes the encoding. Errors wrap
// ErrInvalidAddress.
func EncodeKey(address string) (string, error) {
	c, err := Canonical(address)
	if err != nil {
		return "", err
	}
	return keyOf(c), nil
}

// keyOf is the key of a canonical address.
func keyOf(c string) string {
	var b strings.Builder
	if isDomain(c) {
		b.Grow(len(domainKeyPrefix) + len(c))
		b.WriteString(domainKeyPrefix)
		escapeDomain(&b, c[1:])
		return b.String()
	}
	at := strings.LastIndexByte(c, '@')
	b.Grow(len(addrKeyPrefix) + len(c) + 8)
	b.WriteString(addrKeyPrefix)
	escape(&b, c[:at])
	b.WriteByte('.')
	escapeDomain(&b, c[at+1:])
	return b.String()
}

// DecodeKey returns the canonical address (or "@domain") of a key that
// EncodeKey made. Any other string, a different spelling of the same key
// included, is an error that wraps ErrInvalidKey.
func DecodeKey(key string) (string, error) {
	bad := func() (string, error) { return "", fmt.Errorf("%w: %q", ErrInvalidKey, key) }
	var c string
	if rest, ok := strings.CutPrefix(key, addrKeyPrefix); ok {
		local, domain, ok := strings.Cut(rest, ".")
		l, lok := unescape(local)
		d, dok := unescapeDomain(domain)
		if !ok || !lok || !dok {
			return bad()
		}
		c = l + "@" + d
	} else if rest, ok := strings.CutPrefix(key, domainKeyPrefix); ok {
		d, ok := unescapeDomain(rest)
		if !ok {
			return bad()
		}
		c = "@" + d
	} else {
		return bad()
	}
	// One spelling per address: the key must be the one EncodeKey makes,
	// of a canonical address.
	if !isCanonical(c) || keyOf(c) != key {
		return bad()
	}
	return c, nil
}

// isCanonical reports whether c is the canonical form of an address or
// @domain, as Canonical returns it. (Canonical itself may read such a
// string as another address: `"a"@x.com`, the canonical form of
// `"\"a\""@x.com`, reads as a@x.com.)
func isCanonical(c string) bool {
	if strings.ToLower(c) != c {
		return false
	}
	if isDomain(c) {
		d, ok := canonicalDomain(c[1:])
		return ok && d == c[1:]
	}
	return validUnquoted(c)
}

// keyByte reports whether c stands for itself in a key token.
func keyByte(c byte) bool {
	return 'a' <= c && c <= 'z' || '0' <= c && c <= '9' || c == '-' || c == '_'
}

const upperHex = "0123456789ABCDEF"

// escape writes s as one key token.
func escape(b *strings.Builder, s string) {
	for i := 0; i < len(s); i++ {
		if c := s[i]; keyByte(c) {
			b.WriteByte(c)
		} else {
			b.WriteByte('=')
			b.WriteByte(upperHex[c>>4])
			b.WriteByte(upperHex[c&0xf])
		}
	}
}

// escapeDomain writes a domain as key tokens, one per label, or as one
// token when a label is empty.
func escapeDomain(b *strings.Builder, d string) {
	if d == "" || d[0] == '.' || d[len(d)-1] == '.' || strings.Contains(d, "..") {
		escape(b, d)
		return
	}
	for i, label := range strings.Split(d, ".") {
		if i > 0 {
			b.WriteByte('.')
		}
		escape(b, label)
	}
}

// unescape reverses escape for one token.
func unescape(tok string) (string, bool) {
	if tok == "" {
		return "", false
	}
	out := make([]byte, 0, len(tok))
	for i := 0; i < len(tok); i++ {
		c := tok[i]
		switch {
		case keyByte(c):
			out = append(out, c)
		case c == '=' && i+2 < len(tok) && unhex(tok[i+1]) >= 0 && unhex(tok[i+2]) >= 0:
			out = append(out, byte(unhex(tok[i+1])<<4|unhex(tok[i+2])))
			i += 2
		default:
			return "", false
		}
	}
	return string(out), true
}

// unescapeDomain reverses escapeDomain.
func unescapeDomain(s string) (string, bool) {
	if s == "" {
		return "", false
	}
	labels := strings.Split(s, ".")
	for i, l := range labels {
		u, ok := unescape(l)
		if !ok {
			return "", false
		}
		labels[i] = u
	}
	return strings.Join(labels, "."), true
}

// unhex is the value of an upper-case hex digit, or -1.
func unhex(c byte) int {
	switch {
	case '0' <= c && c <= '9':
		return int(c - '0')
	case 'A' <= c && c <= 'F':
		return int(c - 'A' + 10)
	}
	return -1
}
