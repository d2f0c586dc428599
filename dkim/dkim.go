// Package dkim holds jetmail's DKIM signing (RFC 6376): the keys and the
// DNS records that publish them (loading a key file, generating a key,
// formatting the TXT record), and Sign, which signs a rendered message.
//
// Two algorithms are supported, and a domain may use both at once:
// rsa-sha256 with keys of 2048 to 4096 bits (RFC 8301 forbids less than
// 1024 and verifiers need not check more than 4096), and ed25519-sha256
// (RFC 8463).
//
// Setting up a key is three steps: generate it, keep the private key in a
// file only the worker can read, and publish the public key in DNS:
//
//	pemBytes, signer, err := dkim.Generate("rsa", 0) // 2048 bits
//	if err != nil { … }
//	record, err := dkim.Record("s2026", "example.com", signer.Public())
//	if err != nil { … } // a bad selector or domain: nothing written yet
//	if err := dkim.WriteKeyFile("/run/secrets/dkim-s2026.pem", pemBytes); err != nil { … }
//	fmt.Println(record) // s2026._domainkey.example.com. IN TXT "v=DKIM1; k=rsa; p=…"
//
// A worker then loads it with [LoadKeyFile], whose errors name the file,
// and signs with [Sign].
//
// Keys never show their private half: a [Key] prints, formats and logs as
// its DNS name and algorithm only, and no error of this package includes
// key material.
package dkim

import (
	"crypto"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/base64"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"strings"

	"golang.org/x/net/idna"
)

// The signature algorithms, as the a= tag of a DKIM-Signature names them.
const (
	// RSASHA256 is rsa-sha256: RSASSA-PKCS1-v1_5 over SHA-256.
	RSASHA256 = "rsa-sha256"
	// Ed25519SHA256 is ed25519-sha256 (RFC 8463).
	Ed25519SHA256 = "ed25519-sha256"
)

// RSA key sizes, in bits.
const (
	// MinRSABits is the smallest RSA key accepted.
	MinRSABits = 2048
	// MaxRSABits is the largest RSA key accepted: RFC 8301 §3.2 only
	// requires verifiers to check keys of up to 4096 bits.
	MaxRSABits = 4096
	// DefaultRSABits is the size Generate uses when given 0.
	DefaultRSABits = 2048
)

// ErrUnsupportedKey is returned (wrapped) for a key this package does not
// sign with: neither RSA nor Ed25519, or RSA of fewer than MinRSABits or
// more than MaxRSABits.
var ErrUnsupportedKey = errors.New("unsupported dkim key")

// Key is one DKIM signing key: the private key, and the domain (d=) and
// selector (s=) under which its public key is published, at
// Selector._domainkey.Domain. Create Keys with NewKey or LoadKeyFile, which
// check and normalise the fields; a Key is not to be changed afterwards and
// is safe for concurrent use.
//
// String, GoString and LogValue show the key's DNS name and algorithm only,
// so a Key can be logged and printed without giving the private key away.
type Key struct {
	// Domain is the signing domain, lower case, in its ASCII (A-label)
	// form, without a trailing dot.
	Domain string
	// Selector is the selector, lower case.
	Selector string

	// priv is behind a pointer so that a Key printed inside another value
	// (where fmt does not call its methods) shows an address, not the key.
	priv *privateKey
}

type privateKey struct{ signer crypto.Signer }

// NewKey returns the key for domain and selector that signs with signer:
// an RSA key of MinRSABits to MaxRSABits bits or an Ed25519 key, by its
// public key, such as an *rsa.PrivateKey or an ed25519.PrivateKey, or a
// signer that keeps its key elsewhere (an Ed25519 signer must sign the
// message it is given, as ed25519.PrivateKey does with crypto.Hash(0)).
// Domain may be given in Unicode (it is stored as its A-label) and with a
// trailing dot. The error wraps ErrUnsupportedKey for an unsupported key.
func NewKey(domain, selector string, signer crypto.Signer) (*Key, error) {
	d, err := normaliseDomain(domain)
	if err != nil {
		return nil, err
	}
	s, err := normaliseSelector(selector)
	if err != nil {
		return nil, err
	}
	if err := checkSigner(signer); err != nil {
		return nil, err
	}
	return &Key{Domain: d, Selector: s, priv: &privateKey{signer}}, nil
}

// Signer returns the private key; nil for the zero Key.
func (k *Key) Signer() crypto.Signer {
	if k == nil || k.priv == nil {
		return nil
	}
	return k.priv.signer
}

// Public returns the public key; nil for the zero Key.
func (k *Key) Public() crypto.PublicKey {
	if s := k.Signer(); s != nil {
		return s.Public()
	}
	return nil
}

// Algorithm returns RSASHA256 or Ed25519SHA256; "" for the zero Key.
func (k *Key) Algorithm() string {
	switch k.Public().(type) {
	case *rsa.PublicKey:
		return RSASHA256
	case ed25519.PublicKey:
		return Ed25519SHA256
	}
	return ""
}

// Name returns the DNS name of the key's record,
// Selector._domainkey.Domain (without the trailing dot).
func (k *Key) Name() string { return k.Selector + "._domainkey." + k.Domain }

// Record returns the zone-file line that publishes the key; see Record.
func (k *Key) Record() (string, error) { return Record(k.Selector, k.Domain, k.Public()) }

// String returns the key's DNS name and algorithm, as in
// "s2026._domainkey.example.com (rsa-sha256)".
func (k *Key) String() string {
	if k == nil {
		return "<nil>"
	}
	return k.Name() + " (" + k.Algorithm() + ")"
}

// GoString is String, so that %#v does not print the private key either.
func (k *Key) GoString() string { return "dkim.Key(" + k.String() + ")" }

// LogValue logs the key as its domain, selector and algorithm.
func (k *Key) LogValue() slog.Value {
	if k == nil {
		return slog.StringValue("<nil>")
	}
	return slog.GroupValue(slog.String("domain", k.Domain), slog.String("selector", k.Selector),
		slog.String("algorithm", k.Algorithm()))
}

// LoadKeyFile reads a PEM private key (see ParsePrivateKey) from path and
// returns it as the key for domain and selector (see NewKey). Its errors
// start with "dkim key file PATH:" and never contain key material; a file
// that does not exist gives an error for which errors.Is(err,
// fs.ErrNotExist) holds.
func LoadKeyFile(domain, selector, path string) (*Key, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		var pe *fs.PathError
		if errors.As(err, &pe) {
			err = fmt.Errorf("%s: %w", pe.Op, pe.Err)
		}
		return nil, fmt.Errorf("dkim key file %s: %w", path, err)
	}
	signer, err := ParsePrivateKey(data)
	if err != nil {
		return nil, fmt.Errorf("dkim key file %s: %w", path, err)
	}
	k, err := NewKey(domain, selector, signer)
	if err != nil {
		return nil, fmt.Errorf("dkim key file %s: %w", path, err)
	}
	return k, nil
}

// ParsePrivateKey parses the first PEM block of pemBytes: a PKCS#8 "PRIVATE
// KEY" (RSA or Ed25519, as Generate and openssl genpkey write them) or a
// PKCS#1 "RSA PRIVATE KEY" (openssl genrsa's traditional form). Encrypted
// keys are refused. RSA keys must have MinRSABits to MaxRSABits bits.
func ParsePrivateKey(pemBytes []byte) (crypto.Signer, error) {
	block, _ := pem.Decode(pemBytes)
	if block == nil {
		return nil, errors.New("no PEM block found")
	}
	if block.Headers["Proc-Type"] != "" || block.Type == "ENCRYPTED PRIVATE KEY" {
		return nil, errors.New("the key is encrypted; store it decrypted, readable by the worker only")
	}
	var key any
	var err error
	switch block.Type {
	case "PRIVATE KEY":
		key, err = x509.ParsePKCS8PrivateKey(block.Bytes)
	case "RSA PRIVATE KEY":
		key, err = x509.ParsePKCS1PrivateKey(block.Bytes)
	default:
		return nil, fmt.Errorf("PEM block %q is not a PKCS#8 PRIVATE KEY or a PKCS#1 RSA PRIVATE KEY", block.Type)
	}
	if err != nil {
		return nil, fmt.Errorf("parse %s: %w", block.Type, err)
	}
	signer, ok := key.(crypto.Signer)
	if !ok {
		return nil, fmt.Errorf("%w: %T", ErrUnsupportedKey, key)
	}
	if err := checkSigner(signer); err != nil {
		return nil, err
	}
	return signer, nil
}

// checkSigner checks that signer is a key this package signs with, by its
// public key.
func checkSigner(signer crypto.Signer) error {
	if signer == nil {
		return fmt.Errorf("%w: no key", ErrUnsupportedKey)
	}
	switch k := signer.Public().(type) {
	case *rsa.PublicKey:
		if bits := k.N.BitLen(); bits < MinRSABits || bits > MaxRSABits {
			return fmt.Errorf("%w: RSA key of %d bits, want %d to %d", ErrUnsupportedKey, bits, MinRSABits, MaxRSABits)
		}
		return nil
	case ed25519.PublicKey:
		if len(k) != ed25519.PublicKeySize {
			return fmt.Errorf("%w: Ed25519 key of %d bytes", ErrUnsupportedKey, len(k))
		}
		return nil
	}
	return fmt.Errorf("%w: %T, want an RSA or Ed25519 private key", ErrUnsupportedKey, signer)
}

// Generate makes a new private key and returns it PEM-encoded (PKCS#8
// "PRIVATE KEY", ready for WriteKeyFile and LoadKeyFile) and as a signer.
// algorithm is "rsa" (the default when empty) or "ed25519", in any case;
// the a= names "rsa-sha256" and "ed25519-sha256" are accepted too. bits is
// the RSA key size, 0 meaning DefaultRSABits; it must be 0 for Ed25519.
func Generate(algorithm string, bits int) (pemBytes []byte, key crypto.Signer, err error) {
	switch strings.ToLower(algorithm) {
	case "", "rsa", RSASHA256:
		if bits == 0 {
			bits = DefaultRSABits
		}
		if bits < MinRSABits || bits > MaxRSABits {
			return nil, nil, fmt.Errorf("%w: RSA key of %d bits, want %d to %d", ErrUnsupportedKey, bits, MinRSABits, MaxRSABits)
		}
		key, err = rsa.GenerateKey(rand.Reader, bits)
	case "ed25519", Ed25519SHA256:
		if bits != 0 {
			return nil, nil, fmt.Errorf("%w: Ed25519 keys have no size to choose, got %d bits", ErrUnsupportedKey, bits)
		}
		_, key, err = ed25519.GenerateKey(rand.Reader)
	default:
		return nil, nil, fmt.Errorf("%w: algorithm %q, want rsa or ed25519", ErrUnsupportedKey, algorithm)
	}
	if err != nil {
		return nil, nil, fmt.Errorf("generate key: %w", err)
	}
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, nil, fmt.Errorf("encode key: %w", err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), key, nil
}

// WriteKeyFile writes pemBytes to a new file at path, readable and
// writable by its owner only (mode 0600). It does not replace an existing
// file (errors.Is(err, fs.ErrExist) then holds), so that a key in use is
// never overwritten by mistake; a file it could not write completely is
// removed.
func WriteKeyFile(path string, pemBytes []byte) (err error) {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return fmt.Errorf("write dkim key file: %w", err)
	}
	defer func() {
		if err != nil {
			f.Close()
			os.Remove(path)
		}
	}()
	if _, err := f.Write(pemBytes); err != nil {
		return fmt.Errorf("write dkim key file: %w", err)
	}
	if err := f.Sync(); err != nil {
		return fmt.Errorf("write dkim key file: %w", err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("write dkim key file: %w", err)
	}
	return nil
}

// maxTXTString is the longest character-string of a TXT record (RFC 1035
// §3.3): longer values are split into several, which DKIM verifiers join
// (RFC 6376 §3.6.2.2).
const maxTXTString = 255

// Record returns the zone-file line that publishes pub for selector and
// domain:
//
//	s2026._domainkey.example.com. IN TXT "v=DKIM1; k=rsa; p=MIIBIjANBgkq…" "…"
//
// The value (see RecordValue) is split into quoted strings of at most 255
// characters, as a 2048-bit RSA key needs; zone files and most DNS
// providers take the strings as they are.
func Record(selector, domain string, pub crypto.PublicKey) (string, error) {
	d, err := normaliseDomain(domain)
	if err != nil {
		return "", err
	}
	s, err := normaliseSelector(selector)
	if err != nil {
		return "", err
	}
	value, err := RecordValue(pub)
	if err != nil {
		return "", err
	}
	var b strings.Builder
	b.WriteString(s + "._domainkey." + d + ". IN TXT")
	for value != "" {
		n := min(len(value), maxTXTString)
		b.WriteString(` "` + value[:n] + `"`)
		value = value[n:]
	}
	return b.String(), nil
}

// RecordValue returns the text of the DKIM record for pub (RFC 6376
// §3.6.1), "v=DKIM1; k=rsa; p=…" or "v=DKIM1; k=ed25519; p=…", unsplit,
// for DNS providers that ask for the value alone. p= is the base64 of the
// DER SubjectPublicKeyInfo for RSA and of the 32 raw key bytes for Ed25519
// (RFC 8463 §4.2). pub must be an *rsa.PublicKey or an ed25519.PublicKey.
func RecordValue(pub crypto.PublicKey) (string, error) {
	switch k := pub.(type) {
	case *rsa.PublicKey:
		if bits := k.N.BitLen(); bits < MinRSABits || bits > MaxRSABits {
			return "", fmt.Errorf("%w: RSA key of %d bits, want %d to %d", ErrUnsupportedKey, bits, MinRSABits, MaxRSABits)
		}
		der, err := x509.MarshalPKIXPublicKey(k)
		if err != nil {
			return "", fmt.Errorf("encode public key: %w", err)
		}
		return "v=DKIM1; k=rsa; p=" + base64.StdEncoding.EncodeToString(der), nil
	case ed25519.PublicKey:
		if len(k) != ed25519.PublicKeySize {
			return "", fmt.Errorf("%w: Ed25519 public key of %d bytes", ErrUnsupportedKey, len(k))
		}
		return "v=DKIM1; k=ed25519; p=" + base64.StdEncoding.EncodeToString(k), nil
	}
	return "", fmt.Errorf("%w: public key %T, want RSA or Ed25519", ErrUnsupportedKey, pub)
}

// normaliseDomain returns domain lower case, as an A-label, without a
// trailing dot, or an error when it is not a domain name.
func normaliseDomain(domain string) (string, error) {
	d, err := idna.Lookup.ToASCII(strings.TrimSuffix(domain, "."))
	if err != nil || d == "" || len(d) > 253 {
		return "", fmt.Errorf("dkim domain %q is not a domain name", domain)
	}
	for _, l := range strings.Split(d, ".") {
		if !ldhLabel(l) {
			return "", fmt.Errorf("dkim domain %q is not a domain name", domain)
		}
	}
	return d, nil
}

// normaliseSelector returns selector lower case, or an error when it is
// not one or more DNS labels of letters, digits and hyphens (RFC 6376
// §3.1).
func normaliseSelector(selector string) (string, error) {
	s := strings.ToLower(selector)
	for _, l := range strings.Split(s, ".") {
		if !ldhLabel(l) {
			return "", fmt.Errorf("dkim selector %q: want letters, digits and hyphens (dot-separated labels)", selector)
		}
	}
	return s, nil
}

// ldhLabel reports whether l is a DNS label of lower-case letters, digits
// and inner hyphens, 1 to 63 characters long.
func ldhLabel(l string) bool {
	if l == "" || len(l) > 63 || l[0] == '-' || l[len(l)-1] == '-' {
		return false
	}
	for i := 0; i < len(l); i++ {
		if c := l[i]; !('a' <= c && c <= 'z' || '0' <= c && c <= '9' || c == '-') {
			return false
		}
	}
	return true
}
