package cli

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"net/url"
	"os"
	"strings"

	"github.com/jetmail/jetmail/config"
	"github.com/nats-io/nats.go"
	"github.com/spf13/pflag"
)

// natsAuth are the NATS connection security flags that the worker and the
// client commands share: one way to authenticate (user and password, a
// token, an NKey seed or a credentials file) and TLS settings. Secrets may
// come from flags, JETMAIL_* variables or files; they are never printed.
type natsAuth struct {
	user, password, passwordFile string
	token, tokenFile             string
	nkey, creds                  string
	caFile, cert, key            string

	// secrets are the secret values resolved by options, to be scrubbed
	// from error messages.
	secrets []string
}

// natsAuthFlags are the names of the flags of natsAuth.
var natsAuthFlags = []string{
	"nats-user", "nats-password", "nats-password-file", "nats-token", "nats-token-file",
	"nats-nkey", "nats-creds", "nats-ca-file", "nats-cert", "nats-key",
}

func (a *natsAuth) addFlags(fs *pflag.FlagSet) {
	fs.StringVar(&a.user, "nats-user", "", "NATS user name, with --nats-password or --nats-password-file")
	fs.StringVar(&a.password, "nats-password", "", "NATS password; prefer the environment variable or --nats-password-file, as command lines are visible to other users")
	fs.StringVar(&a.passwordFile, "nats-password-file", "", "file holding the NATS password (surrounding white space is ignored)")
	fs.StringVar(&a.token, "nats-token", "", "NATS authentication token; prefer the environment variable or --nats-token-file")
	fs.StringVar(&a.tokenFile, "nats-token-file", "", "file holding the NATS authentication token")
	fs.StringVar(&a.nkey, "nats-nkey", "", "file holding the NKey seed (SU...) of a NATS user")
	fs.StringVar(&a.creds, "nats-creds", "", "NATS credentials file: a user JWT and its NKey seed, as written by nsc")
	fs.StringVar(&a.caFile, "nats-ca-file", "", "PEM file of the CAs to verify the NATS server's certificate with, instead of the system roots; requires TLS")
	fs.StringVar(&a.cert, "nats-cert", "", "PEM client certificate for mutual TLS with NATS (with --nats-key)")
	fs.StringVar(&a.key, "nats-key", "", "PEM private key of --nats-cert")
}

// anySet reports whether any NATS security flag was given.
func (a *natsAuth) anySet(fs *pflag.FlagSet) bool {
	for _, name := range natsAuthFlags {
		if f := fs.Lookup(name); f != nil && f.Changed && f.Value.String() != "" {
			return true
		}
	}
	return false
}

// method names the way of authenticating that the flags choose, for logs
// and messages: "user", "token", "nkey", "creds" or "none".
func (a *natsAuth) method() string {
	switch {
	case a.user != "":
		return "user"
	case a.token != "" || a.tokenFile != "":
		return "token"
	case a.nkey != "":
		return "nkey"
	case a.creds != "":
		return "creds"
	}
	return "none"
}

// tls reports whether the flags ask for TLS.
func (a *natsAuth) tls() bool { return a.caFile != "" || a.cert != "" || a.key != "" }

// options resolves the flags of fs into nats options. It reads every file
// now, so that a missing or bad one is a usage error before any dialing.
func (a *natsAuth) options(fs *pflag.FlagSet) ([]nats.Option, error) {
	var opts []nats.Option
	var errs []error
	password, err := secretFlag(fs, "nats-password", "nats-password-file")
	if err != nil {
		errs = append(errs, err)
	}
	token, err := secretFlag(fs, "nats-token", "nats-token-file")
	if err != nil {
		errs = append(errs, err)
	}
	a.secrets = append(a.secrets, password, token)

	var methods []string
	if a.user != "" || password != "" {
		methods = append(methods, "--nats-user/--nats-password")
		switch {
		case a.user == "":
			errs = append(errs, badFlags("a NATS password is set but no --nats-user"))
		case password == "":
			errs = append(errs, badFlags("--nats-user %q needs --nats-password or --nats-password-file", a.user))
		default:
			opts = append(opts, nats.UserInfo(a.user, password))
		}
	}
	if token != "" {
		methods = append(methods, "--nats-token")
		opts = append(opts, nats.Token(token))
	}
	if a.nkey != "" {
		methods = append(methods, "--nats-nkey")
		opt, err := nats.NkeyOptionFromSeed(a.nkey)
		if err != nil {
			errs = append(errs, withCode(exitUsage, fmt.Errorf("--nats-nkey %s: not a readable NKey seed file: %w", a.nkey, errors.Unwrap(err))))
		} else {
			opts = append(opts, opt)
		}
	}
	if a.creds != "" {
		methods = append(methods, "--nats-creds")
		b, err := os.ReadFile(a.creds)
		switch {
		case err != nil:
			errs = append(errs, withCode(exitUsage, fmt.Errorf("--nats-creds: %w", err)))
		case !bytes.Contains(b, []byte("BEGIN NATS USER JWT")):
			errs = append(errs, withCode(exitUsage, fmt.Errorf("--nats-creds %s: not a NATS credentials file (no user JWT in it)", a.creds)))
		default:
			opts = append(opts, nats.UserCredentials(a.creds))
		}
	}
	if len(methods) > 1 {
		errs = append(errs, badFlags("choose one way to authenticate to NATS, got %s", strings.Join(methods, ", ")))
	}

	if a.tls() {
		cfg := &tls.Config{MinVersion: tls.VersionTLS12}
		if a.caFile != "" {
			pem, err := os.ReadFile(a.caFile)
			if err != nil {
				errs = append(errs, withCode(exitUsage, fmt.Errorf("--nats-ca-file: %w", err)))
			} else {
				pool := x509.NewCertPool()
				if !pool.AppendCertsFromPEM(pem) {
					errs = append(errs, withCode(exitUsage, fmt.Errorf("--nats-ca-file %s: no PEM certificate in it", a.caFile)))
				}
				cfg.RootCAs = pool
			}
		}
		switch {
		case a.cert == "" && a.key == "":
		case a.cert == "" || a.key == "":
			errs = append(errs, badFlags("--nats-cert and --nats-key go together"))
		default:
			pair, err := tls.LoadX509KeyPair(a.cert, a.key)
			if err != nil {
				errs = append(errs, withCode(exitUsage, fmt.Errorf("--nats-cert/--nats-key: %w", err)))
			}
			cfg.Certificates = []tls.Certificate{pair}
		}
		opts = append(opts, nats.Secure(cfg))
	}
	if err := errors.Join(errs...); err != nil {
		return nil, withCode(exitUsage, err)
	}
	return opts, nil
}

// secretFlag returns a secret from --NAME-file (fileFlag) or --NAME
// (valueFlag, usually from its environment variable). When both are set,
// the one given on the command line wins over the one from the
// environment; both on the command line, or both in the environment, is a
// usage error. A file's surrounding white space is ignored and an empty
// file is an error.
func secretFlag(fs *pflag.FlagSet, valueFlag, fileFlag string) (string, error) {
	value, file := fs.Lookup(valueFlag), fs.Lookup(fileFlag)
	useFile := file.Changed && file.Value.String() != ""
	if useFile && value.Changed {
		switch {
		case fromEnv(value) && !fromEnv(file):
		case fromEnv(file) && !fromEnv(value):
			useFile = false
		default:
			return "", badFlags("set only one of --%s and --%s", valueFlag, fileFlag)
		}
	}
	if !useFile {
		return value.Value.String(), nil
	}
	path := file.Value.String()
	b, err := os.ReadFile(path)
	if err != nil {
		return "", withCode(exitUsage, fmt.Errorf("--%s: %w", fileFlag, err))
	}
	p := strings.TrimSpace(string(b))
	if p == "" {
		return "", withCode(exitUsage, fmt.Errorf("--%s %s is empty", fileFlag, path))
	}
	return p, nil
}

// natsConnectError explains why connecting to NATS at urls failed, with
// the flag to look at, and without any secret: exit status 2, as the
// settings or the environment are wrong.
func (a *natsAuth) natsConnectError(urls string, err error, hint string) error {
	shown := config.RedactURLs(urls)
	msg := scrub(err.Error(), a.secretsIn(urls)...)
	var (
		unknownCA x509.UnknownAuthorityError
		hostname  x509.HostnameError
		invalid   x509.CertificateInvalidError
		verify    *tls.CertificateVerificationError
	)
	lower := strings.ToLower(msg)
	var why string
	switch {
	case errors.Is(err, nats.ErrAuthorization) || strings.Contains(lower, "authorization violation"):
		if a.method() == "none" {
			why = "the server requires authentication: set --nats-user and --nats-password (or --nats-password-file), --nats-token, --nats-nkey or --nats-creds"
		} else {
			why = fmt.Sprintf("the server rejected the credentials (authentication by %s): check them", a.methodFlags())
		}
		return withCode(exitUsage, fmt.Errorf("cannot connect to NATS at %s: authorization violation: %s", shown, why))
	case errors.Is(err, nats.ErrAuthExpired), errors.Is(err, nats.ErrAuthRevoked):
		return withCode(exitUsage, fmt.Errorf("cannot connect to NATS at %s: %s: renew the credentials of %s", shown, msg, a.methodFlags()))
	case errors.As(err, &unknownCA), errors.As(err, &hostname), errors.As(err, &invalid), errors.As(err, &verify):
		why = "the server's TLS certificate is not trusted"
		if a.caFile == "" {
			why += ": name the CA that signed it with --nats-ca-file"
		} else {
			why += " by the CAs of --nats-ca-file " + a.caFile
		}
		return withCode(exitUsage, fmt.Errorf("cannot connect to NATS at %s: %s (%s)", shown, why, msg))
	case errors.Is(err, nats.ErrSecureConnWanted):
		return withCode(exitUsage, fmt.Errorf("cannot connect to NATS at %s: the server does not offer TLS, but --nats-ca-file or --nats-cert asks for it", shown))
	case errors.Is(err, nats.ErrSecureConnRequired):
		return withCode(exitUsage, fmt.Errorf("cannot connect to NATS at %s: the server requires TLS: name its CA with --nats-ca-file", shown))
	case strings.Contains(lower, "certificate required") || strings.Contains(lower, "bad certificate") ||
		(a.tls() && (errors.Is(err, io.EOF) || strings.Contains(lower, "connection reset") ||
			strings.Contains(lower, "broken pipe") || strings.Contains(lower, "closed by remote after tls handshake"))):
		// With TLS 1.3 the server checks the client certificate after the
		// handshake, so a refusal may show only as a closed connection.
		why = "the server refused the TLS client certificate"
		if a.cert == "" {
			why = "the server wants a TLS client certificate: set --nats-cert and --nats-key"
		}
		return withCode(exitUsage, fmt.Errorf("cannot connect to NATS at %s: %s (%s)", shown, why, msg))
	}
	if hint != "" {
		hint += " "
	}
	return withCode(exitUsage, fmt.Errorf("cannot connect to NATS at %s: %s(%s)", shown, hint, msg))
}

// methodFlags names the flags of the chosen way of authenticating.
func (a *natsAuth) methodFlags() string {
	switch a.method() {
	case "user":
		return "--nats-user and --nats-password"
	case "token":
		return "--nats-token"
	case "nkey":
		return "--nats-nkey " + a.nkey
	case "creds":
		return "--nats-creds " + a.creds
	}
	return "the URL"
}

// secretsIn returns the resolved secrets and the passwords and tokens in
// the URLs.
func (a *natsAuth) secretsIn(urls string) []string {
	s := append([]string(nil), a.secrets...)
	for _, p := range strings.Split(urls, ",") {
		p = strings.TrimSpace(p)
		if !strings.Contains(p, "://") {
			p = "nats://" + p
		}
		if u, err := url.Parse(p); err == nil && u.User != nil {
			pw, _ := u.User.Password()
			s = append(s, pw)
			if pw == "" { // nats://token@host
				s = append(s, u.User.Username())
			}
		}
	}
	return s
}

// scrub replaces every secret in msg, and the usual encodings of it
// (URL-escaped, base64), by "xxxxx".
func scrub(msg string, secrets ...string) string {
	for _, s := range secrets {
		if len(s) < 3 {
			continue // too short to be told from ordinary text
		}
		for _, form := range []string{s, url.QueryEscape(s), url.PathEscape(s),
			base64.StdEncoding.EncodeToString([]byte(s)), base64.RawStdEncoding.EncodeToString([]byte(s))} {
			msg = strings.ReplaceAll(msg, form, "xxxxx")
		}
	}
	return msg
}
