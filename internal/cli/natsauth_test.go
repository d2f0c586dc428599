package cli

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/jetmail/jetmail/internal/jstest"
	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nkeys"
	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
)

// startSecureNATS runs a JetStream server like startNATS, with secure
// changing its options (authentication, TLS).
func startSecureNATS(t *testing.T, secure func(*server.Options)) string {
	t.Helper()
	return jstest.Start(t, secure).URL()
}

// writeFile writes a test file of mode 0600 and returns its path.
func writeFile(t *testing.T, name, content string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// testPKI is a CA with a server certificate for 127.0.0.1 and a client
// certificate, as PEM files.
type testPKI struct {
	caFile                string
	server                tls.Certificate
	clientCert, clientKey string
	otherCAFile           string // a CA that signed nothing here
	pool                  *x509.CertPool
}

func newTestPKI(t *testing.T) *testPKI {
	t.Helper()
	newCA := func(name string) (*x509.Certificate, *ecdsa.PrivateKey, []byte) {
		key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		tmpl := &x509.Certificate{
			SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: name},
			NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
			IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
		}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
		if err != nil {
			t.Fatal(err)
		}
		cert, _ := x509.ParseCertificate(der)
		return cert, key, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
	}
	ca, caKey, caPEM := newCA("jetmail test CA")
	_, _, otherPEM := newCA("some other CA")
	leaf := func(serial int64, cn string, usage x509.ExtKeyUsage) (certPEM, keyPEM []byte) {
		key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		tmpl := &x509.Certificate{
			SerialNumber: big.NewInt(serial), Subject: pkix.Name{CommonName: cn},
			NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
			KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{usage},
			IPAddresses: []net.IP{net.ParseIP("127.0.0.1")}, DNSNames: []string{"localhost"},
		}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
		if err != nil {
			t.Fatal(err)
		}
		kder, err := x509.MarshalECPrivateKey(key)
		if err != nil {
			t.Fatal(err)
		}
		return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kder})
	}
	p := &testPKI{pool: x509.NewCertPool()}
	p.pool.AddCert(ca)
	p.caFile = writeFile(t, "ca.pem", string(caPEM))
	p.otherCAFile = writeFile(t, "other-ca.pem", string(otherPEM))
	sc, sk := leaf(2, "127.0.0.1", x509.ExtKeyUsageServerAuth)
	var err error
	if p.server, err = tls.X509KeyPair(sc, sk); err != nil {
		t.Fatal(err)
	}
	cc, ck := leaf(3, "jetmail client", x509.ExtKeyUsageClientAuth)
	p.clientCert = writeFile(t, "client.pem", string(cc))
	p.clientKey = writeFile(t, "client-key.pem", string(ck))
	return p
}

// nkeyUser returns a new NKey user's public key and a seed file.
func nkeyUser(t *testing.T) (pub, seedFile, seed string) {
	t.Helper()
	kp, err := nkeys.CreateUser()
	if err != nil {
		t.Fatal(err)
	}
	pub, _ = kp.PublicKey()
	s, _ := kp.Seed()
	return pub, writeFile(t, "user.nk", string(s)+"\n"), string(s)
}

// TestNATSSecurity runs a worker and the client commands against servers
// that require a password, a token, an NKey, TLS with a private CA and
// mutual TLS. The right settings work; wrong or missing ones fail with exit
// status 2 and a message that names the problem and shows no secret.
func TestNATSSecurity(t *testing.T) {
	t.Parallel()
	pki := newTestPKI(t)
	pub, seedFile, seed := nkeyUser(t)
	_, otherSeedFile, otherSeed := nkeyUser(t)
	const (
		password = "nats-Pa55/word+with&chars"
		token    = "s3cret-token-0123456789"
	)
	passwordFile := writeFile(t, "nats-password", password+"\n")
	tokenFile := writeFile(t, "nats-token", token)
	serverTLS := func(o *server.Options) {
		o.TLSConfig = &tls.Config{Certificates: []tls.Certificate{pki.server}, MinVersion: tls.VersionTLS12}
		o.TLS, o.TLSTimeout = true, 5
	}
	type bad struct {
		args   []string
		want   string
		worker bool // also try the worker with these settings
	}
	for _, tc := range []struct {
		name    string
		secure  func(*server.Options)
		good    []string
		bad     []bad
		secrets []string
	}{{
		name:   "user and password",
		secure: func(o *server.Options) { o.Username, o.Password = "jetmail", password },
		good:   []string{"--nats-user", "jetmail", "--nats-password-file", passwordFile},
		bad: []bad{
			{nil, "authorization violation: the server requires authentication: set --nats-user and --nats-password", false},
			{[]string{"--nats-user", "jetmail", "--nats-password", "wrong-Pa55word"}, "authorization violation: the server rejected the credentials (authentication by --nats-user and --nats-password)", true},
			{[]string{"--nats-user", "jetmail"}, `--nats-user "jetmail" needs --nats-password or --nats-password-file`, false},
		},
		secrets: []string{password, "wrong-Pa55word"},
	}, {
		name:   "token",
		secure: func(o *server.Options) { o.Authorization = token },
		good:   []string{"--nats-token-file", tokenFile},
		bad: []bad{
			{nil, "the server requires authentication", false},
			{[]string{"--nats-token", "wrong-token-987654"}, "the server rejected the credentials (authentication by --nats-token)", true},
			{[]string{"--nats-token", "x", "--nats-user", "u", "--nats-password", "p"}, "choose one way to authenticate to NATS", false},
		},
		secrets: []string{token, "wrong-token-987654"},
	}, {
		name:   "nkey",
		secure: func(o *server.Options) { o.Nkeys = []*server.NkeyUser{{Nkey: pub}} },
		good:   []string{"--nats-nkey", seedFile},
		bad: []bad{
			{nil, "the server requires authentication", true},
			{[]string{"--nats-nkey", otherSeedFile}, "rejected the credentials (authentication by --nats-nkey " + otherSeedFile + ")", false},
			{[]string{"--nats-nkey", tokenFile}, "--nats-nkey " + tokenFile + ": not a readable NKey seed file", false},
		},
		secrets: []string{seed, otherSeed},
	}, {
		name:   "TLS with a private CA",
		secure: serverTLS,
		good:   []string{"--nats-ca-file", pki.caFile},
		bad: []bad{
			{nil, "the server's TLS certificate is not trusted: name the CA that signed it with --nats-ca-file", false},
			{[]string{"--nats-ca-file", pki.otherCAFile}, "not trusted by the CAs of --nats-ca-file " + pki.otherCAFile, true},
			{[]string{"--nats-ca-file", passwordFile}, "no PEM certificate in it", false},
		},
		secrets: []string{password},
	}, {
		name: "mutual TLS",
		secure: func(o *server.Options) {
			serverTLS(o)
			o.TLSConfig.ClientAuth, o.TLSConfig.ClientCAs, o.TLSVerify = tls.RequireAndVerifyClientCert, pki.pool, true
		},
		good: []string{"--nats-ca-file", pki.caFile, "--nats-cert", pki.clientCert, "--nats-key", pki.clientKey},
		bad: []bad{
			{[]string{"--nats-ca-file", pki.caFile}, "the server wants a TLS client certificate: set --nats-cert and --nats-key", true},
			{[]string{"--nats-ca-file", pki.caFile, "--nats-cert", pki.clientCert}, "--nats-cert and --nats-key go together", false},
		},
	}} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			url := startSecureNATS(t, tc.secure)
			w := startWorker(t, append([]string{"--nats-url", url, "--outbox", t.TempDir(), "--http-addr", "127.0.0.1:0"}, tc.good...)...)
			var out strings.Builder
			check := func(r runResult) {
				out.WriteString(r.stdout + r.stderr)
			}

			r := jetmail(t, testCtx(t), "", append([]string{"send", "--nats-url", url, "--to", "a@example.com", "--subject", "secured", "--wait"}, tc.good...)...)
			check(r)
			if r.code != 0 {
				t.Fatalf("send with the right settings: exit %d", r.code)
			}
			id, _ := splitSendOutput(t, r.stdout)
			r = jetmail(t, testCtx(t), "", append([]string{"status", id, "--nats-url", url}, tc.good...)...)
			check(r)
			if r.code != 0 || !strings.Contains(r.stdout, `"State": "sent"`) {
				t.Errorf("status with the right settings: exit %d, stdout %q", r.code, r.stdout)
			}
			for _, b := range tc.bad {
				for _, cmd := range [][]string{
					{"send", "--to", "a@example.com"},
					{"status", id},
				} {
					r := jetmail(t, testCtx(t), "", append(append(cmd, "--nats-url", url), b.args...)...)
					check(r)
					if r.code != 2 || !strings.Contains(r.stderr, b.want) || r.stdout != "" {
						t.Errorf("%s %v: exit %d, stdout %q, stderr %q; want 2 and %q", cmd[0], b.args, r.code, r.stdout, r.stderr, b.want)
					}
				}
			}
			// The worker fails the same way, without starting.
			for _, b := range tc.bad {
				if !b.worker {
					continue
				}
				r := jetmail(t, testCtx(t), "", append([]string{"worker", "--nats-url", url, "--outbox", t.TempDir(), "--http-addr", "127.0.0.1:0"}, b.args...)...)
				check(r)
				if r.code != 2 || !strings.Contains(r.stderr, b.want) {
					t.Errorf("worker %v: exit %d, stderr %q; want 2 and %q", b.args, r.code, r.stderr, b.want)
				}
			}
			w.stop()
			logs := w.logs.String()
			if !strings.Contains(logs, `"msg":"connected to NATS"`) {
				t.Errorf("the worker did not log its connection:\n%s", logs)
			}
			all := out.String() + logs
			for _, s := range tc.secrets {
				if strings.Contains(all, s) {
					t.Errorf("secret %q appears in the output or logs", s)
				}
			}
		})
	}
}

// TestNATSAuthFlags checks that every command that connects to NATS has
// the security flags, with their environment variables.
func TestNATSAuthFlags(t *testing.T) {
	t.Parallel()
	var walk func(c *cobra.Command)
	n := 0
	walk = func(c *cobra.Command) {
		if c.Name() == "bench" && c.Flags().Lookup("nats-user") == nil {
			// TODO: bench is being written by someone else; it gets these
			// flags with natsAuth.addFlags and natsAuth.options.
			t.Logf("%s has no NATS security flags yet", c.CommandPath())
		} else if c.Flags().Lookup("nats-url") != nil {
			n++
			for _, name := range natsAuthFlags {
				f := c.Flags().Lookup(name)
				if f == nil || !strings.Contains(f.Usage, "[$"+envName(name)+"]") {
					t.Errorf("%s lacks --%s with $%s", c.CommandPath(), name, envName(name))
				}
			}
		}
		for _, sub := range c.Commands() {
			walk(sub)
		}
	}
	walk(newRootCmd(stdio{}, mapEnv(nil)))
	if n < 6 { // worker, send, status, results, dead list, dead replay
		t.Errorf("only %d commands connect to NATS", n)
	}
}

// TestNATSAuthOptions checks how the flags and variables combine.
func TestNATSAuthOptions(t *testing.T) {
	t.Parallel()
	pwFile := writeFile(t, "pw", "from-file\n")
	empty := writeFile(t, "empty", "\n")
	_, seedFile, _ := nkeyUser(t)
	creds := writeFile(t, "user.creds", "-----BEGIN NATS USER JWT-----\neyJ0eXAi\n------END NATS USER JWT------\n")
	for _, tc := range []struct {
		name   string
		args   []string
		env    map[string]string
		method string
		err    string
	}{
		{"none", nil, nil, "none", ""},
		{"user and password from env", []string{"--nats-user", "u"}, map[string]string{"JETMAIL_NATS_PASSWORD": "p"}, "user", ""},
		{"all from env", nil, map[string]string{"JETMAIL_NATS_USER": "u", "JETMAIL_NATS_PASSWORD_FILE": pwFile}, "user", ""},
		{"token from env", nil, map[string]string{"JETMAIL_NATS_TOKEN": "t0ken"}, "token", ""},
		{"password file flag beats env password", []string{"--nats-user", "u", "--nats-password-file", pwFile}, map[string]string{"JETMAIL_NATS_PASSWORD": "p"}, "user", ""},
		{"nkey", []string{"--nats-nkey", seedFile}, nil, "nkey", ""},
		{"creds", []string{"--nats-creds", creds}, nil, "creds", ""},
		{"password without user", []string{"--nats-password", "p"}, nil, "", "no --nats-user"},
		{"both password flags", []string{"--nats-user", "u", "--nats-password", "p", "--nats-password-file", pwFile}, nil, "", "set only one of --nats-password and --nats-password-file"},
		{"empty token file", []string{"--nats-token-file", empty}, nil, "", "is empty"},
		{"missing password file", []string{"--nats-user", "u", "--nats-password-file", pwFile + ".missing"}, nil, "", "no such file"},
		{"creds and nkey", []string{"--nats-creds", creds, "--nats-nkey", seedFile}, nil, "", "choose one way"},
		{"not a creds file", []string{"--nats-creds", pwFile}, nil, "", "not a NATS credentials file"},
		{"missing CA file", []string{"--nats-ca-file", pwFile + ".missing"}, nil, "", "--nats-ca-file"},
		{"key without cert", []string{"--nats-key", pwFile}, nil, "", "go together"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			var a natsAuth
			fs := pflag.NewFlagSet("test", pflag.ContinueOnError)
			a.addFlags(fs)
			if err := fs.Parse(tc.args); err != nil {
				t.Fatal(err)
			}
			if _, err := applyEnv(fs, mapEnv(tc.env)); err != nil {
				t.Fatal(err)
			}
			_, err := a.options(fs)
			switch {
			case tc.err == "" && err != nil:
				t.Fatalf("options: %v", err)
			case tc.err != "" && (err == nil || !strings.Contains(err.Error(), tc.err)):
				t.Fatalf("options: error %v, want one with %q", err, tc.err)
			case tc.err != "":
				if code := err.(*exitError).code; code != exitUsage {
					t.Errorf("exit code %d, want 2", code)
				}
			case a.method() != tc.method:
				t.Errorf("method %q, want %q", a.method(), tc.method)
			}
		})
	}
}

func TestScrub(t *testing.T) {
	t.Parallel()
	secret := "pa ss/wo+rd"
	for _, form := range []string{secret, "pa+ss%2Fwo%2Brd", "pa%20ss%2Fwo+rd", "cGEgc3Mvd28rcmQ=", "cGEgc3Mvd28rcmQ"} {
		if got := scrub("before "+form+" after", secret); got != "before xxxxx after" {
			t.Errorf("scrub(%q) = %q", form, got)
		}
	}
	if got := scrub("ab", "ab"); got != "ab" {
		t.Errorf("a two-letter secret is scrubbed: %q", got)
	}
}
