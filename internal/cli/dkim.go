package cli

import (
	"errors"
	"fmt"
	"io/fs"

	"github.com/spf13/cobra"

	"github.com/jetmail/jetmail/dkim"
)

func newDKIMCmd(s stdio) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "dkim",
		Short: "DKIM keys for signing outgoing mail",
		Long: `DKIM keys for signing outgoing mail (contract §11).

  jetmail dkim keygen   make a key and print its DNS record

Give the key to the worker in the connections file (dkim: list of
{domain, selector, key_file}) or with --dkim-domain, --dkim-selector and
--dkim-key-file for the default connection.`,
		Example: `  jetmail dkim keygen --domain example.com --selector s2026 --out dkim-s2026.pem`,
		Args: func(cmd *cobra.Command, args []string) error {
			if len(args) > 0 {
				return badFlags("unknown command %q for %q", args[0], cmd.CommandPath())
			}
			return nil
		},
		RunE: func(cmd *cobra.Command, _ []string) error { return cmd.Help() },
	}
	cmd.AddCommand(newDKIMKeygenCmd(s))
	return cmd
}

func newDKIMKeygenCmd(s stdio) *cobra.Command {
	var domain, selector, algorithm, out string
	var bits int
	cmd := &cobra.Command{
		Use:   "keygen --domain D --selector S --out FILE",
		Short: "Make a DKIM key and print its DNS record",
		Long: `Make a DKIM private key, write it to --out as PEM (PKCS#8, mode 0600; an
existing file is never overwritten), and print the TXT record to publish:

  S._domainkey.D. IN TXT "v=DKIM1; k=rsa; p=…"

A long key is split into quoted strings of at most 255 characters, as zone
files need. --algorithm is rsa (2048 bits by default, 2048 to 4096) or
ed25519. Publish an RSA key in any case: many receivers do not check
Ed25519 signatures yet.`,
		Example: `  jetmail dkim keygen --domain example.com --selector s2026 --out /run/secrets/dkim-s2026.pem
  jetmail dkim keygen --domain example.com --selector e2026 --algorithm ed25519 --out dkim-e2026.pem`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if domain == "" || selector == "" || out == "" {
				return badFlags("--domain, --selector and --out are required")
			}
			if algorithm == "ed25519" {
				if cmd.Flags().Changed("bits") {
					return badFlags("--bits applies to RSA keys only")
				}
				bits = 0 // the flag's default is an RSA size
			}
			pemBytes, key, err := dkim.Generate(algorithm, bits)
			if err != nil {
				return badFlags("%v", err)
			}
			record, err := dkim.Record(selector, domain, key.Public())
			if err != nil {
				return badFlags("%v", err)
			}
			if err := dkim.WriteKeyFile(out, pemBytes); err != nil {
				if errors.Is(err, fs.ErrExist) {
					return withCode(exitUsage, fmt.Errorf("--out %s exists; not overwriting a key", out))
				}
				return withCode(exitUsage, fmt.Errorf("--out: %w", err))
			}
			fmt.Fprintln(s.errOut, "jetmail: wrote the private key to "+out+"; publish this record in DNS:")
			fmt.Fprintln(s.out, record)
			return nil
		},
	}
	fs := cmd.Flags()
	fs.SortFlags = false
	fs.StringVar(&domain, "domain", "", "the domain the key signs for, such as example.com")
	fs.StringVar(&selector, "selector", "", "the key's selector, such as s2026")
	fs.StringVar(&algorithm, "algorithm", "rsa", "rsa or ed25519")
	fs.IntVar(&bits, "bits", dkim.DefaultRSABits, "size of an RSA key")
	fs.StringVar(&out, "out", "", "file to write the private key to (PEM, mode 0600)")
	return cmd
}
