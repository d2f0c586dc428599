package cli

import (
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/jetmail/jetmail/config"
	"github.com/jetmail/jetmail/producer"
	"github.com/jetmail/jetmail/schema"
)

// defaultClientURL is where the client commands look for NATS: the
// embedded server of a `jetmail worker` run without --nats-url.
const defaultClientURL = "nats://127.0.0.1:4222"

// clientFlags are the flags that the client commands (send, status,
// results, dead, bench) share: where NATS is and how to connect to it
// securely.
type clientFlags struct {
	natsURL       string
	subjectPrefix string
	auth          natsAuth
	fs            *pflag.FlagSet // the command's flags, for the secrets' sources
}

func (c *clientFlags) register(cmd *cobra.Command) {
	fs := cmd.Flags()
	c.fs = fs
	fs.StringVar(&c.natsURL, "nats-url", defaultClientURL, "NATS server URL(s), comma-separated")
	fs.StringVar(&c.subjectPrefix, "subject-prefix", schema.DefaultNames().Prefix, "first token of every subject; must match the workers'")
	c.auth.addFlags(fs)
}

// names are the subjects and streams the client commands use.
func (c *clientFlags) names() schema.Names {
	return schema.DefaultNames().WithPrefix(c.subjectPrefix)
}

// client is a connection to NATS and a producer on it.
type client struct {
	nc *nats.Conn
	js jetstream.JetStream
	p  *producer.Producer
}

func (c *client) Close() { c.nc.Close() }

// connect connects to NATS as the client command name. An unreachable
// server is exit status 2, with a hint to start a worker.
func (c *clientFlags) connect(name string) (*client, error) {
	if !schema.ValidToken(c.subjectPrefix) {
		return nil, badFlags("--subject-prefix %q is not a single NATS token", c.subjectPrefix)
	}
	opts := []nats.Option{nats.Name("jetmail " + name)}
	if c.fs != nil {
		sec, err := c.auth.options(c.fs)
		if err != nil {
			return nil, err
		}
		opts = append(opts, sec...)
	}
	nc, err := nats.Connect(c.natsURL, opts...)
	if err != nil {
		return nil, c.auth.natsConnectError(c.natsURL, err, "is `jetmail worker` running?")
	}
	js, err := jetstream.New(nc, jetstream.WithPublishAsyncTimeout(30*time.Second))
	if err != nil {
		nc.Close()
		return nil, fmt.Errorf("jetstream: %w", err)
	}
	p, err := producer.New(js, producer.WithSubjectPrefix(c.subjectPrefix))
	if err != nil {
		nc.Close()
		return nil, withCode(exitUsage, err)
	}
	return &client{nc: nc, js: js, p: p}, nil
}

// clientError gives errors from the producer their exit status: a missing
// stream means no worker ever ran against this server, which is an
// environment problem like an unreachable server (2).
func (c *clientFlags) clientError(err error) error {
	if errors.Is(err, producer.ErrNoStream) {
		return withCode(exitUsage, fmt.Errorf("%w (NATS at %s, subject prefix %q)", err, config.RedactURLs(c.natsURL), c.subjectPrefix))
	}
	return err
}
