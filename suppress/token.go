package suppress

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strings"
)

// MinSecretBytes is the shortest key that NewTokens takes.
const MinSecretBytes = 16

// ErrBadToken is a token that Tokens did not make: forged, altered,
// truncated, or made with another secret.
var ErrBadToken = errors.New("suppress: bad unsubscribe token")

// tokenLabel separates this use of the secret from any other.
const tokenLabel = "jetmail unsubscribe v1\x00"

// macBytes is the length of the MAC in a token: 128 bits of HMAC-SHA256.
const macBytes = 16

// maxTokenLen bounds what Address reads: a 254-byte address and its MAC
// need about 370 characters.
const maxTokenLen = 1024

// b64 is the token alphabet: base64url without padding, strict (so that
// no token has a second spelling).
var b64 = base64.RawURLEncoding.Strict()

// Tokens makes and reads one-click unsubscribe tokens (RFC 8058): a token
// names one address, which anyone who holds it may unsubscribe, and only
// the holder of the secret can make one. A token is the address, canonical
// and base64url-encoded, a dot, and the base64url of the first 128 bits of
// HMAC-SHA256(secret, "jetmail unsubscribe v1", 0, address), such as
//
//	amFuQGV4YW1wbGUuY29t.AkZ50XDZghCCcXwJYLh9oQ
//
// so it is URL-safe as it is, it carries the address (no look-up is
// needed), and it cannot be forged or changed into another address's.
// Tokens do not expire; changing the secret invalidates them all. It is
// safe for concurrent use.
type Tokens struct {
	key []byte
}

// NewTokens returns the tokens of secret, which must be at least
// MinSecretBytes long (ParseSecretFile reads one from a file).
func NewTokens(secret []byte) (*Tokens, error) {
	if len(secret) < MinSecretBytes {
		return nil, fmt.Errorf("suppress: the unsubscribe secret has %d bytes, fewer than %d", len(secret), MinSecretBytes)
	}
	return &Tokens{key: append([]byte(nil), secret...)}, nil
}

// String hides the secret.
func (t *Tokens) String() string { return "suppress.Tokens{secret: redacted}" }

// LogValue hides the secret from slog.
func (t *Tokens) LogValue() slog.Value { return slog.StringValue("redacted") }

// mac is the token MAC of a canonical address.
func (t *Tokens) mac(addr string) []byte {
	h := hmac.New(sha256.New, t.key)
	h.Write([]byte(tokenLabel))
	h.Write([]byte(addr))
	return h.Sum(nil)[:macBytes]
}

// Token returns the token of address, in its canonical form (see
// Canonical): addresses that differ only in case have the same token. An
// address that Canonical does not take gets a token that Address refuses.
func (t *Tokens) Token(address string) string {
	addr, err := Canonical(address)
	if err != nil {
		addr = strings.ToLower(strings.TrimSpace(address))
	}
	return b64.EncodeToString([]byte(addr)) + "." + b64.EncodeToString(t.mac(addr))
}

// Address returns the canonical address that token names, after checking
// its MAC in constant time. Every token that Token did not make for a
// valid address is ErrBadToken.
func (t *Tokens) Address(token string) (string, error) {
	if len(token) > maxTokenLen {
		return "", ErrBadToken
	}
	a, m, ok := strings.Cut(token, ".")
	if !ok {
		return "", ErrBadToken
	}
	addr, err1 := b64.DecodeString(a)
	mac, err2 := b64.DecodeString(m)
	if err1 != nil || err2 != nil || !hmac.Equal(mac, t.mac(string(addr))) {
		return "", ErrBadToken
	}
	if !isCanonical(string(addr)) {
		return "", ErrBadToken
	}
	return string(addr), nil
}

// ParseSecretFile reads the unsubscribe secret (--unsubscribe-secret-file)
// from path: the file's content, surrounding white space removed, used as
// it is (not decoded), at least MinSecretBytes long. Generate one with
//
//	openssl rand -base64 32 > unsubscribe.key
//
// The error names the file, never its content.
func ParseSecretFile(path string) ([]byte, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("unsubscribe secret: %w", err)
	}
	secret := []byte(strings.TrimSpace(string(b)))
	if len(secret) < MinSecretBytes {
		return nil, fmt.Errorf("unsubscribe secret %s: %d bytes, want at least %d (openssl rand -base64 32 makes one)", path, len(secret), MinSecretBytes)
	}
	return secret, nil
}
