package worker

import (
	"errors"
	"fmt"
	"net"
	"strconv"
	"time"

	"github.com/nats-io/nats-server/v2/server"
)

// EmbeddedConfig configures the in-process JetStream server that `jetmail
// worker` starts when no NATS URL is given.
type EmbeddedConfig struct {
	// Addr is where clients connect. Default "127.0.0.1:4222"; port 0 (or
	// -1) picks a free port.
	Addr string
	// StoreDir holds the streams. Default "./jetmail-data".
	StoreDir string
	// SyncAlways fsyncs every write before acknowledging it, as Postfix
	// does for its queue files: an OS crash then loses no acknowledged
	// request, at a large cost in throughput. Default false: JetStream's
	// own interval (2 minutes).
	SyncAlways bool
	// MaxPayload is the largest message. Default 8 MiB.
	MaxPayload int32
}

// StartEmbedded starts a single-node JetStream server and waits until it
// accepts connections. The caller owns it: Shutdown stops it, and
// WaitForShutdown waits for it to finish.
func StartEmbedded(cfg EmbeddedConfig) (*server.Server, error) {
	if cfg.Addr == "" {
		cfg.Addr = "127.0.0.1:4222"
	}
	if cfg.StoreDir == "" {
		cfg.StoreDir = "./jetmail-data"
	}
	if cfg.MaxPayload == 0 {
		cfg.MaxPayload = 8 << 20
	}
	host, portStr, err := net.SplitHostPort(cfg.Addr)
	if err != nil {
		return nil, fmt.Errorf("embedded nats address %q: %w", cfg.Addr, err)
	}
	port, err := strconv.Atoi(portStr)
	if err != nil {
		return nil, fmt.Errorf("embedded nats port %q: %w", portStr, err)
	}
	if port == 0 {
		port = -1
	}
	opts := &server.Options{
		ServerName: "jetmail-embedded",
		Host:       host,
		Port:       port,
		JetStream:  true,
		StoreDir:   cfg.StoreDir,
		MaxPayload: cfg.MaxPayload,
		SyncAlways: cfg.SyncAlways,
		NoSigs:     true,
		NoLog:      true,
	}
	s, err := server.NewServer(opts)
	if err != nil {
		return nil, fmt.Errorf("embedded nats: %w", err)
	}
	go s.Start()
	if !s.ReadyForConnections(10 * time.Second) {
		s.Shutdown()
		return nil, errors.New("embedded nats: not ready after 10s (is the port in use?)")
	}
	return s, nil
}
