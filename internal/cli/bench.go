package cli

import (
	"errors"
	"strconv"
	"strings"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/jetmail/jetmail/internal/bench"
)

func newBenchCmd(s stdio) *cobra.Command {
	o := bench.DefaultOptions()
	cmd := &cobra.Command{
		Use:     "bench",
		Short:   "Measure throughput, latency and memory against a fast SMTP sink",
		Long:    bench.Long,
		Example: bench.Example,
		Args:    noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			o.DurabilitySet = cmd.Flags().Changed("durability")
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
	fs.StringVar(&o.Mode, "mode", o.Mode, "throughput, latency, backlog or all")
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
	fs.StringVar(&o.NATSURL, "nats-url", "", "NATS server to use (its own durability settings apply); empty starts an embedded one in a temporary folder")
	fs.BoolVar(&o.JSON, "json", false, "print the results as JSON instead of tables")
	fs.StringVar(&o.CPUProfile, "cpuprofile", "", "write a CPU profile (pprof) of the first end-to-end phase to this file")
	fs.DurationVar(&o.Timeout, "timeout", o.Timeout, "longest a single phase may take")
	fs.StringVar(&o.WorkerBinary, "worker-binary", "", "jetmail binary to run as the backlog worker; default: this executable")
	_ = fs.MarkHidden("worker-binary")
	return cmd
}

// reproduceLine is the command line of this run, with the flags that were
// set (on the command line or through JETMAIL_* variables).
func reproduceLine(cmd *cobra.Command) string {
	parts := []string{"jetmail", cmd.Name()}
	cmd.Flags().Visit(func(fl *pflag.Flag) {
		if fl.Name == "worker-binary" {
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
