package suppress_test

import (
	"errors"
	"regexp"
	"strings"
	"testing"

	"github.com/jetmail/jetmail/schema"
	"github.com/jetmail/jetmail/suppress"
)

// kvKey is what the NATS KV takes as a key (nats.go jetstream's keyValid):
// [-/_=.a-zA-Z0-9], not beginning or ending with '.', no empty token.
var kvKey = regexp.MustCompile(`\A[-/_=.a-zA-Z0-9]+\z`)

func validKVKey(k string) bool {
	return kvKey.MatchString(k) && !strings.HasPrefix(k, ".") && !strings.HasSuffix(k, ".") && !strings.Contains(k, "..")
}

func TestKeys(t *testing.T) {
	t.Parallel()
	for _, c := range []struct{ in, canonical, key string }{
		{"jan@example.com", "jan@example.com", "addr.jan.example.com"},
		{"Jan.Kowalski+News@Example.COM", "jan.kowalski+news@example.com", "addr.jan=2Ekowalski=2Bnews.example.com"},
		{"Jan Kowalski <JAN@example.com>", "jan@example.com", "addr.jan.example.com"},
		{"  jan@example.com\t", "jan@example.com", "addr.jan.example.com"},
		{`"john doe"@example.com`, "john doe@example.com", "addr.john=20doe.example.com"},
		{"john doe@example.com", "john doe@example.com", "addr.john=20doe.example.com"}, // the unquoted form
		{`"a@b"@example.com`, "a@b@example.com", "addr.a=40b.example.com"},
		{`"@a"@example.com`, "@a@example.com", "addr.=40a.example.com"},
		{"o'hara_x-y@mail.example.co.uk", "o'hara_x-y@mail.example.co.uk", "addr.o=27hara_x-y.mail.example.co.uk"},
		{"Jürgen@Bücher.DE", "jürgen@bücher.de", "addr.j=C3=BCrgen.b=C3=BCcher.de"},
		{"x@[192.0.2.1]", "x@[192.0.2.1]", "addr.x.=5B192.0.2.1=5D"},
		{"eq=1@example.com", "eq=1@example.com", "addr.eq=3D1.example.com"},
		{"a@b", "a@b", "addr.a.b"},
		{"@example.com", "@example.com", "domain.example.com"},
		{"@Mail.Example.COM", "@mail.example.com", "domain.mail.example.com"},
		{" @example.com ", "@example.com", "domain.example.com"},
		{"@[192.0.2.1]", "@[192.0.2.1]", "domain.=5B192.0.2.1=5D"},
	} {
		got, err := suppress.Canonical(c.in)
		if err != nil || got != c.canonical {
			t.Errorf("Canonical(%q) = %q, %v; want %q", c.in, got, err, c.canonical)
		}
		key, err := suppress.EncodeKey(c.in)
		if err != nil || key != c.key {
			t.Errorf("EncodeKey(%q) = %q, %v; want %q", c.in, key, err, c.key)
			continue
		}
		if !validKVKey(key) {
			t.Errorf("EncodeKey(%q) = %q, not a valid KV key", c.in, key)
		}
		if back, err := suppress.DecodeKey(key); err != nil || back != c.canonical {
			t.Errorf("DecodeKey(%q) = %q, %v; want %q", key, back, err, c.canonical)
		}
	}
	for _, in := range []string{"", "@", "jan", "jan@", "@@example.com", "@example.com.", "@.example.com",
		"@exa mple.com", "a@b@c", "Jan <jan@example.com", "jan@example.com, b@example.com", "@example.com>", "a\r\n@b.com"} {
		if c, err := suppress.Canonical(in); !errors.Is(err, suppress.ErrInvalidAddress) {
			t.Errorf("Canonical(%q) = %q, %v; want ErrInvalidAddress", in, c, err)
		}
		if k, err := suppress.EncodeKey(in); !errors.Is(err, suppress.ErrInvalidAddress) {
			t.Errorf("EncodeKey(%q) = %q, %v; want ErrInvalidAddress", in, k, err)
		}
	}
	// Keys that EncodeKey does not make, other spellings of real ones
	// included, do not decode.
	for _, key := range []string{"", "addr", "addr.", "addr.jan", "addr.jan.", "addr..example.com", "domain.",
		"addr.Jan.example.com", "addr.jan.Example.com", "addr.jan=2e.example.com", "addr.=6Aan.example.com",
		"addr.jan.example=2Ecom", "addr.jan=4.example.com", "addr.jan=.example.com", "domain.example..com",
		"domain.example.com.", "other.jan.example.com", "addr.jan.exa=20mple.com", "domain.a=40b.com",
		"addr.j=C3.example.com"} {
		if c, err := suppress.DecodeKey(key); !errors.Is(err, suppress.ErrInvalidKey) {
			t.Errorf("DecodeKey(%q) = %q, %v; want ErrInvalidKey", key, c, err)
		}
	}
}

// FuzzKey: every address that schema.ParseAddress accepts (and its
// @domain) encodes to a valid KV key that decodes to its canonical form,
// and the canonical form has the same key.
func FuzzKey(f *testing.F) {
	for _, s := range []string{"jan@example.com", "Jan <Jan@Example.COM>", `"john doe"@example.com`,
		`"a@b"@example.com`, "jürgen@bücher.de", "x@[192.0.2.1]", `"a\"b"@x.com`, "a.b+c=d@x.y", `"a..b"@x.com`,
		`"İ"@x.com`, `"\"a\""@x.com`, "x@a_b.com", `"(c)"@x.com`} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		a, err := schema.ParseAddress(s)
		if err != nil {
			return
		}
		c, err := suppress.Canonical(s)
		if err != nil {
			t.Fatalf("Canonical(%q): %v, though ParseAddress took it as %q", s, err, a.Address)
		}
		if c != strings.ToLower(a.Address) {
			t.Fatalf("Canonical(%q) = %q, want %q", s, c, strings.ToLower(a.Address))
		}
		domain := "@" + c[strings.LastIndexByte(c, '@')+1:]
		for _, in := range []string{s, domain} {
			want, err := suppress.Canonical(in)
			if err != nil {
				t.Fatalf("Canonical(%q): %v", in, err)
			}
			key, err := suppress.EncodeKey(in)
			if err != nil {
				t.Fatalf("EncodeKey(%q): %v", in, err)
			}
			if !validKVKey(key) {
				t.Fatalf("EncodeKey(%q) = %q, not a valid KV key", in, key)
			}
			back, err := suppress.DecodeKey(key)
			if err != nil || back != want {
				t.Fatalf("DecodeKey(EncodeKey(%q) = %q) = %q, %v; want %q", in, key, back, err, want)
			}
			// The unquoted canonical form is a name of the same entry when
			// its local part has no specials but inner spaces and dots.
			if local := back[:max(strings.LastIndexByte(back, '@'), 0)]; strings.ContainsAny(local, `()<>[]:;@\,"`) ||
				strings.TrimSpace(back) != back {
				continue
			}
			if k2, err := suppress.EncodeKey(back); err != nil || k2 != key {
				t.Fatalf("EncodeKey(%q) = %q, %v; want %q, the key of %q", back, k2, err, key, in)
			}
		}
	})
}
