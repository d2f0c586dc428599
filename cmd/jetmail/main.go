// Command jetmail is the jetmail email delivery service and its client:
// `jetmail worker` consumes send requests from NATS JetStream and delivers
// them over SMTP; `jetmail send`, `status`, `results`, `cancel`, `dead`
// and the other commands talk to it. The commands live in internal/cli.
package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"

	"github.com/jetmail/jetmail/internal/cli"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := cli.Run(ctx, os.Args[1:], os.Stdin, os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}
