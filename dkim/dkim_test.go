package dkim

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
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
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
)

// rsaKey is one 2048-bit RSA key shared by the tests (generating one takes
// a while under the race detector).
var rsaKey = sync.OnceValue(func() *rsa.PrivateKey {
	k, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		panic(err)
	}
	return k
})

func pemOf(t *testing.T, typ string, der []byte) []byte {
	t.Helper()
	return pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der})
}

func pkcs8(t *testing.T, key any) []byte {
	t.Helper()
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	return pemOf(t, "PRIVATE KEY", der)
}

// txtValue joins the quoted strings of a zone-file TXT line, as a resolver
// hands them to a DKIM verifier.
func txtValue(t *testing.T, line string) (name, value string) {
	t.Helper()
	m := regexp.MustCompile(`^(\S+) IN TXT((?: "[^"]*")+)$`).FindStringSubmatch(line)
	if m == nil {
		t.Fatalf("not a zone-file TXT line: %q", line)
	}
	for _, s := range regexp.MustCompile(`"([^"]*)"`).FindAllStringSubmatch(m[2], -1) {
		if len(s[1]) > 255 {
			t.Errorf("TXT string of %d characters, more than 255", len(s[1]))
		}
		value += s[1]
	}
	return m[1], value
}

func TestGenerateWriteLoad(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		algorithm string
		bits      int
		want      string
		k         string
	}{
		{"", 0, RSASHA256, "rsa"},
		{"RSA", 2048, RSASHA256, "rsa"},
		{"ed25519", 0, Ed25519SHA256, "ed25519"},
		{"ed25519-sha256", 0, Ed25519SHA256, "ed25519"},
	} {
		t.Run(tc.algorithm, func(t *testing.T) {
			t.Parallel()
			pemBytes, signer, err := Generate(tc.algorithm, tc.bits)
			if err != nil {
				t.Fatal(err)
			}
			path := filepath.Join(t.TempDir(), "key.pem")
			if err := WriteKeyFile(path, pemBytes); err != nil {
				t.Fatal(err)
			}
			fi, err := os.Stat(path)
			if err != nil {
				t.Fatal(err)
			}
			if fi.Mode().Perm() != 0o600 {
				t.Errorf("key file mode %v, want 0600", fi.Mode().Perm())
			}
			k, err := LoadKeyFile("Example.COM.", "S2026", path)
			if err != nil {
				t.Fatal(err)
			}
			if k.Domain != "example.com" || k.Selector != "s2026" || k.Algorithm() != tc.want {
				t.Errorf("loaded key %s domain %q selector %q", k, k.Domain, k.Selector)
			}
			type equaler interface{ Equal(crypto.PublicKey) bool }
			if !k.Public().(equaler).Equal(signer.Public()) {
				t.Error("loaded key differs from the generated one")
			}
			rec, err := k.Record()
			if err != nil {
				t.Fatal(err)
			}
			name, value := txtValue(t, rec)
			if name != "s2026._domainkey.example.com." {
				t.Errorf("record name %q", name)
			}
			if want := "v=DKIM1; k=" + tc.k + "; p="; !strings.HasPrefix(value, want) {
				t.Errorf("record value %q, want prefix %q", value, want)
			}
			if rv, _ := RecordValue(signer.Public()); rv != value {
				t.Errorf("RecordValue = %q, the record holds %q", rv, value)
			}
		})
	}
}

func TestGenerateRefuses(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		algorithm string
		bits      int
	}{{"rsa", 1024}, {"rsa", 8192}, {"ed25519", 256}, {"ecdsa", 0}} {
		if _, _, err := Generate(tc.algorithm, tc.bits); !errors.Is(err, ErrUnsupportedKey) {
			t.Errorf("Generate(%q, %d) error = %v, want ErrUnsupportedKey", tc.algorithm, tc.bits, err)
		}
	}
}

func TestWriteKeyFileKeepsExisting(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "key.pem")
	if err := os.WriteFile(path, []byte("in use"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := WriteKeyFile(path, []byte("new")); !errors.Is(err, fs.ErrExist) {
		t.Fatalf("WriteKeyFile over an existing file: %v, want fs.ErrExist", err)
	}
	if got, _ := os.ReadFile(path); string(got) != "in use" {
		t.Errorf("existing file changed to %q", got)
	}
}

func TestLoadKeyFileErrors(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	small, err := rsa.GenerateKey(rand.Reader, 1024)
	if err != nil {
		t.Fatal(err)
	}
	ec, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	ecDER, _ := x509.MarshalECPrivateKey(ec)
	encrypted := pem.EncodeToMemory(&pem.Block{Type: "RSA PRIVATE KEY", Headers: map[string]string{"Proc-Type": "4,ENCRYPTED", "DEK-Info": "AES-256-CBC,00"}, Bytes: x509.MarshalPKCS1PrivateKey(rsaKey())})
	files := map[string][]byte{
		"empty.pem":     nil,
		"notpem.pem":    []byte("not a key\n"),
		"cert.pem":      pemOf(t, "CERTIFICATE", []byte{0x30, 0x03, 0x02, 0x01, 0x01}),
		"ec.pem":        pemOf(t, "EC PRIVATE KEY", ecDER),
		"ec-pkcs8.pem":  pkcs8(t, ec),
		"small.pem":     pkcs8(t, small),
		"small-rsa.pem": pemOf(t, "RSA PRIVATE KEY", x509.MarshalPKCS1PrivateKey(small)),
		"garbage.pem":   pemOf(t, "PRIVATE KEY", []byte("garbage garbage garbage")),
		"encrypted.pem": encrypted,
	}
	for name, data := range files {
		if err := os.WriteFile(filepath.Join(dir, name), data, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	secrets := []string{
		base64.StdEncoding.EncodeToString(x509.MarshalPKCS1PrivateKey(small))[:40],
		small.D.String()[:40],
		base64.StdEncoding.EncodeToString(x509.MarshalPKCS1PrivateKey(rsaKey()))[:40],
	}
	for _, tc := range []struct {
		file        string
		unsupported bool
		notExist    bool
	}{
		{file: "missing.pem", notExist: true},
		{file: "empty.pem"},
		{file: "notpem.pem"},
		{file: "cert.pem"},
		{file: "ec.pem"},
		{file: "ec-pkcs8.pem", unsupported: true},
		{file: "small.pem", unsupported: true},
		{file: "small-rsa.pem", unsupported: true},
		{file: "garbage.pem"},
		{file: "encrypted.pem"},
	} {
		path := filepath.Join(dir, tc.file)
		_, err := LoadKeyFile("example.com", "s1", path)
		if err == nil {
			t.Errorf("%s: loaded", tc.file)
			continue
		}
		msg := err.Error()
		if !strings.HasPrefix(msg, "dkim key file "+path+": ") {
			t.Errorf("%s: error %q does not start with the file's name", tc.file, msg)
		}
		if errors.Is(err, ErrUnsupportedKey) != tc.unsupported || errors.Is(err, fs.ErrNotExist) != tc.notExist {
			t.Errorf("%s: error %q: ErrUnsupportedKey %v, fs.ErrNotExist %v", tc.file, msg, errors.Is(err, ErrUnsupportedKey), errors.Is(err, fs.ErrNotExist))
		}
		for _, s := range secrets {
			if strings.Contains(msg, s) {
				t.Errorf("%s: error shows key material: %q", tc.file, msg)
			}
		}
	}
	// The key itself is fine once the domain and selector are.
	good := filepath.Join(dir, "good.pem")
	if err := os.WriteFile(good, pemOf(t, "RSA PRIVATE KEY", x509.MarshalPKCS1PrivateKey(rsaKey())), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tc := range [][2]string{{"example..com", "s1"}, {"exa_mple.com", "s1"}, {"example.com", ""}, {"example.com", "bad_selector"}, {"example.com", "-x"}} {
		if _, err := LoadKeyFile(tc[0], tc[1], good); err == nil || !strings.Contains(err.Error(), good) {
			t.Errorf("LoadKeyFile(%q, %q) error = %v, want one naming the file", tc[0], tc[1], err)
		}
	}
	if _, err := LoadKeyFile("example.com", "rsa1", good); err != nil {
		t.Errorf("PKCS#1 RSA key: %v", err)
	}
}

func TestRecord(t *testing.T) {
	t.Parallel()
	seed := bytes.Repeat([]byte{7}, ed25519.SeedSize)
	edPub := ed25519.NewKeyFromSeed(seed).Public().(ed25519.PublicKey)
	rec, err := Record("e2026", "zażółć.pl", edPub)
	if err != nil {
		t.Fatal(err)
	}
	want := `e2026._domainkey.xn--za-6ja4f8n1l.pl. IN TXT "v=DKIM1; k=ed25519; p=` + base64.StdEncoding.EncodeToString(edPub) + `"`
	if rec != want {
		t.Errorf("Record = %q, want %q", rec, want)
	}

	rec, err = Record("s2026", "example.com", rsaKey().Public())
	if err != nil {
		t.Fatal(err)
	}
	_, value := txtValue(t, rec)
	if strings.Count(rec, `"`) < 4 {
		t.Errorf("a 2048-bit key's record is not split: %q", rec)
	}
	p := strings.TrimPrefix(value, "v=DKIM1; k=rsa; p=")
	der, err := base64.StdEncoding.DecodeString(p)
	if err != nil {
		t.Fatal(err)
	}
	pub, err := x509.ParsePKIXPublicKey(der)
	if err != nil || !rsaKey().PublicKey.Equal(pub) {
		t.Errorf("p= does not hold the public key: %v", err)
	}

	small, _ := rsa.GenerateKey(rand.Reader, 1024)
	for _, pub := range []crypto.PublicKey{nil, &small.PublicKey, ed25519.PublicKey{1, 2, 3}} {
		if _, err := Record("s", "example.com", pub); !errors.Is(err, ErrUnsupportedKey) {
			t.Errorf("Record(%T) error = %v, want ErrUnsupportedKey", pub, err)
		}
	}
}

// TestKeyNeverShown prints and logs keys every way a program might and
// looks for their private parts.
func TestKeyNeverShown(t *testing.T) {
	t.Parallel()
	_, edSigner, err := Generate("ed25519", 0)
	if err != nil {
		t.Fatal(err)
	}
	for _, signer := range []crypto.Signer{rsaKey(), edSigner} {
		k, err := NewKey("example.com", "s1", signer)
		if err != nil {
			t.Fatal(err)
		}
		der, _ := x509.MarshalPKCS8PrivateKey(signer)
		b64 := base64.StdEncoding.EncodeToString(der)
		secrets := []string{b64[len(b64)-30:], fmt.Sprint(der[len(der)-20:])}
		if rk, ok := signer.(*rsa.PrivateKey); ok {
			secrets = append(secrets, rk.D.String()[:30], rk.Primes[0].String()[:30])
		}
		if ek, ok := signer.(ed25519.PrivateKey); ok {
			secrets = append(secrets, fmt.Sprint([]byte(ek.Seed())[:8]), fmt.Sprintf("%x", ek.Seed()[:8]))
		}
		type config struct {
			Name string
			Key  Key
			key  *Key
			Keys []*Key
		}
		var out bytes.Buffer
		fmt.Fprintf(&out, "%v %+v %#v %s %v %+v %#v\n", k, k, k, k, *k, *k, *k)
		c := config{Name: "default", Key: *k, key: k, Keys: []*Key{k}}
		fmt.Fprintf(&out, "%v %+v %#v\n", c, c, c)
		log := slog.New(slog.NewJSONHandler(&out, nil))
		log.Info("key", "key", k, "config", c, "keys", c.Keys)
		slog.New(slog.NewTextHandler(&out, nil)).Info("key", "key", k)
		for _, s := range secrets {
			if strings.Contains(out.String(), s) {
				t.Fatalf("%s: private key material in the output:\n%s", k, out.String())
			}
		}
		if !strings.Contains(out.String(), "s1._domainkey.example.com") {
			t.Errorf("the key's name is not in the output:\n%s", out.String())
		}
	}
}
