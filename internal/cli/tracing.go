package cli

import (
	"context"
	"time"

	"github.com/jetmail/jetmail/tracing"
)

// startTracing installs the exporter the OTEL_* variables configure
// (none by default) for the process service, and returns the function
// that flushes it on the way out.
func startTracing(ctx context.Context, service string) (stop func(), err error) {
	shutdown, err := tracing.Setup(ctx, service)
	if err != nil {
		return nil, withCode(exitUsage, err)
	}
	return func() {
		sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		defer cancel()
		_ = shutdown(sctx)
	}, nil
}
