package cli

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/jetmail/jetmail/internal/bench"
	"github.com/jetmail/jetmail/internal/smtpsink"
)

func newBenchCmd(s stdio) *cobra.Command {
	o := bench.DefaultOptions()
	cmd := &cobra.Command{
		Use:     "bench",
		Short:   "Measure throughput, latency, memory and CPU per process against a fast SMTP sink",
		Long:    bench.Long,
		Example: bench.Example,
		Args:    noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			o.DurabilitySet = cmd.Flags().Changed("durability")
			o.TopologySet = cmd.Flags().Changed("topology")
			o.Command = reproduceLine(cmd)
			err := bench.Run(cmd.Context(), o, s.out, s.errOut)
			var ue *bench.UsageError
			if errors.As(err, &ue) {
				return badFlags("%v", ue.Err)
			}
			return err
		},
	}
	fs := cmd.Flags()
	fs.SortFlags = false
	fs.StringVar(&o.Mode, "mode", o.Mode, "throughput, latency, backlog, lanes, ceiling or all")
	fs.StringVar(&o.Topology, "topology", o.Topology, "processes (server, workers and sink each in a process of its own, as deployed) or inprocess (all in this process)")
	fs.IntVarP(&o.Messages, "messages", "n", o.Messages, "messages per run (throughput mode)")
	fs.StringVar(&o.Sizes, "size", o.Sizes, "message size(s), comma-separated, such as 2KB,100KB")
	fs.IntVar(&o.Runs, "runs", o.Runs, "runs of each measurement; the median is reported")
	fs.IntVar(&o.Concurrency, "concurrency", o.Concurrency, "deliveries in flight per worker (and sending goroutines per transport in the direct phase)")
	fs.IntVar(&o.PoolSize, "pool-size", o.PoolSize, "SMTP sessions per worker")
	fs.IntVar(&o.Prefetch, "prefetch", o.Prefetch, "requests buffered ahead of the deliveries; 0 means --concurrency")
	fs.IntVar(&o.Workers, "workers", o.Workers, "worker instances")
	fs.StringVar(&o.Durability, "durability", o.Durability, "JetStream durability: default, always (fsync every write) or both")
	fs.BoolVar(&o.SyncAlways, "sync-always", false, "the same as --durability always")
	fs.Float64Var(&o.Rate, "rate", o.Rate, "publish rate of the latency mode, messages per second")
	fs.DurationVar(&o.Duration, "duration", o.Duration, "how long the latency mode publishes")
	fs.IntVar(&o.Backlog, "backlog", o.Backlog, "requests of the backlog mode (for sizes over 16KB at most 1 GiB worth)")
	fs.StringVar(&o.Sink, "sink", o.Sink, "SMTP sink: builtin, or postfix (Postfix's smtp-sink, from PATH or /usr/sbin)")
	fs.StringVar(&o.Postfix, "postfix", o.Postfix, "measure Postfix's smtp-source and, with durability always, a Postfix relay: auto (when installed), off or require")
	fs.StringVar(&o.CeilingReplicas, "ceiling-replicas", o.CeilingReplicas, "stream replicas of the ceiling mode, comma-separated: 1 is one jetmail server, 3 a loopback cluster of three")
	fs.StringVar(&o.NATSURL, "nats-url", "", "NATS server to use (its own durability settings apply); empty starts an embedded one in a temporary folder")
	fs.BoolVar(&o.JSON, "json", false, "print the results as JSON instead of tables")
	fs.IntVar(&o.LanesBacklog, "lanes-backlog", o.LanesBacklog, "bulk requests of the lanes mode's backlog")
	fs.Float64Var(&o.UrgentRate, "urgent-rate", o.UrgentRate, "urgent requests per second the lanes mode publishes for --duration")
	fs.Float64Var(&o.NormalRate, "normal-rate", o.NormalRate, "normal requests per second the lanes mode publishes for --duration")
	fs.StringArrayVar(&o.WorkerArgs, "worker-arg", nil, "another flag for every jetmail worker process, such as --worker-arg=--index-dir=none (repeatable)")
	fs.StringArrayVar(&o.ServerArgs, "server-arg", nil, "another flag for every jetmail server process, such as --server-arg=--cpu-profile=/tmp/server.prof (repeatable)")
	fs.StringVar(&o.CPUProfile, "cpuprofile", "", "write a CPU profile (pprof) of this process in the first end-to-end phase to this file (with --topology processes: the publisher and result reader)")
	fs.DurationVar(&o.Timeout, "timeout", o.Timeout, "longest a single phase may take")
	fs.StringVar(&o.Binary, "jetmail-binary", "", "jetmail binary to run as the server, worker and sink processes; default: this executable")
	_ = fs.MarkHidden("jetmail-binary")
	return cmd
}

// reproduceLine is the command line of this run, with the flags that were
// set (on the command line or through JETMAIL_* variables).
func reproduceLine(cmd *cobra.Command) string {
	parts := []string{"jetmail", cmd.Name()}
	cmd.Flags().Visit(func(fl *pflag.Flag) {
		if fl.Name == "jetmail-binary" {
			return
		}
		v := fl.Value.String()
		if fl.Value.Type() == "bool" {
			if v == "true" {
				parts = append(parts, "--"+fl.Name)
			} else {
				parts = append(parts, "--"+fl.Name+"=false")
			}
			return
		}
		if v == "" || strings.ContainsAny(v, " \t'\"$") {
			v = strconv.Quote(v)
		}
		parts = append(parts, "--"+fl.Name+" "+v)
	})
	return strings.Join(parts, " ")
}

const sinkLong = `Run the SMTP sink of jetmail bench: an SMTP server that accepts every
message and only counts it, like Postfix's smtp-sink (package
internal/smtpsink). It offers PIPELINING, 8BITMIME, SMTPUTF8 and
ENHANCEDSTATUSCODES, no TLS and no authentication.

It prints "listening ADDR" on stdout once it accepts connections (with port
0 in --addr, ADDR has the port it chose). With --control it reads standard
input: every line makes it print "messages=N bytes=B connections=C", and the
end of input stops it, so a sink started by a benchmark never outlives it.
It stops on SIGTERM or SIGINT too, and prints the counters last.`

func newSinkCmd(s stdio) *cobra.Command {
	var addr string
	var control bool
	cmd := &cobra.Command{
		Use:    "sink",
		Short:  "Run the fast counting SMTP sink of jetmail bench",
		Long:   sinkLong,
		Hidden: true,
		Example: `  # a sink on port 2525; point a worker at it with --smtp-url smtp://127.0.0.1:2525?tls=none
  jetmail sink --addr 127.0.0.1:2525`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return runSink(cmd.Context(), s, addr, control)
		},
	}
	cmd.Flags().StringVar(&addr, "addr", "127.0.0.1:2525", "address to listen on (port 0: a free port)")
	cmd.Flags().BoolVar(&control, "control", false, "print the counters for every line of standard input; stop at its end")
	return cmd
}

// runSink serves the sink until ctx ends or, with control, standard input
// does.
func runSink(ctx context.Context, s stdio, addr string, control bool) error {
	sink, err := smtpsink.Start(addr)
	if err != nil {
		return fmt.Errorf("sink: %w", err)
	}
	defer sink.Close()
	var mu sync.Mutex // one line at a time on stdout
	counters := func() {
		mu.Lock()
		defer mu.Unlock()
		fmt.Fprintf(s.out, "messages=%d bytes=%d connections=%d\n", sink.Messages(), sink.Bytes(), sink.Connections())
	}
	mu.Lock()
	fmt.Fprintf(s.out, "listening %s\n", sink.Addr())
	mu.Unlock()
	eof := make(chan struct{})
	if control {
		go func() {
			defer close(eof)
			sc := bufio.NewScanner(s.in)
			for sc.Scan() {
				counters()
			}
		}()
	}
	select {
	case <-ctx.Done():
	case <-eof:
	}
	sink.Close()
	counters()
	return nil
}
