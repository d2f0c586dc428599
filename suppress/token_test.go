package suppress_test

import (
	"encoding/base64"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/jetmail/jetmail/suppress"
)

func tokens(t *testing.T, secret string) *suppress.Tokens {
	t.Helper()
	tk, err := suppress.NewTokens([]byte(secret))
	if err != nil {
		t.Fatal(err)
	}
	return tk
}

func TestTokens(t *testing.T) {
	t.Parallel()
	tk := tokens(t, "0123456789abcdef-the-secret")
	urlSafe := regexp.MustCompile(`\A[A-Za-z0-9_-]+\.[A-Za-z0-9_-]{22}\z`)
	for _, addr := range []string{"jan@example.com", "Jan.Kowalski+news@Example.COM", `"john doe"@example.com`, "jürgen@bücher.de",
		`"<b>x</b>"@example.com`, `"\"a\""@example.com`} { // the last: "a"@example.com, not a@example.com
		tok := tk.Token(addr)
		if !urlSafe.MatchString(tok) {
			t.Errorf("Token(%q) = %q: not URL-safe as it is", addr, tok)
		}
		want, _ := suppress.Canonical(addr)
		if got, err := tk.Address(tok); err != nil || got != want {
			t.Errorf("Address(Token(%q)) = %q, %v; want %q", addr, got, err, want)
		}
	}
	if tk.Token("JAN@example.com") != tk.Token("jan@example.com") {
		t.Error("addresses that differ in case have different tokens")
	}
	tok := tk.Token("jan@example.com")

	// Altering any one character gives a bad token.
	for i := range len(tok) {
		for _, c := range []byte("AZaz09-_.") {
			if c == tok[i] {
				continue
			}
			bad := tok[:i] + string(c) + tok[i+1:]
			if got, err := tk.Address(bad); !errors.Is(err, suppress.ErrBadToken) {
				t.Fatalf("altered token %q (from %q) read as %q, %v", bad, tok, got, err)
			}
		}
	}
	// Another address with jan's MAC, or a MAC made with another secret, or
	// pieces of tokens, are bad.
	addrPart, macPart, _ := strings.Cut(tok, ".")
	otherMAC := strings.SplitN(tokens(t, "another-secret-of-16+").Token("mallory@example.com"), ".", 2)[1]
	for _, bad := range []string{
		base64.RawURLEncoding.EncodeToString([]byte("mallory@example.com")) + "." + macPart,
		base64.RawURLEncoding.EncodeToString([]byte("JAN@example.com")) + "." + macPart,
		base64.RawURLEncoding.EncodeToString([]byte("mallory@example.com")) + "." + otherMAC,
		tokens(t, "another-secret-of-16+").Token("jan@example.com"),
		addrPart, addrPart + ".", "." + macPart, "", ".", "..",
		tok + "A", tok[:len(tok)-1], tok + ".x", addrPart + "=." + macPart, addrPart + "." + macPart + "==",
		strings.Repeat("A", 2000) + "." + macPart,
		tk.Token("not an address"),
	} {
		if got, err := tk.Address(bad); !errors.Is(err, suppress.ErrBadToken) {
			t.Errorf("Address(%q) = %q, %v; want ErrBadToken", bad, got, err)
		}
	}

	if _, err := suppress.NewTokens([]byte("short")); err == nil {
		t.Error("NewTokens took a 5-byte secret")
	}
	// The secret shows nowhere.
	var logs strings.Builder
	slog.New(slog.NewTextHandler(&logs, nil)).Info("tokens", "tokens", tk)
	if s := fmt.Sprint(tk) + fmt.Sprintf("%v %s", tk, tk) + logs.String(); strings.Contains(s, "the-secret") {
		t.Errorf("the secret is printed: %s", s)
	}
}

func TestParseSecretFile(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	write := func(name, content string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	got, err := suppress.ParseSecretFile(write("ok", "  s3cret-of-enough-bytes\n"))
	if err != nil || string(got) != "s3cret-of-enough-bytes" {
		t.Errorf("ParseSecretFile = %q, %v", got, err)
	}
	short := write("short", "tooshort-15byte\n")
	if _, err := suppress.ParseSecretFile(short); err == nil || !strings.Contains(err.Error(), short) || strings.Contains(err.Error(), "tooshort") {
		t.Errorf("short secret: %v (want an error naming the file, not the secret)", err)
	}
	if _, err := suppress.ParseSecretFile(filepath.Join(dir, "missing")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("missing file: %v", err)
	}
}

func ExampleTokens() {
	tk, _ := suppress.NewTokens([]byte("an example secret, 32 bytes long"))
	token := tk.Token("Jan@Example.com")
	fmt.Println(token)
	addr, err := tk.Address(token)
	fmt.Println(addr, err)
	_, err = tk.Address("bWFsbG9yeUBleGFtcGxlLmNvbQ." + strings.SplitN(token, ".", 2)[1])
	fmt.Println(err)
	// Output:
	// amFuQGV4YW1wbGUuY29t.AkZ50XDZghCCcXwJYLh9oQ
	// jan@example.com <nil>
	// suppress: bad unsubscribe token
}
