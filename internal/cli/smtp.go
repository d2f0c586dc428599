package cli

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strings"

	"github.com/spf13/pflag"

	"github.com/jetmail/jetmail/config"
	"github.com/jetmail/jetmail/schema"
)

// smtpFlags are the --smtp-* flags and --connections of `jetmail worker`:
// the "default" connection, more named ones, and the connections file.
type smtpFlags struct {
	url, caFile, from string
	poolSize          int
	allowed           []string
	named             []string
	rateLimit         float64
	onUncertain       string
	file              string
	dkim              config.DKIMKey
}

func (f *smtpFlags) addFlags(fs *pflag.FlagSet) {
	fs.String("smtp-password", "", "password of the default SMTP connection, replacing the URL's; prefer the environment variable or --smtp-password-file, as command lines are visible to other users")
	fs.String("smtp-password-file", "", "file holding the password of the default SMTP connection (surrounding white space is ignored)")
	fs.StringVar(&f.caFile, "smtp-ca-file", "", "PEM file of the CAs to verify SMTP servers with, instead of the system roots")
	fs.StringVar(&f.from, "smtp-from", "", "default sender, for requests without From")
	fs.IntVar(&f.poolSize, "smtp-pool-size", config.DefaultPoolSize, "largest number of open SMTP sessions per connection")
	fs.StringSliceVar(&f.allowed, "smtp-allowed-senders", nil, "comma-separated senders allowed to send (addresses, or @domain); others get 403; empty allows all")
	fs.Float64Var(&f.rateLimit, "smtp-rate-limit", 0, "most messages per second through the default connection, shared by all its sessions; 0 means no limit")
	fs.StringVar(&f.onUncertain, "smtp-on-uncertain", config.OnUncertainRetry, "after a timeout or drop between the final dot of DATA and the reply: retry (at least once) or assume-sent (at most once)")
	fs.StringArrayVar(&f.named, "smtp-connection", nil, "another named SMTP connection, NAME=URL (repeatable); it shares the other --smtp-* settings but takes its password from its URL")
	fs.StringVar(&f.file, "connections", "", "YAML file of named SMTP connections (see deploy/connections.example.yaml); the --smtp-* flags override its \"default\"")
	fs.StringVar(&f.dkim.Domain, "dkim-domain", "", "domain of a DKIM key of the default connection (with --dkim-selector and --dkim-key-file); more keys go in the connections file")
	fs.StringVar(&f.dkim.Selector, "dkim-selector", "", "selector of that DKIM key (its record is at SELECTOR._domainkey.DOMAIN)")
	fs.StringVar(&f.dkim.KeyFile, "dkim-key-file", "", "PEM file of that DKIM key's private key (jetmail dkim keygen writes one)")
}

// connections resolves the flags and the file into named connections: the
// file's, then "default" from --smtp-url (the flags given override the
// file's "default"), then each --smtp-connection. None means the outbox.
func (f *smtpFlags) connections(fs *pflag.FlagSet, logger *slog.Logger) (map[string]config.SMTP, error) {
	var errs []error
	password, err := secretFlag(fs, "smtp-password", "smtp-password-file")
	if err != nil {
		errs = append(errs, err)
	}
	if f.poolSize < 1 {
		errs = append(errs, badFlags("--smtp-pool-size must be at least 1, got %d", f.poolSize))
	}
	if f.rateLimit < 0 {
		errs = append(errs, badFlags("--smtp-rate-limit must not be negative, got %g", f.rateLimit))
	}
	var fileConns map[string]config.SMTP
	if f.file != "" {
		if fileConns, err = config.LoadConnections(f.file, os.LookupEnv, logger); err != nil {
			errs = append(errs, withCode(exitUsage, err))
		}
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	flagConn := func(url string) config.SMTP {
		return config.SMTP{URL: url, CAFile: f.caFile, PoolSize: f.poolSize, From: f.from, AllowedSenders: f.allowed}
	}
	conns := map[string]config.SMTP{}
	for name, c := range fileConns {
		conns[name] = c
	}
	_, fileDefault := fileConns["default"]
	switch {
	case fileDefault:
		// The flags given override the file's settings of "default".
		c := conns["default"]
		changed := func(name string) bool { return fs.Lookup(name).Changed }
		if f.url != "" {
			c.URL = f.url
		}
		if password != "" {
			c.Password = password
		}
		if changed("smtp-ca-file") {
			c.CAFile = f.caFile
		}
		if changed("smtp-pool-size") {
			c.PoolSize = f.poolSize
		}
		if changed("smtp-from") {
			c.From = f.from
		}
		if changed("smtp-allowed-senders") {
			c.AllowedSenders = f.allowed
		}
		if changed("smtp-rate-limit") {
			c.RateLimit = f.rateLimit
		}
		if changed("smtp-on-uncertain") {
			c.OnUncertain = f.onUncertain
		}
		conns["default"] = c
	case f.url != "":
		c := flagConn(f.url)
		c.Password, c.RateLimit, c.OnUncertain = password, f.rateLimit, f.onUncertain
		conns["default"] = c
	}
	for _, nc := range f.named {
		name, url, ok := strings.Cut(nc, "=")
		switch {
		case !ok || url == "":
			return nil, badFlags("--smtp-connection wants NAME=URL, got %q", config.RedactURL(nc))
		case name == "default":
			return nil, badFlags("--smtp-connection: the default connection is set with --smtp-url")
		case !schema.ValidToken(name):
			return nil, badFlags("--smtp-connection: %q is not a valid connection name", name)
		}
		if _, dup := conns[name]; dup {
			if _, inFile := fileConns[name]; inFile {
				return nil, badFlags("--smtp-connection: %q is also in --connections %s", name, f.file)
			}
			return nil, badFlags("--smtp-connection: %q is named twice", name)
		}
		conns[name] = flagConn(url)
	}
	if f.url == "" && !fileDefault {
		if password != "" {
			logger.Warn("an SMTP password is set but there is no --smtp-url; it is not used")
		}
		if len(conns) > 0 {
			logger.Warn("no default connection (--smtp-url, or \"default\" in --connections): requests that name no Connection will fail with status 400")
		}
	}
	if d := f.dkim; d != (config.DKIMKey{}) {
		c, ok := conns["default"]
		switch {
		case d.Domain == "" || d.Selector == "" || d.KeyFile == "":
			errs = append(errs, badFlags("--dkim-domain, --dkim-selector and --dkim-key-file go together"))
		case !ok:
			errs = append(errs, badFlags("--dkim-* sign the default connection's mail; there is none (--smtp-url)"))
		default:
			c.DKIM = append(c.DKIM, d)
			conns["default"] = c
		}
	}
	if len(conns) == 0 {
		return nil, errors.Join(errs...)
	}
	// Check the URLs and CA files now rather than after connecting to NATS;
	// this dials nothing.
	for name, c := range conns {
		if err := c.Validate(); err != nil {
			errs = append(errs, withCode(exitUsage, fmt.Errorf("connection %q: %s", name, config.Scrub(err.Error(), c.Password))))
		}
	}
	return conns, errors.Join(errs...)
}
