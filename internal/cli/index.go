package cli

import (
	"context"
	"fmt"
	"log/slog"
	"path/filepath"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/spf13/pflag"

	"github.com/jetmail/jetmail/schema"
	"github.com/jetmail/jetmail/search"
)

// addIndexFlag adds --index-dir, the folder of the search index that a
// worker or gateway keeps of the result stream.
func addIndexFlag(fs *pflag.FlagSet, dir *string) {
	fs.StringVar(dir, "index-dir", "./jetmail-index", `folder of the search index (GET /v1/messages, jetmail search, the console), rebuilt from the result stream when missing; one per process; "none" disables search`)
}

// startIndex opens the search index in dir and follows the result stream
// into it until stop is called (nil and a no-op stop for "none"). stop
// waits for the index to stop and closes it.
func startIndex(ctx context.Context, dir string, js jetstream.JetStream, names schema.Names, logger *slog.Logger) (*search.Index, func(), error) {
	if dir == "none" {
		logger.Info("no search index (--index-dir none): GET /v1/messages answers 503")
		return nil, func() {}, nil
	}
	idx, err := search.Open(filepath.Join(dir, "search.db"), logger)
	if err != nil {
		return nil, nil, withCode(exitUsage, fmt.Errorf("--index-dir: %w", err))
	}
	ictx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := idx.Run(ictx, js, names); err != nil {
			logger.Error("search index stopped", "error", err)
		}
	}()
	return idx, func() {
		cancel()
		<-done
		if err := idx.Close(); err != nil {
			logger.Warn("closing the search index", "error", err)
		}
	}, nil
}
