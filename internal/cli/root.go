package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"runtime/debug"
	"strings"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
)

// Exit codes of every command.
const (
	exitOK     = 0 // done; for send --wait: the message was sent (200)
	exitFailed = 1 // the message failed, is unknown, or a runtime error
	exitUsage  = 2 // bad flags or arguments, invalid request, NATS unreachable
)

// exitError is an error that carries the process exit code. With silent
// set, the command has already told the user everything on stderr.
type exitError struct {
	code   int
	err    error
	silent bool
}

func (e *exitError) Error() string {
	if e.err == nil {
		return fmt.Sprintf("exit status %d", e.code)
	}
	return e.err.Error()
}

func (e *exitError) Unwrap() error { return e.err }

// usageError marks err as the user's mistake: exit status 2.
func usageError(format string, args ...any) error {
	return &exitError{code: exitUsage, err: fmt.Errorf(format, args...)}
}

// withCode gives err the exit code code.
func withCode(code int, err error) error {
	if err == nil {
		return nil
	}
	return &exitError{code: code, err: err}
}

// silentExit ends the command with code and prints nothing more.
func silentExit(code int) error { return &exitError{code: code, silent: true} }

// stdio is where a command reads and writes; tests pass buffers.
type stdio struct {
	in          io.Reader
	out, errOut io.Writer
}

// Run executes the jetmail command line args and returns the exit status.
// main calls it with the process's arguments and streams; tests call it in
// process.
func Run(ctx context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	root := newRootCmd(stdio{in: stdin, out: stdout, errOut: stderr}, os.LookupEnv)
	root.SetArgs(args)
	cmd, err := root.ExecuteContextC(ctx)
	if err == nil {
		return exitOK
	}
	code := exitFailed
	var ee *exitError
	if errors.As(err, &ee) {
		code = ee.code
		if ee.silent {
			return code
		}
	}
	fmt.Fprintf(stderr, "jetmail: %v\n", err)
	if code == exitUsage && cmd != nil && ee != nil && ee.err != nil && isFlagError(ee.err) {
		fmt.Fprintf(stderr, "Run '%s --help' for usage.\n", cmd.CommandPath())
	}
	return code
}

// flagError is a mistake in the flags or arguments themselves, after which
// a pointer to --help is useful.
type flagError struct{ err error }

func (e *flagError) Error() string { return e.err.Error() }
func (e *flagError) Unwrap() error { return e.err }

func isFlagError(err error) bool {
	var fe *flagError
	return errors.As(err, &fe)
}

// badFlags is a usage error about the flags or arguments.
func badFlags(format string, args ...any) error {
	return &exitError{code: exitUsage, err: &flagError{err: fmt.Errorf(format, args...)}}
}

const rootLong = `jetmail delivers email through a queue. Services publish send requests as
JSON on NATS JetStream (subject mail.send; the keys are those of the SMTP
connector's Send Email action); one or more workers deliver them over SMTP
with retries and publish a result event per state change on
mail.result.<Id>. Nothing is lost when a worker stops or crashes: requests
wait in JetStream until a worker has finished with them.

Quick start, with nothing else installed:

  # terminal 1: a worker with an embedded NATS server (data in ./jetmail-data)
  # that writes each message as an .eml file into ./outbox
  go run ./cmd/jetmail worker

  # terminal 2: send a message and wait for its result
  go run ./cmd/jetmail send --to you@example.com --subject hi --body hello --wait

Add --smtp-url smtp://user@relay.example.com:587 (and JETMAIL_SMTP_PASSWORD)
to the worker to deliver for real, and --nats-url to use a NATS server.

Every flag can also be set by an environment variable: JETMAIL_ followed by
the flag's name in upper case with '_' for '-', such as JETMAIL_NATS_URL.
A flag given on the command line wins over the environment.

Exit status: 0 success; 1 the message failed or is unknown, or a runtime
error; 2 a usage error, an invalid request, or NATS cannot be reached.`

// newRootCmd builds the jetmail command tree. lookupEnv is how flags read
// their JETMAIL_* variables (os.LookupEnv outside tests).
func newRootCmd(s stdio, lookupEnv func(string) (string, bool)) *cobra.Command {
	root := &cobra.Command{
		Use:   "jetmail",
		Short: "Email delivery through NATS JetStream and SMTP",
		Long:  rootLong,
		Example: `  jetmail worker --nats-url nats://nats:4222 --smtp-url smtps://relay.example.com:465
  jetmail send --to you@example.com --from me@example.com --subject hi --body hello --wait
  jetmail send --file request.json
  jetmail status 8F3kQ2
  jetmail results --follow`,
		Version:       version(),
		SilenceUsage:  true,
		SilenceErrors: true,
		// Without a subcommand, print the help; an unknown word is a usage
		// error rather than cobra's generic one.
		Args: func(cmd *cobra.Command, args []string) error {
			if len(args) > 0 {
				return badFlags("unknown command %q for %q", args[0], cmd.CommandPath())
			}
			return nil
		},
		RunE: func(cmd *cobra.Command, _ []string) error { return cmd.Help() },
		PersistentPreRunE: func(cmd *cobra.Command, _ []string) error {
			if _, err := applyEnv(cmd.Flags(), lookupEnv); err != nil {
				return withCode(exitUsage, err)
			}
			return nil
		},
	}
	root.SetIn(s.in)
	root.SetOut(s.out)
	root.SetErr(s.errOut)
	root.SetFlagErrorFunc(func(_ *cobra.Command, err error) error {
		return &exitError{code: exitUsage, err: &flagError{err: err}}
	})
	root.CompletionOptions.DisableDefaultCmd = true

	root.AddCommand(
		newWorkerCmd(s),
		newSendCmd(s),
		newStatusCmd(s),
		newResultsCmd(s),
		newBenchCmd(s),
		newDeadCmd(s),
		newGatewayCmd(s),
		newDKIMCmd(s),
		newCancelCmd(s),
		newWebhooksCmd(s),
		newSuppressCmd(s),
		newSearchCmd(s),
		newServerCmd(s),
		newSinkCmd(s),
	)
	annotateEnv(root)
	return root
}

// version is the module version the binary was built from, or "devel".
func version() string {
	if bi, ok := debug.ReadBuildInfo(); ok && bi.Main.Version != "" && bi.Main.Version != "(devel)" {
		return bi.Main.Version
	}
	return "devel"
}

// WorkerFlags returns the flags of `jetmail worker`, with their defaults,
// for tests that check deployment files against them.
func WorkerFlags() *pflag.FlagSet {
	cmd, _ := workerCommand(stdio{in: strings.NewReader(""), out: io.Discard, errOut: io.Discard})
	annotateEnv(cmd)
	return cmd.Flags()
}
