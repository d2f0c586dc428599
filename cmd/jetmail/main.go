// Command jetmail is the jetmail email delivery service and its client:
// `jetmail worker` consumes send requests from NATS JetStream and delivers
// them over SMTP; `jetmail send`, `status` and `results` talk to it.
package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], os.Stdin, os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}
