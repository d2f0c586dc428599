package cli

import (
	"fmt"

	"github.com/spf13/pflag"

	"github.com/jetmail/jetmail/suppress"
)

// oneClickFlags configure jetmail's one-click unsubscribe endpoint
// (contract §9): the secret its tokens are made with and, for workers,
// the public URL the links point at.
type oneClickFlags struct {
	publicURL  string
	secretFile string
}

// addFlags adds --unsubscribe-secret-file, and --public-url when withURL
// (the worker builds the links; a gateway only answers them).
func (o *oneClickFlags) addFlags(fs *pflag.FlagSet, withURL bool) {
	if withURL {
		fs.StringVar(&o.publicURL, "public-url", "", `base URL at which recipients reach this service's HTTP API, such as https://mail.example.com: the one-click unsubscribe links of "Unsubscribe": true point at {public-url}/v1/unsubscribe/{token}; needs --unsubscribe-secret-file`)
	}
	fs.StringVar(&o.secretFile, "unsubscribe-secret-file", "", "file holding the secret (at least 16 bytes; every worker and gateway the links reach needs the same) that signs the one-click unsubscribe tokens and serves /v1/unsubscribe/{token}")
}

// tokens reads the secret file: nil when none is given.
func (o *oneClickFlags) tokens() (*suppress.Tokens, error) {
	if o.secretFile == "" {
		if o.publicURL != "" {
			return nil, badFlags("--public-url needs --unsubscribe-secret-file: the links carry tokens signed with it")
		}
		return nil, nil
	}
	secret, err := suppress.ParseSecretFile(o.secretFile)
	if err != nil {
		return nil, withCode(exitUsage, fmt.Errorf("--unsubscribe-secret-file: %w", err))
	}
	t, err := suppress.NewTokens(secret)
	if err != nil {
		return nil, withCode(exitUsage, fmt.Errorf("--unsubscribe-secret-file: %w", err))
	}
	return t, nil
}
