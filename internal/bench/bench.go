package bench

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"math/rand/v2"
	"os"
	"runtime"
	"runtime/debug"
	"runtime/pprof"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
	"unicode/utf8"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/jetmail/jetmail/config"
	"github.com/jetmail/jetmail/internal/smtpsink"
	"github.com/jetmail/jetmail/schema"
	"github.com/jetmail/jetmail/worker"
)

// Options are the settings of a run, the flags of `jetmail bench`.
type Options struct {
	// Mode is throughput, latency, backlog, ceiling or all.
	Mode string
	// Topology is processes (the NATS server, the workers and the sink
	// each in a process of its own) or inprocess (everything in the bench
	// process).
	Topology string
	// TopologySet says Topology was given explicitly.
	TopologySet bool
	// Messages is the number of messages per throughput run.
	Messages int
	// Backlog is the number of requests of the backlog mode.
	Backlog int
	// Sizes are the message sizes, comma-separated, such as "2KB,100KB".
	Sizes string
	// Runs is the number of runs of each measurement; the median is
	// reported.
	Runs int
	// Concurrency is the deliveries in flight per worker.
	Concurrency int
	// PoolSize is the number of SMTP sessions per worker.
	PoolSize int
	// Prefetch is the requests buffered ahead of the deliveries; 0 means
	// Concurrency.
	Prefetch int
	// Workers is the number of worker instances.
	Workers int
	// SyncAlways is the same as Durability "always".
	SyncAlways bool
	// Durability is default, always (fsync every write) or both.
	Durability string
	// DurabilitySet says Durability was given explicitly.
	DurabilitySet bool
	// Rate is the publish rate of the latency mode, per second.
	Rate float64
	// Duration is how long the latency mode publishes.
	Duration time.Duration
	// Sink is builtin or postfix.
	Sink string
	// Postfix says whether to measure Postfix's smtp-source into the sink
	// and, with durability always, a Postfix relay: auto (when Postfix is
	// installed), off or require.
	Postfix string
	// CeilingReplicas are the stream replica counts of the ceiling mode,
	// comma-separated, such as "1,3": 1 is one `jetmail server`, more a
	// loopback cluster of that many.
	CeilingReplicas string
	// NATSURL is a NATS server to use; empty starts an embedded one.
	NATSURL string
	// JSON prints the results as JSON instead of tables.
	JSON bool
	// LanesBacklog is the bulk backlog of the lanes mode.
	LanesBacklog int
	// UrgentRate and NormalRate are the steady publish rates (per second)
	// of the lanes mode's urgent and normal requests, for Duration.
	UrgentRate, NormalRate float64
	// WorkerArgs are more flags for every `jetmail worker` process, such
	// as "--index-dir=none" or "--cpu-profile=/tmp/worker.prof".
	WorkerArgs []string
	// ServerArgs are more flags for every `jetmail server` process, such
	// as "--cpu-profile=/tmp/server.prof".
	ServerArgs []string
	// CPUProfile is a file to write a CPU profile of the first end-to-end
	// phase to.
	CPUProfile string
	// Timeout is the longest a single phase may take.
	Timeout time.Duration
	// Binary is the jetmail binary run as the server, worker and sink
	// processes; default: this executable.
	Binary string
	// Command is the command line that reproduces the run, for the report.
	Command string
}

// DefaultOptions are the defaults of `jetmail bench`.
func DefaultOptions() Options {
	return Options{Mode: "throughput", Topology: "processes", Messages: 10000, Backlog: 100000, Sizes: "2KB", Runs: 3,
		Concurrency: worker.DefaultConfig().Concurrency, PoolSize: config.DefaultPoolSize, Workers: 1,
		LanesBacklog: 60000, UrgentRate: 20, NormalRate: 100, Durability: "default", Rate: 1000, Duration: 10 * time.Second,
		Sink: "builtin", Postfix: "auto", CeilingReplicas: "1,3", Timeout: 10 * time.Minute}
}

// UsageError is a mistake in the Options: the command exits 2.
type UsageError struct{ Err error }

// Error returns the mistake.
func (e *UsageError) Error() string { return e.Err.Error() }

// Unwrap returns the mistake.
func (e *UsageError) Unwrap() error { return e.Err }

func badFlags(format string, args ...any) error {
	return &UsageError{Err: fmt.Errorf(format, args...)}
}

// Long is the help text of `jetmail bench`.
const Long = `Measure jetmail's throughput, latency and memory against a fast SMTP sink.

Everything runs on this machine, on loopback. With --topology processes (the
default) it is laid out as deployed: the NATS JetStream server ('jetmail
server', in a temporary folder that is removed afterwards), each worker
('jetmail worker --nats-url ... --smtp-url ...') and the SMTP sink ('jetmail
sink', or Postfix's smtp-sink with --sink postfix) run in processes of their
own, so every JetStream operation is a network round trip; the publisher and
the result reader run in the bench process. The CPU time of each process
(/proc/<pid>/stat and schedstat, read at the start and the end of a phase)
is reported per message, with each one's peak RSS, so the cost shows where
it is spent. --topology inprocess runs the server, the workers and the sink
inside the bench process, as earlier versions did (and --nats-url implies
it).

Modes:

  throughput  for each message size and durability, --runs times, into one
              sink process per run:
                1. direct: the messages built (worker.Build) and sent straight
                   to the sink with jetmail's SMTP transport from the bench
                   process, with the same concurrency and pool size as the
                   worker: the SMTP limit of this machine for jetmail;
                2. smtp-source: Postfix's smtp-source sends as many messages
                   of the same size over as many sessions (when installed);
                3. end-to-end: -n requests published to JetStream while the
                   worker(s) deliver them, until every final result is in;
                4. with durability always, a throwaway Postfix relay (its own
                   main.cf and queue, relaying to the same sink; Postfix
                   fsyncs every queue file) fed by smtp-source, until the
                   sink has every message (when Postfix is installed and the
                   bench runs as root).
              It prints the rates and the ratios end-to-end / direct,
              end-to-end / smtp-source and end-to-end / Postfix relay, the
              publish-to-sent latency (under full load, so mostly queueing),
              and CPU ms per message and peak RSS of each process.
  latency     requests published at a fixed --rate for --duration; the
              publish-to-sent latency percentiles and CPU per message.
  backlog     --backlog requests published with no worker running, then
              one (or --workers) 'jetmail worker' process(es) started: the
              drain rate, and the worker process's own peak RSS and CPU.
  ceiling     the JetStream ceiling of one stream without SMTP: -n requests
              published to the request stream (a work queue) and pulled and
              acknowledged by the bench, as workers do, on one 'jetmail
              server' (R1) and on a loopback cluster of 3 (R3; see
              --ceiling-replicas); msg/s and each node's CPU ms per message.
  all         the four, in that order.

Durability: "default" is JetStream's (fsync every 2 minutes); "always"
(sync_interval: always, --sync-always) fsyncs every write before
acknowledging it, as Postfix does for its queue files. --durability both
measures the two.

Sizes are the size of the built MIME message on the wire: up to 16KB a text
body; above, a 2 KB text body and a base64 attachment. Every figure is the
median of --runs runs. Each message must reach the sink exactly once and end
with a 200 result; otherwise the command fails (exit 1) after printing the
tables.

The requests are published pre-encoded (a JSON template with a fresh Id per
message, and Nats-Msg-Id set), so the publisher costs little.
Latencies are measured from just before the publish to the arrival of the
200 sent result event on a core NATS subscription to mail.result.>.

Postfix (smtp-source, smtp-sink, the relay) is used when installed
(--postfix auto); where it is not, those figures are left out with a note.
The relay is started with 'postfix -c DIR start' and stopped whatever
happens, by the bench and, should the bench be killed, by a watchdog shell
that waits on a pipe from it.`

// Example is the examples of `jetmail bench`.
const Example = `  # the numbers of the README: processes as deployed, medians of 3 runs
  jetmail bench --size 2KB -n 20000 --runs 3
  jetmail bench --size 2KB -n 20000 --runs 3 --concurrency 64
  jetmail bench --size 2KB -n 20000 --runs 3 --durability always   # with a Postfix relay
  jetmail bench --mode latency --rate 1000 --duration 10s --runs 1
  jetmail bench --mode ceiling --size 2KB -n 20000 --runs 3

  # the earlier, in-process measurement
  jetmail bench --topology inprocess -n 20000

  # where does the bench process's own time go?
  jetmail bench -n 50000 --runs 1 --cpuprofile bench.pprof && go tool pprof -top bench.pprof

  # against Postfix's smtp-sink (apt-get install postfix) and a NATS server
  jetmail bench --sink postfix --nats-url nats://127.0.0.1:4222`

// benchSize is one message size to measure.
type benchSize struct {
	Name  string
	Bytes int
}

// benchPlan is the validated configuration of a bench run.
type benchPlan struct {
	modes        []string
	sizes        []benchSize
	durabilities []string
	prefetch     int
	processes    bool  // the process topology
	replicas     []int // of the ceiling mode
	postfix      bool  // measure smtp-source and the Postfix relay
	postfixWhy   string
}

func (f *Options) plan() (*benchPlan, error) {
	p := &benchPlan{prefetch: f.Prefetch}
	switch m := strings.ToLower(f.Mode); m {
	case "throughput", "latency", "backlog", "ceiling", "lanes":
		p.modes = []string{m}
	case "all":
		p.modes = []string{"throughput", "latency", "backlog", "lanes", "ceiling"}
	default:
		return nil, badFlags("--mode must be throughput, latency, backlog, lanes, ceiling or all, got %q", f.Mode)
	}
	switch t := strings.ToLower(f.Topology); {
	case t == "processes" && f.NATSURL != "" && f.TopologySet:
		return nil, badFlags("--topology processes starts its own NATS server; with --nats-url use --topology inprocess")
	case t == "processes":
		p.processes = f.NATSURL == ""
	case t == "inprocess":
	default:
		return nil, badFlags("--topology must be processes or inprocess, got %q", f.Topology)
	}
	if p.processes && runtime.GOOS != "linux" {
		return nil, &UsageError{Err: fmt.Errorf("%w; use --topology inprocess", errNoProc)}
	}
	for _, r := range strings.Split(f.CeilingReplicas, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(r))
		if err != nil || n < 1 || n > 5 {
			return nil, badFlags("--ceiling-replicas must be replica counts from 1 to 5, such as 1,3; got %q", f.CeilingReplicas)
		}
		p.replicas = append(p.replicas, n)
	}
	for _, s := range strings.Split(f.Sizes, ",") {
		n, err := parseSize(s)
		if err != nil {
			return nil, badFlags("--size: %v", err)
		}
		p.sizes = append(p.sizes, benchSize{Name: strings.ToUpper(strings.TrimSpace(s)), Bytes: n})
	}
	d := strings.ToLower(f.Durability)
	if f.SyncAlways {
		if f.DurabilitySet && d != "always" {
			return nil, badFlags("--sync-always contradicts --durability %s", f.Durability)
		}
		d = "always"
	}
	switch d {
	case "default", "always":
		p.durabilities = []string{d}
	case "both":
		p.durabilities = []string{"default", "always"}
	default:
		return nil, badFlags("--durability must be default, always or both, got %q", f.Durability)
	}
	if f.NATSURL != "" {
		if f.DurabilitySet || f.SyncAlways {
			return nil, badFlags("--durability and --sync-always apply to the embedded server; with --nats-url the server's own settings apply")
		}
		p.durabilities = []string{"server"}
		if slices.Contains(p.modes, "backlog") {
			return nil, badFlags("the backlog mode needs the embedded server: its worker process uses the default stream names, which a shared server may be using")
		}
		if slices.Contains(p.modes, "ceiling") {
			return nil, badFlags("the ceiling mode starts its own servers (R1 and a cluster); it does not use --nats-url")
		}
	}
	var errs []error
	atLeastOne := func(name string, n int) {
		if n < 1 {
			errs = append(errs, badFlags("--%s must be at least 1, got %d", name, n))
		}
	}
	atLeastOne("messages", f.Messages)
	atLeastOne("lanes-backlog", f.LanesBacklog)
	if f.UrgentRate <= 0 || f.NormalRate <= 0 {
		errs = append(errs, badFlags("--urgent-rate and --normal-rate must be above 0, got %g and %g", f.UrgentRate, f.NormalRate))
	}
	atLeastOne("runs", f.Runs)
	atLeastOne("concurrency", f.Concurrency)
	atLeastOne("pool-size", f.PoolSize)
	atLeastOne("workers", f.Workers)
	atLeastOne("backlog", f.Backlog)
	if f.Prefetch < 0 {
		errs = append(errs, badFlags("--prefetch must not be negative, got %d", f.Prefetch))
	}
	if p.prefetch == 0 {
		p.prefetch = f.Concurrency
	}
	if f.Rate <= 0 {
		errs = append(errs, badFlags("--rate must be positive, got %g", f.Rate))
	}
	if f.Duration <= 0 || f.Timeout <= 0 {
		errs = append(errs, badFlags("--duration and --timeout must be positive"))
	}
	if f.Sink != "builtin" && f.Sink != "postfix" {
		errs = append(errs, badFlags("--sink must be builtin or postfix, got %q", f.Sink))
	}
	if f.Sink == "postfix" {
		if _, err := findSMTPSink(); err != nil {
			errs = append(errs, &UsageError{Err: err})
		}
	}
	switch f.Postfix {
	case "auto", "require":
		if _, err := findPostfixTool("smtp-source"); err != nil {
			p.postfixWhy = err.Error()
			if f.Postfix == "require" {
				errs = append(errs, &UsageError{Err: fmt.Errorf("--postfix require: %w", err)})
			}
		} else {
			p.postfix = true
		}
	case "off":
		p.postfixWhy = "--postfix off"
	default:
		errs = append(errs, badFlags("--postfix must be auto, off or require, got %q", f.Postfix))
	}
	return p, errors.Join(errs...)
}

// parseSize reads "2KB", "100kb", "1MB" or a number of bytes. KB is 1024.
func parseSize(s string) (int, error) {
	s = strings.ToUpper(strings.TrimSpace(s))
	mult := 1
	for _, u := range []struct {
		suffix string
		mult   int
	}{{"KIB", 1 << 10}, {"MIB", 1 << 20}, {"KB", 1 << 10}, {"MB", 1 << 20}, {"K", 1 << 10}, {"M", 1 << 20}, {"B", 1}} {
		if strings.HasSuffix(s, u.suffix) {
			s, mult = strings.TrimSpace(strings.TrimSuffix(s, u.suffix)), u.mult
			break
		}
	}
	n, err := strconv.Atoi(s)
	if err != nil || n <= 0 {
		return 0, fmt.Errorf("%q is not a size such as 2KB or 100KB", s)
	}
	if n*mult < 512 || n*mult > 4<<20 {
		return 0, fmt.Errorf("%d bytes is outside 512 bytes to 4MB", n*mult)
	}
	return n * mult, nil
}

// benchReport is everything a bench run measured (--json prints it).
type benchReport struct {
	Command    string          `json:"command"`
	Machine    benchMachine    `json:"machine"`
	Settings   benchSettings   `json:"settings"`
	Throughput []throughputRow `json:"throughput,omitempty"`
	Latency    []latencyRow    `json:"latency,omitempty"`
	Backlog    []backlogRow    `json:"backlog,omitempty"`
	Ceiling    []ceilingRow    `json:"ceiling,omitempty"`
	Lanes      []lanesRow      `json:"lanes,omitempty"`
	Notes      []string        `json:"notes,omitempty"`
	Problems   []string        `json:"problems,omitempty"`
}

type benchMachine struct {
	GOOS      string `json:"goos"`
	GOARCH    string `json:"goarch"`
	CPUs      int    `json:"cpus"`
	GoVersion string `json:"go"`
	Time      string `json:"time"`
}

type benchSettings struct {
	Topology    string  `json:"topology"`
	Sink        string  `json:"sink"`
	NATS        string  `json:"nats"`
	Messages    int     `json:"messages"`
	Backlog     int     `json:"backlog"`
	Runs        int     `json:"runs"`
	Concurrency int     `json:"concurrency"`
	PoolSize    int     `json:"pool_size"`
	Prefetch    int     `json:"prefetch"`
	Workers     int     `json:"workers"`
	Rate        float64 `json:"rate"`
	Duration    string  `json:"duration"`
}

// Run measures what opts ask for, printing progress on log and the report
// on out. It fails with a *UsageError for bad options, and with an error
// naming them when a measurement is not valid (a message lost or sent
// twice), after printing the report.
func Run(ctx context.Context, opts Options, out, log io.Writer) error {
	f := &opts
	p, err := f.plan()
	if err != nil {
		return err
	}
	rep := &benchReport{
		Command: f.Command,
		Machine: benchMachine{GOOS: runtime.GOOS, GOARCH: runtime.GOARCH, CPUs: runtime.NumCPU(),
			GoVersion: runtime.Version(), Time: time.Now().UTC().Format(time.RFC3339)},
		Settings: benchSettings{Topology: "processes", Sink: f.Sink, NATS: "embedded", Messages: f.Messages, Backlog: f.Backlog, Runs: f.Runs,
			Concurrency: f.Concurrency, PoolSize: f.PoolSize, Prefetch: p.prefetch, Workers: f.Workers,
			Rate: f.Rate, Duration: f.Duration.String()},
	}
	if f.NATSURL != "" {
		rep.Settings.NATS = config.RedactURLs(f.NATSURL)
	}
	if !p.processes {
		rep.Settings.Topology = "inprocess"
	} else {
		rep.Settings.NATS = "jetmail server process"
	}
	b := &bencher{f: f, plan: p, log: log, report: rep}
	if p.processes {
		// Each worker process keeps its search index (as deployed) in a
		// folder of its own.
		dir, err := os.MkdirTemp("", "jetmail-bench-index-")
		if err != nil {
			return err
		}
		defer os.RemoveAll(dir)
		b.tmp = dir
	}
	if !p.postfix && slices.Contains(p.modes, "throughput") {
		b.note("no smtp-source and no Postfix relay figures: %s", p.postfixWhy)
	}
	if f.CPUProfile != "" {
		b.profile = &profileOnce{path: f.CPUProfile}
		defer b.profile.stop()
	}
	for _, mode := range p.modes {
		for _, size := range p.sizes {
			for _, dur := range p.durabilities {
				if err := ctx.Err(); err != nil {
					return err
				}
				var err error
				switch mode {
				case "throughput":
					err = b.throughput(ctx, size, dur)
				case "latency":
					err = b.latency(ctx, size, dur)
				case "backlog":
					err = b.backlogMode(ctx, size, dur)
				case "ceiling":
					err = b.ceilingMode(ctx, size, dur)
				case "lanes":
					err = b.lanesMode(ctx, size, dur)
				}
				if err != nil {
					if ctx.Err() != nil {
						return ctx.Err()
					}
					return fmt.Errorf("%s %s %s: %w", mode, size.Name, dur, err)
				}
			}
		}
	}
	if b.profile != nil {
		b.profile.stop()
	}
	if f.JSON {
		enc := json.NewEncoder(out)
		enc.SetIndent("", "  ")
		if err := enc.Encode(rep); err != nil {
			return err
		}
	} else {
		printBenchReport(out, rep)
	}
	if len(rep.Problems) > 0 {
		return fmt.Errorf("the measurements are not valid: %s", strings.Join(rep.Problems, "; "))
	}
	return nil
}

// profileOnce writes a CPU profile of the first phase that asks for one.
type profileOnce struct {
	path    string
	started bool
	running bool
	closer  io.Closer
	err     error
}

func (p *profileOnce) start() {
	if p == nil || p.started {
		return
	}
	p.started = true
	fh, err := os.Create(p.path)
	if err != nil {
		p.err = err
		return
	}
	if err := pprof.StartCPUProfile(fh); err != nil {
		fh.Close()
		p.err = err
		return
	}
	p.running = true
	p.closer = fh
}

func (p *profileOnce) stop() {
	if p == nil || !p.running {
		return
	}
	pprof.StopCPUProfile()
	p.running = false
	if p.closer != nil {
		_ = p.closer.Close()
	}
}

// bencher runs the phases and collects the report.
type bencher struct {
	f       *Options
	plan    *benchPlan
	log     io.Writer
	report  *benchReport
	profile *profileOnce

	messages     map[int]*benchMessage // by size
	relaySkipped bool                  // the note saying why is made
	tmp          string                // where worker processes keep their search indexes
	workerSeq    atomic.Int32          // numbers those folders
}

func (b *bencher) logf(format string, args ...any) {
	fmt.Fprintf(b.log, "bench: "+format+"\n", args...)
}

// note records an observation that does not invalidate the figures.
func (b *bencher) note(format string, args ...any) {
	msg := fmt.Sprintf(format, args...)
	if slices.Contains(b.report.Notes, msg) { // the same in every run
		return
	}
	b.report.Notes = append(b.report.Notes, msg)
	b.logf("note: %s", msg)
}

func (b *bencher) problem(format string, args ...any) {
	msg := fmt.Sprintf(format, args...)
	b.report.Problems = append(b.report.Problems, msg)
	b.logf("PROBLEM: %s", msg)
}

// ---- what is measured ----

// latencyStats are publish-to-sent latencies in milliseconds.
type latencyStats struct {
	P50 float64 `json:"p50"`
	P90 float64 `json:"p90"`
	P99 float64 `json:"p99"`
	Max float64 `json:"max"`
}

// phaseStats is one timed phase. CPUSeconds and CPUPer1000 (seconds per
// 1,000 messages, the same number as ms per message) are the sum over the
// processes measured; PeakRSSMiB is the bench process's.
type phaseStats struct {
	Messages   int           `json:"messages"`
	Seconds    float64       `json:"seconds"`
	Rate       float64       `json:"msgs_per_s"`
	CPUSeconds float64       `json:"cpu_s"`
	CPUPer1000 float64       `json:"cpu_s_per_1000"`
	PeakRSSMiB float64       `json:"peak_rss_mib"`
	SinkCount  int64         `json:"sink_count"`
	Latency    *latencyStats `json:"latency_ms,omitempty"`
	Processes  []procStats   `json:"processes,omitempty"`
	// OtherCores is the CPU other processes used during the phase, in
	// cores: a busy machine makes every figure slower. IRQCores is the
	// kernel's interrupt handling (loopback packets among it), StealCores
	// the CPU the hypervisor gave to other machines.
	OtherCores float64 `json:"other_cores"`
	IRQCores   float64 `json:"irq_cores"`
	StealCores float64 `json:"steal_cores"`
}

// machineCell is "other processes / interrupts / steal", in cores.
func (p *phaseStats) machineCell() string {
	return fmt.Sprintf("%.2f / %.2f / %.2f", p.OtherCores, p.IRQCores, p.StealCores)
}

// proc returns the stats of the process named name.
func (p *phaseStats) proc(name string) (procStats, bool) {
	for _, ps := range p.Processes {
		if ps.Name == name {
			return ps, true
		}
	}
	return procStats{}, false
}

// roleCPU is the CPU ms per message of the processes of a role, summed.
func (p *phaseStats) roleCPU(role string) (float64, bool) {
	var v float64
	var ok bool
	for _, ps := range p.Processes {
		if ps.Role == role {
			v += ps.CPUMsPerMsg
			ok = true
		}
	}
	return v, ok
}

type throughputRun struct {
	Direct   phaseStats `json:"direct"`
	EndToEnd phaseStats `json:"end_to_end"`
	Ratio    float64    `json:"ratio"` // end-to-end rate / direct rate
	// SMTPSource is Postfix's smtp-source into the same sink.
	SMTPSource      *phaseStats `json:"smtp_source,omitempty"`
	RatioSMTPSource float64     `json:"ratio_smtp_source,omitempty"` // end-to-end / smtp-source
	// Relay is a Postfix relay fed by smtp-source, delivering to the sink.
	Relay      *phaseStats `json:"postfix_relay,omitempty"`
	RatioRelay float64     `json:"ratio_postfix_relay,omitempty"` // end-to-end / relay
}

type throughputRow struct {
	Size       string          `json:"size"`
	WireBytes  int             `json:"wire_bytes"`
	Durability string          `json:"durability"`
	Runs       []throughputRun `json:"runs"`
	Median     throughputRun   `json:"median"`
}

type latencyRun struct {
	TargetRate  float64      `json:"target_msgs_per_s"`
	PublishRate float64      `json:"publish_msgs_per_s"`
	Messages    int          `json:"messages"`
	Latency     latencyStats `json:"latency_ms"`
	CPUPer1000  float64      `json:"cpu_s_per_1000"`
	PeakRSSMiB  float64      `json:"peak_rss_mib"`
	SinkCount   int64        `json:"sink_count"`
	Processes   []procStats  `json:"processes,omitempty"`
	Machine     phaseStats   `json:"machine"` // OtherCores, IRQCores, StealCores
}

type latencyRow struct {
	Size       string       `json:"size"`
	WireBytes  int          `json:"wire_bytes"`
	Durability string       `json:"durability"`
	Runs       []latencyRun `json:"runs"`
	Median     latencyRun   `json:"median"`
}

type backlogRun struct {
	Messages         int         `json:"messages"`
	PublishRate      float64     `json:"publish_msgs_per_s"`
	DrainSeconds     float64     `json:"drain_seconds"`
	DrainRate        float64     `json:"drain_msgs_per_s"`
	WorkerPeakRSSMiB float64     `json:"worker_peak_rss_mib"`
	WorkerCPUPer1000 float64     `json:"worker_cpu_s_per_1000"`
	SinkCount        int64       `json:"sink_count"`
	Processes        []procStats `json:"processes,omitempty"`
}

type backlogRow struct {
	Size       string       `json:"size"`
	WireBytes  int          `json:"wire_bytes"`
	Durability string       `json:"durability"`
	Runs       []backlogRun `json:"runs"`
	Median     backlogRun   `json:"median"`
}

// median returns the median of f over runs (the mean of the middle two for
// an even count).
func median[T any](runs []T, f func(T) float64) float64 {
	if len(runs) == 0 {
		return 0
	}
	v := make([]float64, len(runs))
	for i, r := range runs {
		v[i] = f(r)
	}
	slices.Sort(v)
	if len(v)%2 == 1 {
		return v[len(v)/2]
	}
	return (v[len(v)/2-1] + v[len(v)/2]) / 2
}

func medianPhase(runs []phaseStats) phaseStats {
	m := phaseStats{
		Messages:   int(median(runs, func(p phaseStats) float64 { return float64(p.Messages) })),
		Seconds:    median(runs, func(p phaseStats) float64 { return p.Seconds }),
		Rate:       median(runs, func(p phaseStats) float64 { return p.Rate }),
		CPUSeconds: median(runs, func(p phaseStats) float64 { return p.CPUSeconds }),
		CPUPer1000: median(runs, func(p phaseStats) float64 { return p.CPUPer1000 }),
		PeakRSSMiB: median(runs, func(p phaseStats) float64 { return p.PeakRSSMiB }),
		SinkCount:  int64(median(runs, func(p phaseStats) float64 { return float64(p.SinkCount) })),
		OtherCores: median(runs, func(p phaseStats) float64 { return p.OtherCores }),
		IRQCores:   median(runs, func(p phaseStats) float64 { return p.IRQCores }),
		StealCores: median(runs, func(p phaseStats) float64 { return p.StealCores }),
	}
	if len(runs) > 0 && runs[0].Latency != nil {
		m.Latency = &latencyStats{
			P50: median(runs, func(p phaseStats) float64 { return p.Latency.P50 }),
			P90: median(runs, func(p phaseStats) float64 { return p.Latency.P90 }),
			P99: median(runs, func(p phaseStats) float64 { return p.Latency.P99 }),
			Max: median(runs, func(p phaseStats) float64 { return p.Latency.Max }),
		}
	}
	m.Processes = medianProcs(runs)
	return m
}

// medianProcs is the median of each process's figures over the runs, for
// the processes of the first run.
func medianProcs(runs []phaseStats) []procStats {
	if len(runs) == 0 {
		return nil
	}
	var out []procStats
	for _, first := range runs[0].Processes {
		var same []procStats
		for _, r := range runs {
			if ps, ok := r.proc(first.Name); ok {
				same = append(same, ps)
			}
		}
		out = append(out, procStats{Name: first.Name, Role: first.Role,
			CPUSeconds:  median(same, func(p procStats) float64 { return p.CPUSeconds }),
			CPUMsPerMsg: median(same, func(p procStats) float64 { return p.CPUMsPerMsg }),
			PeakRSSMiB:  median(same, func(p procStats) float64 { return p.PeakRSSMiB })})
	}
	return out
}

// medianOptional is the median of an optional phase over the runs that
// have it, or nil.
func medianOptional[T any](runs []T, f func(T) *phaseStats) *phaseStats {
	var ps []phaseStats
	for _, r := range runs {
		if p := f(r); p != nil {
			ps = append(ps, *p)
		}
	}
	if len(ps) == 0 {
		return nil
	}
	m := medianPhase(ps)
	return &m
}

// percentiles computes the latency statistics of ns (sorted in place).
func percentiles(ns []int64) latencyStats {
	if len(ns) == 0 {
		return latencyStats{}
	}
	slices.Sort(ns)
	at := func(q float64) float64 {
		i := int(math.Ceil(q*float64(len(ns)))) - 1 // nearest rank
		i = min(max(i, 0), len(ns)-1)
		return float64(ns[i]) / 1e6
	}
	return latencyStats{P50: at(0.50), P90: at(0.90), P99: at(0.99), Max: float64(ns[len(ns)-1]) / 1e6}
}

// cpuTime is the user and system CPU time of this process so far.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// resetPeakRSS collects garbage, returns freed memory to the OS and resets
// the process's peak RSS (VmHWM) to its current RSS, so that the next
// reading is the peak of what follows. It reports whether the reset worked
// (Linux only; otherwise VmHWM is the peak since the process started).
func resetPeakRSS() bool {
	runtime.GC()
	debug.FreeOSMemory()
	return os.WriteFile("/proc/self/clear_refs", []byte("5"), 0) == nil
}

// peakRSSMiB is VmHWM of /proc/<pid>/status ("self" for this process), in
// MiB, or 0 when it cannot be read.
func peakRSSMiB(pid string) float64 {
	data, err := os.ReadFile("/proc/" + pid + "/status")
	if err != nil {
		return 0
	}
	for line := range strings.SplitSeq(string(data), "\n") {
		if rest, ok := strings.CutPrefix(line, "VmHWM:"); ok {
			kb, err := strconv.ParseFloat(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(rest), "kB")), 64)
			if err != nil {
				return 0
			}
			return kb / 1024
		}
	}
	return 0
}

// ---- the messages ----

// benchMessage is the request of one size, with its built size.
type benchMessage struct {
	req       schema.Request
	wireBytes int
}

const loremLine = "Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod.\n"

// loremText is n bytes of text in lines shorter than 76 characters, so
// that quoted-printable leaves it as it is.
func loremText(n int) string {
	s := strings.Repeat(loremLine, n/len(loremLine)+1)
	return s[:max(n, 0)]
}

// makeBenchMessage returns a request whose built message is about size
// bytes: up to 16KB a text body, above a 2 KB body and a base64 attachment.
// The lengths are calibrated by building the message and measuring it.
func makeBenchMessage(size int) (*benchMessage, error) {
	req := schema.Request{
		Id:      "bench-calibration",
		To:      schema.AddressList{"rcpt@example.net"},
		From:    "jetmail bench <bench@example.com>",
		Subject: "jetmail bench message",
	}
	const small = 16 << 10
	bodyLen, attLen := size-600, 0
	if size > small {
		bodyLen, attLen = 2048, (size-2048-900)*3/4*76/78
	}
	rnd := rand.New(rand.NewPCG(1, 2))
	attachment := func(n int) []schema.Attachment {
		if n <= 0 {
			return nil
		}
		raw := make([]byte, n)
		for i := range raw {
			raw[i] = byte(rnd.Uint32())
		}
		return []schema.Attachment{{FileName: "report.pdf", ContentType: "application/pdf",
			ContentTransferEncoding: "base64", ContentData: base64.StdEncoding.EncodeToString(raw)}}
	}
	var built int
	for range 4 {
		req.Body = loremText(bodyLen)
		req.Attachments = attachment(attLen)
		var err error
		if built, err = builtSize(&req); err != nil {
			return nil, err
		}
		diff := size - built
		if abs(diff) < 16 {
			break
		}
		if attLen > 0 {
			attLen += diff * 3 / 4 * 76 / 78
		} else {
			bodyLen = max(bodyLen+diff, 1)
		}
	}
	if err := req.Validate(); err != nil {
		return nil, err
	}
	return &benchMessage{req: req, wireBytes: built}, nil
}

func abs(n int) int {
	if n < 0 {
		return -n
	}
	return n
}

// builtSize is the size of the message Build makes of req, with the
// line-ending dots and the final ".\r\n" of DATA left out.
func builtSize(req *schema.Request) (int, error) {
	env, err := worker.Build(req, worker.BuildOptions{})
	if err != nil {
		return 0, err
	}
	var c countWriter
	if _, err := env.Msg.WriteTo(&c); err != nil {
		return 0, err
	}
	return int(c), nil
}

type countWriter int64

func (c *countWriter) Write(p []byte) (int, error) { *c += countWriter(len(p)); return len(p), nil }

// runTag is a short random token that makes the Ids of a run unique.
func runTag() string {
	const letters = "abcdefghijklmnopqrstuvwxyz0123456789"
	b := make([]byte, 6)
	for i := range b {
		b[i] = letters[rand.IntN(len(letters))]
	}
	return string(b)
}

// idPrefix is the start of every Id of a run; the Id of message i is the
// prefix and i in 9 digits.
func idPrefix(tag string) string { return "jb" + tag + "-" }

func benchID(prefix string, i int) string { return fmt.Sprintf("%s%09d", prefix, i) }

// ---- the JetStream server ----

type benchServer struct {
	url     string
	names   schema.Names
	cleanup func()
	nodes   []*serverProc // the server processes (process topology)
}

// startServer starts a JetStream server in a temporary folder: a
// `jetmail server` process, or (inprocess) an embedded one; or, with
// --nats-url, uses that server with stream and subject names of its own
// (deleted afterwards).
func (b *bencher) startServer(ctx context.Context, durability string) (*benchServer, error) {
	if b.f.NATSURL != "" {
		tag := strings.ToUpper(runTag())
		names := schema.Names{Prefix: "jmbench" + strings.ToLower(tag), RequestStream: "JMBENCH_" + tag + "_REQUESTS",
			ResultStream: "JMBENCH_" + tag + "_RESULTS", DeadStream: "JMBENCH_" + tag + "_DEAD", Consumer: "jmbench-" + tag,
			CancelBucket: "JMBENCH_" + tag + "_CANCELLED", Suppressions: "JMBENCH_" + tag + "_SUPPRESSIONS"}
		return &benchServer{url: b.f.NATSURL, names: names, cleanup: func() {
			nc, err := nats.Connect(b.f.NATSURL)
			if err != nil {
				return
			}
			defer nc.Close()
			js, err := jetstream.New(nc)
			if err != nil {
				return
			}
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			for _, s := range []string{names.RequestStream, names.ResultStream, names.DeadStream} {
				_ = js.DeleteStream(ctx, s)
			}
			for _, kv := range []string{names.CancelBucket, names.Suppressions} {
				_ = js.DeleteKeyValue(ctx, kv)
			}
		}}, nil
	}
	if b.plan.processes {
		nodes, cleanup, err := b.startServerProcs(ctx, durability, 1)
		if err != nil {
			return nil, err
		}
		return &benchServer{url: nodes[0].url, names: schema.DefaultNames(), cleanup: cleanup, nodes: nodes}, nil
	}
	dir, err := os.MkdirTemp("", "jetmail-bench-")
	if err != nil {
		return nil, err
	}
	if durability == "always" && onTmpfs(dir) {
		b.logf("warning: %s is on tmpfs, where fsync costs nothing; set TMPDIR to a folder on a disk", dir)
	}
	srv, err := worker.StartEmbedded(worker.EmbeddedConfig{Addr: "127.0.0.1:0", StoreDir: dir, SyncAlways: durability == "always"})
	if err != nil {
		os.RemoveAll(dir)
		return nil, err
	}
	return &benchServer{url: srv.ClientURL(), names: schema.DefaultNames(), cleanup: func() {
		srv.Shutdown()
		srv.WaitForShutdown()
		os.RemoveAll(dir)
	}}, nil
}

// measured returns the server processes to measure (none in process).
func (s *benchServer) measured() []*measured {
	var out []*measured
	for _, n := range s.nodes {
		out = append(out, measureChild("server", n.child))
	}
	return out
}

// onTmpfs reports whether dir is on a RAM file system.
func onTmpfs(dir string) bool {
	var st syscall.Statfs_t
	return syscall.Statfs(dir, &st) == nil && st.Type == 0x01021994 // TMPFS_MAGIC
}

// ---- the SMTP sinks ----

// benchSink is an SMTP server that accepts and counts every message.
type benchSink interface {
	URL() string
	Addr() string
	Messages() int64
	Close()
}

// startSink starts the sink of a run: a `jetmail sink` process (or, in
// process, package smtpsink's server), or Postfix's smtp-sink.
func (b *bencher) startSink() (benchSink, error) {
	if b.f.Sink == "postfix" {
		return startPostfixSink()
	}
	if b.plan.processes {
		bin, err := b.binary()
		if err != nil {
			return nil, err
		}
		return startSinkProc(bin)
	}
	return smtpsink.Start("127.0.0.1:0")
}

// sinkMeasured returns the sink's process to measure, or nil when it runs
// in this process.
func sinkMeasured(s benchSink) *measured {
	if p, ok := s.(interface{ measured() *measured }); ok {
		return p.measured()
	}
	return nil
}

// awaitSinkCount waits briefly for the sink to count want messages (the
// Postfix sink reports its counter asynchronously) and returns its count.
func awaitSinkCount(s benchSink, want int64) int64 {
	deadline := time.Now().Add(3 * time.Second)
	for s.Messages() < want && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	time.Sleep(20 * time.Millisecond) // let a surplus show
	return s.Messages()
}

// ---- workers, publisher and results ----

// workerConfig is the configuration of every worker of a run.
func (b *bencher) workerConfig(names schema.Names, smtpURL string) worker.Config {
	return worker.Config{
		Names:       names,
		Connections: map[string]config.SMTP{"default": {URL: smtpURL, PoolSize: b.f.PoolSize}},
		Concurrency: b.f.Concurrency,
		Prefetch:    b.plan.prefetch,
		GracePeriod: 10 * time.Second,
	}
}

// startWorkers runs --workers workers, each with its own NATS connection,
// and returns once all are consuming: `jetmail worker` processes (whose
// CPU and memory the phases measure), or, in process, workers in this
// process.
func (b *bencher) startWorkers(ctx context.Context, srv *benchServer, smtpURL string) (stop func(), procs []*measured, err error) {
	if b.plan.processes {
		children, stop, err := b.startWorkerProcs(ctx, srv, smtpURL)
		if err != nil {
			return nil, nil, err
		}
		for _, c := range children {
			procs = append(procs, measureChild("worker", c))
		}
		return stop, procs, nil
	}
	stop, err = b.startInProcessWorkers(ctx, srv, smtpURL)
	return stop, nil, err
}

// startInProcessWorkers runs --workers workers in this process.
func (b *bencher) startInProcessWorkers(ctx context.Context, srv *benchServer, smtpURL string) (stop func(), err error) {
	var stops []func()
	var once sync.Once
	stop = func() { // idempotent
		once.Do(func() {
			for _, s := range stops {
				s()
			}
		})
	}
	for range b.f.Workers {
		nc, err := nats.Connect(srv.url, nats.Name("jetmail bench worker"), nats.MaxReconnects(-1))
		if err != nil {
			stop()
			return nil, err
		}
		js, err := jetstream.New(nc)
		if err != nil {
			nc.Close()
			stop()
			return nil, err
		}
		w, err := worker.New(b.workerConfig(srv.names, smtpURL), js, nil, nil)
		if err != nil {
			nc.Close()
			stop()
			return nil, err
		}
		wctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
		done := make(chan error, 1)
		go func() { done <- w.Run(wctx) }()
		stops = append(stops, func() {
			cancel()
			select {
			case <-done:
			case <-time.After(30 * time.Second):
			}
			nc.Close()
		})
		deadline := time.Now().Add(30 * time.Second)
		for !w.Ready() {
			select {
			case err := <-done:
				stop()
				if err == nil {
					err = errors.New("worker stopped while starting")
				}
				return nil, err
			default:
			}
			if time.Now().After(deadline) {
				stop()
				return nil, errors.New("worker not ready after 30s")
			}
			time.Sleep(5 * time.Millisecond)
		}
	}
	return stop, nil
}

// benchPublisher publishes pre-encoded requests: a JSON template whose Id
// is overwritten for each message.
type benchPublisher struct {
	nc      *nats.Conn
	js      jetstream.JetStream
	subject string
	prefix  string
	tmpl    []byte
	idOff   int
	stall   time.Duration
	errs    atomic.Int64
	lastErr atomic.Value
}

func newBenchPublisher(srv *benchServer, msg *benchMessage, prefix string, timeout time.Duration) (*benchPublisher, error) {
	p := &benchPublisher{subject: srv.names.SendSubject(), prefix: prefix, stall: timeout}
	req := msg.req
	req.Id = benchID(prefix, 0)
	data, err := json.Marshal(&req)
	if err != nil {
		return nil, err
	}
	p.tmpl, p.idOff = data, bytes.Index(data, []byte(req.Id))
	if p.idOff < 0 {
		return nil, errors.New("request template without its Id")
	}
	if p.nc, err = nats.Connect(srv.url, nats.Name("jetmail bench publisher")); err != nil {
		return nil, err
	}
	// The window of unacknowledged publishes: 4000 small messages, but
	// no more than 64 MiB, half of the queue a stream accepts before it
	// answers 429 (too many requests).
	window := min(4000, max(16, (64<<20)/len(p.tmpl)))
	p.js, err = jetstream.New(p.nc,
		jetstream.WithPublishAsyncMaxPending(window),
		jetstream.WithPublishAsyncTimeout(timeout),
		jetstream.WithPublishAsyncErrHandler(func(_ jetstream.JetStream, _ *nats.Msg, err error) {
			p.errs.Add(1)
			p.lastErr.Store(err.Error())
		}))
	if err != nil {
		p.nc.Close()
		return nil, err
	}
	return p, nil
}

// publish sends message i without waiting for its acknowledgement; it
// waits while the window of unacknowledged publishes is full.
func (p *benchPublisher) publish(i int) error {
	id := benchID(p.prefix, i)
	data := make([]byte, len(p.tmpl))
	copy(data, p.tmpl)
	copy(data[p.idOff:], id)
	_, err := p.js.PublishMsgAsync(&nats.Msg{Subject: p.subject, Data: data},
		jetstream.WithMsgID(id), jetstream.WithStallWait(p.stall))
	return err
}

// wait waits until every publish is acknowledged and reports any that
// failed.
func (p *benchPublisher) wait(ctx context.Context) error {
	select {
	case <-p.js.PublishAsyncComplete():
	case <-ctx.Done():
		return ctx.Err()
	case <-time.After(p.stall):
		return fmt.Errorf("%d publishes not acknowledged after %s", p.js.PublishAsyncPending(), p.stall)
	}
	if n := p.errs.Load(); n > 0 {
		return fmt.Errorf("%d publishes failed, the last with: %v", n, p.lastErr.Load())
	}
	return nil
}

func (p *benchPublisher) close() { p.nc.Close() }

// resultTracker follows the result events of a run on a core NATS
// subscription: the time each message's 200 arrived, and how many
// messages are final.
type resultTracker struct {
	n          int
	subjPrefix string // <prefix>.result.<id prefix>
	published  []atomic.Int64
	latency    []int64 // ns from publish to the sent event; 0: none yet
	sent       []uint8 // sent events per message (saturating)
	finals     atomic.Int64
	dups       atomic.Int64 // sent events of another delivery attempt: a second SMTP send
	repeats    atomic.Int64 // the same sent event (same Nats-Msg-Id) seen again
	firstID    []string     // Nats-Msg-Id of each message's first sent event
	dupSample  atomic.Value // a few duplicate event ids, for the report
	failed     atomic.Int64
	firstFail  atomic.Value
	end        time.Time // when the last final arrived; read after done
	done       chan struct{}
	nc         *nats.Conn
	sub        *nats.Subscription
}

var stateKey = []byte(`"State":"`)

func newResultTracker(srv *benchServer, prefix string, n int) (*resultTracker, error) {
	t := &resultTracker{n: n, subjPrefix: srv.names.ResultSubject(prefix), published: make([]atomic.Int64, n),
		latency: make([]int64, n), sent: make([]uint8, n), firstID: make([]string, n), done: make(chan struct{})}
	var err error
	if t.nc, err = nats.Connect(srv.url, nats.Name("jetmail bench results")); err != nil {
		return nil, err
	}
	if t.sub, err = t.nc.Subscribe(srv.names.ResultSubjects(), t.handle); err != nil {
		t.nc.Close()
		return nil, err
	}
	_ = t.sub.SetPendingLimits(-1, -1) // never drop an event as a slow consumer
	if err := t.nc.Flush(); err != nil {
		t.nc.Close()
		return nil, err
	}
	return t, nil
}

// handle reads the State of one result event, and the message index from
// its subject. It runs on the subscription's single goroutine.
func (t *resultTracker) handle(m *nats.Msg) {
	now := time.Now()
	rest, ok := strings.CutPrefix(m.Subject, t.subjPrefix)
	if !ok {
		return
	}
	i, err := strconv.Atoi(rest)
	if err != nil || i < 0 || i >= t.n {
		return
	}
	var state string
	if k := bytes.Index(m.Data, stateKey); k >= 0 {
		v := m.Data[k+len(stateKey):]
		if e := bytes.IndexByte(v, '"'); e >= 0 {
			state = string(v[:e])
		}
	}
	switch state {
	case string(schema.StateSent):
		if t.sent[i] < 255 {
			t.sent[i]++
		}
		if t.sent[i] > 1 {
			// The same event published twice (a client retry) reaches
			// core NATS subscribers twice though the stream stores it
			// once; another event id means another delivery.
			id := m.Header.Get(jetstream.MsgIDHeader)
			if id != "" && id == t.firstID[i] {
				t.repeats.Add(1)
			} else {
				t.dups.Add(1)
			}
			if old, _ := t.dupSample.Load().(string); strings.Count(old, ";") < 5 {
				t.dupSample.Store(old + t.firstID[i] + " then " + id + "; ")
			}
			return
		}
		t.firstID[i] = m.Header.Get(jetstream.MsgIDHeader)
		t.latency[i] = now.UnixNano() - t.published[i].Load()
	case string(schema.StateFailed):
		if t.failed.Add(1) == 1 {
			t.firstFail.Store(string(m.Data))
		}
	default:
		return
	}
	if t.finals.Add(1) == int64(t.n) {
		t.end = now
		close(t.done)
	}
}

// wait waits for every final result.
func (t *resultTracker) wait(ctx context.Context, timeout time.Duration) error {
	select {
	case <-t.done:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	case <-time.After(timeout):
		return fmt.Errorf("only %d of %d final results after %s", t.finals.Load(), t.n, timeout)
	}
}

// latencies returns the publish-to-sent latencies of the sent messages.
func (t *resultTracker) latencies() []int64 {
	out := make([]int64, 0, t.n)
	for i, l := range t.latency {
		if t.sent[i] > 0 {
			out = append(out, l)
		}
	}
	return out
}

// check records a problem unless every message reached the sink once and
// got exactly one 200.
func (b *bencher) check(what string, n int, sinkCount int64, t *resultTracker) {
	if sinkCount != int64(n) {
		b.problem("%s: the sink received %d messages, want %d", what, sinkCount, n)
	}
	if t == nil {
		return
	}
	if f := t.failed.Load(); f > 0 {
		b.problem("%s: %d messages failed; the first: %v", what, f, t.firstFail.Load())
	}
	if d := t.dups.Load(); d > 0 {
		b.problem("%s: %d messages sent again in another delivery attempt (event ids: %v)", what, d, t.dupSample.Load())
	}
	if r := t.repeats.Load(); r > 0 {
		b.note("%s: %d sent events were published twice (same event id, so stored once; the SMTP sink counted no duplicate): %v", what, r, t.dupSample.Load())
	}
}

func (t *resultTracker) close() { t.nc.Close() }

// ---- the modes ----

// message returns the request of a size, calibrated once.
func (b *bencher) message(size benchSize) (*benchMessage, error) {
	if b.messages == nil {
		b.messages = map[int]*benchMessage{}
	}
	if m, ok := b.messages[size.Bytes]; ok {
		return m, nil
	}
	m, err := makeBenchMessage(size.Bytes)
	if err != nil {
		return nil, fmt.Errorf("bench message of %s: %w", size.Name, err)
	}
	b.messages[size.Bytes] = m
	return m, nil
}

// throughput measures the phases of a throughput run --runs times.
func (b *bencher) throughput(ctx context.Context, size benchSize, durability string) error {
	msg, err := b.message(size)
	if err != nil {
		return err
	}
	row := throughputRow{Size: size.Name, WireBytes: msg.wireBytes, Durability: durability}
	n := b.f.Messages
	for run := 1; run <= b.f.Runs; run++ {
		r, err := b.throughputRun(ctx, msg, n, durability)
		if err != nil {
			return err
		}
		row.Runs = append(row.Runs, r)
		line := fmt.Sprintf("throughput %s %s run %d/%d: direct %s msg/s", size.Name, durability, run, b.f.Runs, thousands(r.Direct.Rate))
		if r.SMTPSource != nil {
			line += fmt.Sprintf(", smtp-source %s msg/s", thousands(r.SMTPSource.Rate))
		}
		line += fmt.Sprintf(", end-to-end %s msg/s (%.0f %% of direct), p99 %.0f ms", thousands(r.EndToEnd.Rate), 100*r.Ratio, r.EndToEnd.Latency.P99)
		if r.Relay != nil {
			line += fmt.Sprintf(", Postfix relay %s msg/s", thousands(r.Relay.Rate))
		}
		b.logf("%s", line)
	}
	row.Median = throughputRun{
		Direct:          medianPhase(collect(row.Runs, func(r throughputRun) phaseStats { return r.Direct })),
		EndToEnd:        medianPhase(collect(row.Runs, func(r throughputRun) phaseStats { return r.EndToEnd })),
		Ratio:           median(row.Runs, func(r throughputRun) float64 { return r.Ratio }),
		SMTPSource:      medianOptional(row.Runs, func(r throughputRun) *phaseStats { return r.SMTPSource }),
		RatioSMTPSource: medianWhere(row.Runs, func(r throughputRun) (float64, bool) { return r.RatioSMTPSource, r.SMTPSource != nil }),
		Relay:           medianOptional(row.Runs, func(r throughputRun) *phaseStats { return r.Relay }),
		RatioRelay:      medianWhere(row.Runs, func(r throughputRun) (float64, bool) { return r.RatioRelay, r.Relay != nil }),
	}
	b.report.Throughput = append(b.report.Throughput, row)
	return nil
}

// medianWhere is the median of f over the runs for which it reports ok.
func medianWhere[T any](runs []T, f func(T) (float64, bool)) float64 {
	var v []float64
	for _, r := range runs {
		if x, ok := f(r); ok {
			v = append(v, x)
		}
	}
	return median(v, func(x float64) float64 { return x })
}

// throughputRun is one run: direct, smtp-source, end-to-end and the
// Postfix relay, into one sink.
func (b *bencher) throughputRun(ctx context.Context, msg *benchMessage, n int, durability string) (throughputRun, error) {
	var r throughputRun
	sink, err := b.startSink()
	if err != nil {
		return r, err
	}
	defer sink.Close()
	if r.Direct, err = b.direct(ctx, msg, n, sink); err != nil {
		return r, fmt.Errorf("direct: %w", err)
	}
	if b.plan.postfix {
		if r.SMTPSource, err = b.smtpSource(ctx, sink, msg, n); err != nil {
			return r, fmt.Errorf("smtp-source: %w", err)
		}
	}
	if r.EndToEnd, err = b.endToEnd(ctx, msg, n, durability, sink); err != nil {
		return r, fmt.Errorf("end-to-end: %w", err)
	}
	if durability == "always" && b.plan.postfix {
		if r.Relay, err = b.relay(ctx, sink, msg, n); err != nil {
			return r, fmt.Errorf("Postfix relay: %w", err)
		}
	}
	r.Ratio = r.EndToEnd.Rate / r.Direct.Rate
	if r.SMTPSource != nil {
		r.RatioSMTPSource = r.EndToEnd.Rate / r.SMTPSource.Rate
	}
	if r.Relay != nil {
		r.RatioRelay = r.EndToEnd.Rate / r.Relay.Rate
	}
	return r, nil
}

func collect[T, U any](in []T, f func(T) U) []U {
	out := make([]U, len(in))
	for i, v := range in {
		out[i] = f(v)
	}
	return out
}

// direct builds n messages and sends them straight to sink with jetmail's
// SMTP transport, from this process: --workers transports, each with
// --pool-size sessions and --concurrency goroutines, as the workers have.
func (b *bencher) direct(ctx context.Context, msg *benchMessage, n int, sink benchSink) (phaseStats, error) {
	prefix := idPrefix(runTag())
	var transports []*worker.SMTPTransport
	defer func() {
		for _, t := range transports {
			t.Close()
		}
	}()
	for range b.f.Workers {
		t, err := worker.NewSMTPTransport(map[string]config.SMTP{"default": {URL: sink.URL(), PoolSize: b.f.PoolSize}}, nil, nil)
		if err != nil {
			return phaseStats{}, err
		}
		transports = append(transports, t)
	}
	ctx, cancel := context.WithTimeout(ctx, b.f.Timeout)
	defer cancel()
	var next, failures atomic.Int64
	var firstErr atomic.Value
	var wg sync.WaitGroup
	base := sink.Messages()
	m := startMeter(sinkMeasured(sink), measureSelf())
	for _, t := range transports {
		for range b.f.Concurrency {
			wg.Go(func() {
				for ctx.Err() == nil {
					i := int(next.Add(1) - 1)
					if i >= n {
						return
					}
					req := msg.req
					req.Id = benchID(prefix, i)
					env, err := worker.Build(&req, worker.BuildOptions{})
					if err == nil {
						_, err = t.Send(ctx, env)
					}
					if err != nil {
						if failures.Add(1) == 1 {
							firstErr.Store(err.Error())
						}
					}
				}
			})
		}
	}
	wg.Wait()
	st := m.stats(n, time.Now())
	if err := ctx.Err(); err != nil {
		return st, fmt.Errorf("%w after %d of %d messages", err, next.Load(), n)
	}
	if f := failures.Load(); f > 0 {
		b.problem("direct: %d sends failed; the first: %v", f, firstErr.Load())
	}
	st.SinkCount = awaitSinkCount(sink, base+int64(n)) - base
	b.check("direct", n, st.SinkCount, nil)
	return st, nil
}

// phaseProcs lists the processes a phase with a server, workers and a sink
// measures: in process only this one.
func phaseProcs(srv *benchServer, workers []*measured, sink benchSink) []*measured {
	procs := srv.measured()
	procs = append(procs, workers...)
	return append(procs, sinkMeasured(sink), measureSelf())
}

// endToEnd publishes n requests while the workers deliver them to sink
// and waits for every final result.
func (b *bencher) endToEnd(ctx context.Context, msg *benchMessage, n int, durability string, sink benchSink) (phaseStats, error) {
	srv, err := b.startServer(ctx, durability)
	if err != nil {
		return phaseStats{}, err
	}
	defer srv.cleanup()
	stopWorkers, workers, err := b.startWorkers(ctx, srv, sink.URL())
	if err != nil {
		return phaseStats{}, err
	}
	defer stopWorkers()
	prefix := idPrefix(runTag())
	pub, err := newBenchPublisher(srv, msg, prefix, b.f.Timeout)
	if err != nil {
		return phaseStats{}, err
	}
	defer pub.close()
	tr, err := newResultTracker(srv, prefix, n)
	if err != nil {
		return phaseStats{}, err
	}
	defer tr.close()

	base := sink.Messages()
	b.profile.start()
	m := startMeter(phaseProcs(srv, workers, sink)...)
	for i := range n {
		tr.published[i].Store(time.Now().UnixNano())
		if err := pub.publish(i); err != nil {
			return phaseStats{}, fmt.Errorf("publish %d: %w", i, err)
		}
	}
	if err := pub.wait(ctx); err != nil {
		return phaseStats{}, err
	}
	if err := tr.wait(ctx, b.f.Timeout); err != nil {
		return phaseStats{}, err
	}
	st := m.stats(n, tr.end)
	b.profile.stop()
	lat := percentiles(tr.latencies())
	st.Latency = &lat
	stopWorkers()
	st.SinkCount = awaitSinkCount(sink, base+int64(n)) - base
	b.check("end-to-end", n, st.SinkCount, tr)
	return st, nil
}

// latency publishes at --rate for --duration, --runs times.
func (b *bencher) latency(ctx context.Context, size benchSize, durability string) error {
	msg, err := b.message(size)
	if err != nil {
		return err
	}
	row := latencyRow{Size: size.Name, WireBytes: msg.wireBytes, Durability: durability}
	for run := 1; run <= b.f.Runs; run++ {
		r, err := b.latencyRun(ctx, msg, durability)
		if err != nil {
			return err
		}
		row.Runs = append(row.Runs, r)
		b.logf("latency %s %s run %d/%d: %s msg/s, p50 %.1f ms, p90 %.1f ms, p99 %.1f ms",
			size.Name, durability, run, b.f.Runs, thousands(r.PublishRate), r.Latency.P50, r.Latency.P90, r.Latency.P99)
	}
	row.Median = latencyRun{
		TargetRate:  b.f.Rate,
		PublishRate: median(row.Runs, func(r latencyRun) float64 { return r.PublishRate }),
		Messages:    int(median(row.Runs, func(r latencyRun) float64 { return float64(r.Messages) })),
		Latency: latencyStats{
			P50: median(row.Runs, func(r latencyRun) float64 { return r.Latency.P50 }),
			P90: median(row.Runs, func(r latencyRun) float64 { return r.Latency.P90 }),
			P99: median(row.Runs, func(r latencyRun) float64 { return r.Latency.P99 }),
			Max: median(row.Runs, func(r latencyRun) float64 { return r.Latency.Max }),
		},
		CPUPer1000: median(row.Runs, func(r latencyRun) float64 { return r.CPUPer1000 }),
		PeakRSSMiB: median(row.Runs, func(r latencyRun) float64 { return r.PeakRSSMiB }),
		SinkCount:  int64(median(row.Runs, func(r latencyRun) float64 { return float64(r.SinkCount) })),
		Processes:  medianProcs(collect(row.Runs, func(r latencyRun) phaseStats { return phaseStats{Processes: r.Processes} })),
		Machine: phaseStats{OtherCores: median(row.Runs, func(r latencyRun) float64 { return r.Machine.OtherCores }),
			IRQCores:   median(row.Runs, func(r latencyRun) float64 { return r.Machine.IRQCores }),
			StealCores: median(row.Runs, func(r latencyRun) float64 { return r.Machine.StealCores })},
	}
	b.report.Latency = append(b.report.Latency, row)
	return nil
}

func (b *bencher) latencyRun(ctx context.Context, msg *benchMessage, durability string) (latencyRun, error) {
	n := max(1, int(b.f.Rate*b.f.Duration.Seconds()))
	srv, err := b.startServer(ctx, durability)
	if err != nil {
		return latencyRun{}, err
	}
	defer srv.cleanup()
	sink, err := b.startSink()
	if err != nil {
		return latencyRun{}, err
	}
	defer sink.Close()
	stopWorkers, workers, err := b.startWorkers(ctx, srv, sink.URL())
	if err != nil {
		return latencyRun{}, err
	}
	defer stopWorkers()
	prefix := idPrefix(runTag())
	pub, err := newBenchPublisher(srv, msg, prefix, b.f.Timeout)
	if err != nil {
		return latencyRun{}, err
	}
	defer pub.close()
	tr, err := newResultTracker(srv, prefix, n)
	if err != nil {
		return latencyRun{}, err
	}
	defer tr.close()

	b.profile.start()
	m := startMeter(phaseProcs(srv, workers, sink)...)
	interval := float64(time.Second) / b.f.Rate
	timer := time.NewTimer(0)
	defer timer.Stop()
	<-timer.C
	for i := range n {
		due := m.start.Add(time.Duration(float64(i) * interval))
		if d := time.Until(due); d > 0 {
			timer.Reset(d)
			select {
			case <-timer.C:
			case <-ctx.Done():
				return latencyRun{}, ctx.Err()
			}
		}
		tr.published[i].Store(time.Now().UnixNano())
		if err := pub.publish(i); err != nil {
			return latencyRun{}, fmt.Errorf("publish %d: %w", i, err)
		}
	}
	publishSecs := time.Since(m.start).Seconds()
	if err := pub.wait(ctx); err != nil {
		return latencyRun{}, err
	}
	if err := tr.wait(ctx, b.f.Timeout); err != nil {
		return latencyRun{}, err
	}
	st := m.stats(n, tr.end)
	b.profile.stop()
	stopWorkers()
	r := latencyRun{TargetRate: b.f.Rate, PublishRate: float64(n) / publishSecs, Messages: n,
		Latency: percentiles(tr.latencies()), CPUPer1000: st.CPUPer1000, PeakRSSMiB: st.PeakRSSMiB, Processes: st.Processes,
		Machine: phaseStats{OtherCores: st.OtherCores, IRQCores: st.IRQCores, StealCores: st.StealCores}}
	r.SinkCount = awaitSinkCount(sink, int64(n))
	b.check("latency", n, r.SinkCount, tr)
	return r, nil
}

// backlogMode publishes a backlog with no worker, then drains it with
// worker processes, --runs times.
func (b *bencher) backlogMode(ctx context.Context, size benchSize, durability string) error {
	msg, err := b.message(size)
	if err != nil {
		return err
	}
	n := b.f.Backlog
	if size.Bytes > 16<<10 {
		n = max(1, min(n, (1<<30)/size.Bytes))
	}
	row := backlogRow{Size: size.Name, WireBytes: msg.wireBytes, Durability: durability}
	for run := 1; run <= b.f.Runs; run++ {
		r, err := b.backlogRun(ctx, msg, n, durability)
		if err != nil {
			return err
		}
		row.Runs = append(row.Runs, r)
		b.logf("backlog %s %s run %d/%d: %d messages published at %s msg/s, drained at %s msg/s; worker peak RSS %.1f MiB",
			size.Name, durability, run, b.f.Runs, n, thousands(r.PublishRate), thousands(r.DrainRate), r.WorkerPeakRSSMiB)
	}
	row.Median = backlogRun{
		Messages:         n,
		PublishRate:      median(row.Runs, func(r backlogRun) float64 { return r.PublishRate }),
		DrainSeconds:     median(row.Runs, func(r backlogRun) float64 { return r.DrainSeconds }),
		DrainRate:        median(row.Runs, func(r backlogRun) float64 { return r.DrainRate }),
		WorkerPeakRSSMiB: median(row.Runs, func(r backlogRun) float64 { return r.WorkerPeakRSSMiB }),
		WorkerCPUPer1000: median(row.Runs, func(r backlogRun) float64 { return r.WorkerCPUPer1000 }),
		SinkCount:        int64(median(row.Runs, func(r backlogRun) float64 { return float64(r.SinkCount) })),
		Processes:        medianProcs(collect(row.Runs, func(r backlogRun) phaseStats { return phaseStats{Processes: r.Processes} })),
	}
	b.report.Backlog = append(b.report.Backlog, row)
	return nil
}

func (b *bencher) backlogRun(ctx context.Context, msg *benchMessage, n int, durability string) (backlogRun, error) {
	bin, err := b.binary()
	if err != nil {
		return backlogRun{}, err
	}
	srv, err := b.startServer(ctx, durability)
	if err != nil {
		return backlogRun{}, err
	}
	defer srv.cleanup()
	sink, err := b.startSink()
	if err != nil {
		return backlogRun{}, err
	}
	defer sink.Close()
	// A worker creates the streams and the consumer, as the worker
	// processes will find them, and stops before anything is published.
	stop, _, err := b.startWorkers(ctx, srv, sink.URL())
	if err != nil {
		return backlogRun{}, err
	}
	stop()

	prefix := idPrefix(runTag())
	pub, err := newBenchPublisher(srv, msg, prefix, b.f.Timeout)
	if err != nil {
		return backlogRun{}, err
	}
	defer pub.close()
	start := time.Now()
	for i := range n {
		if err := pub.publish(i); err != nil {
			return backlogRun{}, fmt.Errorf("publish %d: %w", i, err)
		}
	}
	if err := pub.wait(ctx); err != nil {
		return backlogRun{}, err
	}
	r := backlogRun{Messages: n, PublishRate: float64(n) / time.Since(start).Seconds()}
	tr, err := newResultTracker(srv, prefix, n)
	if err != nil {
		return backlogRun{}, err
	}
	defer tr.close()
	var procs []*child
	defer func() {
		for _, p := range procs {
			p.kill()
		}
	}()
	// The drain starts when the worker processes are started; their CPU
	// and peak RSS are from their start.
	m := startMeter(append(srv.measured(), sinkMeasured(sink), measureSelf())...)
	for i := range b.f.Workers {
		c, err := startChild(fmt.Sprintf("worker-%d", i+1), bin, b.workerArgs(srv.url, sink.URL()), nil, nil)
		if err != nil {
			return backlogRun{}, err
		}
		procs = append(procs, c)
		m.add(measureChild("worker", c))
	}
	if err := tr.wait(ctx, b.f.Timeout); err != nil {
		for _, p := range procs {
			if p.exited() {
				err = fmt.Errorf("%w; %s", err, p.describe())
			}
		}
		return backlogRun{}, err
	}
	st := m.stats(n, tr.end)
	r.DrainSeconds = st.Seconds
	r.DrainRate = st.Rate
	r.Processes = st.Processes
	var cpu float64
	for _, ps := range st.Processes {
		if ps.Role == "worker" {
			cpu += ps.CPUSeconds
			r.WorkerPeakRSSMiB = max(r.WorkerPeakRSSMiB, ps.PeakRSSMiB)
		}
	}
	r.WorkerCPUPer1000 = cpu / float64(n) * 1000
	for _, p := range procs {
		if err := p.stop(30 * time.Second); err != nil {
			b.problem("backlog: %v\n%s", err, p.logs.String())
		}
		b.noteWarnings(p)
	}
	procs = nil
	r.SinkCount = awaitSinkCount(sink, int64(n))
	b.check("backlog", n, r.SinkCount, tr)
	return r, nil
}

// limitedWriter keeps the first n bytes written to it.
type limitedWriter struct {
	mu sync.Mutex
	w  io.Writer
	n  int
}

func (l *limitedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.n > 0 {
		k := min(len(p), l.n)
		_, _ = l.w.Write(p[:k])
		l.n -= k
	}
	return len(p), nil
}

// ---- the report ----

// thousands formats a rate with thousands separators and no decimals.
func thousands(v float64) string {
	s := strconv.FormatInt(int64(math.Round(v)), 10)
	neg := strings.HasPrefix(s, "-")
	s = strings.TrimPrefix(s, "-")
	var out []byte
	for i := range len(s) {
		if i > 0 && (len(s)-i)%3 == 0 {
			out = append(out, ',')
		}
		out = append(out, s[i])
	}
	if neg {
		return "-" + string(out)
	}
	return string(out)
}

// ms formats milliseconds with a precision that suits their size.
func ms(v float64) string {
	switch {
	case v >= 100:
		return strconv.FormatFloat(v, 'f', 0, 64)
	case v >= 10:
		return strconv.FormatFloat(v, 'f', 1, 64)
	}
	return strconv.FormatFloat(v, 'f', 2, 64)
}

func sizeLabel(size string, wire int) string {
	return fmt.Sprintf("%s (%s B)", size, thousands(float64(wire)))
}

// mdTable writes a markdown table with aligned columns; right says which
// columns are numbers.
func mdTable(w io.Writer, head []string, right []bool, rows [][]string) {
	width := make([]int, len(head))
	for i, h := range head {
		width[i] = utf8.RuneCountInString(h)
	}
	for _, r := range rows {
		for i, c := range r {
			width[i] = max(width[i], utf8.RuneCountInString(c))
		}
	}
	line := func(cells []string) {
		var sb strings.Builder
		sb.WriteString("|")
		for i, c := range cells {
			pad := strings.Repeat(" ", width[i]-utf8.RuneCountInString(c))
			if right[i] {
				sb.WriteString(" " + pad + c + " |")
			} else {
				sb.WriteString(" " + c + pad + " |")
			}
		}
		fmt.Fprintln(w, sb.String())
	}
	line(head)
	sep := make([]string, len(head))
	for i := range head {
		sep[i] = strings.Repeat("-", width[i])
		if right[i] {
			sep[i] = strings.Repeat("-", width[i]-1) + ":"
		}
	}
	line(sep)
	for _, r := range rows {
		line(r)
	}
}

func runsList[T any](runs []T, f func(T) float64) string {
	parts := make([]string, len(runs))
	for i, r := range runs {
		parts[i] = thousands(f(r))
	}
	return strings.Join(parts, " / ")
}

func printBenchReport(w io.Writer, rep *benchReport) {
	st := rep.Settings
	fmt.Fprintf(w, "jetmail bench: %s %s/%s, %d CPUs; topology %s; sink %s; NATS %s; %d worker(s) × concurrency %d, SMTP pool %d, prefetch %d; medians of %d run(s)\n",
		rep.Machine.GoVersion, rep.Machine.GOOS, rep.Machine.GOARCH, rep.Machine.CPUs, st.Topology, st.Sink, st.NATS,
		st.Workers, st.Concurrency, st.PoolSize, st.Prefetch, st.Runs)
	processes := st.Topology == "processes"
	if len(rep.Throughput) > 0 {
		fmt.Fprintf(w, "\n### Throughput: %s messages per run\n\n", thousands(float64(st.Messages)))
		if processes {
			printThroughputProcesses(w, rep)
		} else {
			printThroughputInProcess(w, rep)
		}
		fmt.Fprintln(w)
		for _, r := range rep.Throughput {
			line := fmt.Sprintf("- %s %s, per run: direct %s msg/s", r.Size, r.Durability,
				runsList(r.Runs, func(t throughputRun) float64 { return t.Direct.Rate }))
			if r.Median.SMTPSource != nil {
				line += "; smtp-source " + runsList(r.Runs, func(t throughputRun) float64 {
					if t.SMTPSource == nil {
						return 0
					}
					return t.SMTPSource.Rate
				}) + " msg/s"
			}
			line += "; end-to-end " + runsList(r.Runs, func(t throughputRun) float64 { return t.EndToEnd.Rate }) + " msg/s"
			if r.Median.Relay != nil {
				line += "; Postfix relay " + runsList(r.Runs, func(t throughputRun) float64 {
					if t.Relay == nil {
						return 0
					}
					return t.Relay.Rate
				}) + " msg/s"
			}
			fmt.Fprintln(w, line)
		}
		fmt.Fprintln(w, "\nLatency is publish → 200 result under full load (all messages published at once), so mostly queueing.")
		fmt.Fprintln(w, "\"others / irq / steal\" is the CPU, in cores, that other programs, the kernel's interrupt handling (loopback packets among it) and the hypervisor took meanwhile: with others or steal above a few tenths, the figures are low.")
		if processes {
			fmt.Fprintln(w, "CPU is per process, from /proc, over each phase; \"bench\" is the publisher and the result reader (and, direct, jetmail's SMTP transport).")
			fmt.Fprintf(w, "smtp-source and the Postfix relay use %d SMTP session(s), as many as jetmail's pool; smtp-source adds about 130 bytes of headers.\n", st.Workers*st.PoolSize)
		} else {
			fmt.Fprintln(w, "CPU and peak RSS are this whole process: publisher, JetStream server, worker(s) and sink.")
		}
		fmt.Fprintln(w, "Goals: end-to-end ≥ 50 % of the SMTP limit (smtp-source into the same sink; direct where smtp-source is missing); with durability always ≥ 3× a Postfix relay measured in the same run:")
		for _, r := range rep.Throughput {
			limit, ratio := "direct", r.Median.Ratio
			if r.Median.SMTPSource != nil {
				limit, ratio = "smtp-source", r.Median.RatioSMTPSource
			}
			relay := "no Postfix relay measured"
			if r.Median.Relay != nil {
				relay = fmt.Sprintf("%.1f× the Postfix relay %s", r.Median.RatioRelay, verdict(r.Median.RatioRelay >= 3))
			}
			fmt.Fprintf(w, "- %s %s: %s msg/s = %.0f %% of %s %s; %s\n", r.Size, r.Durability,
				thousands(r.Median.EndToEnd.Rate), 100*ratio, limit, verdict(ratio >= 0.5), relay)
		}
	}
	if len(rep.Latency) > 0 {
		fmt.Fprintf(w, "\n### Latency: %s msg/s for %s, publish → 200 result\n\n", thousands(st.Rate), st.Duration)
		var rows [][]string
		for _, r := range rep.Latency {
			m := r.Median
			row := []string{sizeLabel(r.Size, r.WireBytes), r.Durability, thousands(m.PublishRate),
				ms(m.Latency.P50), ms(m.Latency.P90), ms(m.Latency.P99), ms(m.Latency.Max)}
			if processes {
				ps := phaseStats{Processes: m.Processes}
				row = append(row, roleCell(&ps, "server"), roleCell(&ps, "worker"), roleCell(&ps, "sink"), roleCell(&ps, "bench"))
			}
			rows = append(rows, append(row, fmt.Sprintf("%.3f", m.CPUPer1000), fmt.Sprintf("%.0f", m.PeakRSSMiB),
				m.Machine.machineCell()))
		}
		head := []string{"size", "durability", "achieved msg/s", "p50 ms", "p90 ms", "p99 ms", "max ms"}
		if processes {
			head = append(head, "server ms/msg", "worker ms/msg", "sink ms/msg", "bench ms/msg", "total ms/msg", "bench RSS MiB")
		} else {
			head = append(head, "CPU s/1k", "peak RSS MiB")
		}
		head = append(head, "others / irq / steal (cores)")
		mdTable(w, head, rightAligned(len(head), 2), rows)
		fmt.Fprintln(w, "\nGoal: p99 < 5 ms at 1,000 msg/s:")
		for _, r := range rep.Latency {
			fmt.Fprintf(w, "- %s %s at %s msg/s: p99 %s ms %s\n", r.Size, r.Durability, thousands(r.Median.PublishRate),
				ms(r.Median.Latency.P99), verdict(r.Median.Latency.P99 < 5))
		}
	}
	if len(rep.Backlog) > 0 {
		fmt.Fprintf(w, "\n### Backlog: requests published with no worker, then drained by %d `jetmail worker` process(es)\n\n", st.Workers)
		var rows [][]string
		for _, r := range rep.Backlog {
			m := r.Median
			row := []string{sizeLabel(r.Size, r.WireBytes), r.Durability, thousands(float64(m.Messages)),
				thousands(m.PublishRate), thousands(m.DrainRate), fmt.Sprintf("%.1f", m.DrainSeconds),
				fmt.Sprintf("%.3f", m.WorkerCPUPer1000), fmt.Sprintf("%.1f", m.WorkerPeakRSSMiB)}
			if processes {
				ps := phaseStats{Processes: m.Processes}
				row = append(row, roleCell(&ps, "server"), roleCell(&ps, "sink"), roleCell(&ps, "bench"))
			}
			rows = append(rows, row)
		}
		head := []string{"size", "durability", "messages", "publish msg/s", "drain msg/s", "drain s", "worker CPU ms/msg", "worker peak RSS MiB"}
		if processes {
			head = append(head, "server ms/msg", "sink ms/msg", "bench ms/msg")
		}
		mdTable(w, head, rightAligned(len(head), 2), rows)
		fmt.Fprintln(w, "\nThe drain starts when the worker process is started; its CPU and RSS are the worker process's alone, from its start.")
		fmt.Fprintln(w, "Goal: worker peak RSS < 100 MiB:")
		for _, r := range rep.Backlog {
			fmt.Fprintf(w, "- %s %s: %.1f MiB %s\n", r.Size, r.Durability, r.Median.WorkerPeakRSSMiB, verdict(r.Median.WorkerPeakRSSMiB < 100))
		}
	}
	if len(rep.Lanes) > 0 {
		printLanes(w, rep)
	}
	if len(rep.Ceiling) > 0 {
		printCeiling(w, rep)
	}
	printCapacity(w, rep)
	if len(rep.Notes) > 0 {
		fmt.Fprintln(w, "\nNotes:")
		for _, n := range rep.Notes {
			fmt.Fprintln(w, "- "+n)
		}
	}
	if len(rep.Problems) > 0 {
		fmt.Fprintln(w, "\nPROBLEMS (the figures above are not valid):")
		for _, p := range rep.Problems {
			fmt.Fprintln(w, "- "+p)
		}
	}
	fmt.Fprintf(w, "\nReproduce: %s\n", rep.Command)
}

// rightAligned says which of n columns are numbers: all but the first
// text ones.
func rightAligned(n, text int) []bool {
	r := make([]bool, n)
	for i := text; i < n; i++ {
		r[i] = true
	}
	return r
}

// printThroughputInProcess is the table of the in-process topology.
func printThroughputInProcess(w io.Writer, rep *benchReport) {
	var rows [][]string
	for _, r := range rep.Throughput {
		m := r.Median
		rows = append(rows, []string{sizeLabel(r.Size, r.WireBytes), r.Durability,
			thousands(m.Direct.Rate), thousands(m.EndToEnd.Rate), fmt.Sprintf("%.0f %%", 100*m.Ratio),
			ms(m.EndToEnd.Latency.P50), ms(m.EndToEnd.Latency.P90), ms(m.EndToEnd.Latency.P99),
			fmt.Sprintf("%.3f", m.Direct.CPUPer1000), fmt.Sprintf("%.3f", m.EndToEnd.CPUPer1000),
			fmt.Sprintf("%.0f", m.EndToEnd.PeakRSSMiB)})
	}
	mdTable(w, []string{"size", "durability", "direct msg/s", "end-to-end msg/s", "ratio", "p50 ms", "p90 ms", "p99 ms",
		"CPU s/1k direct", "CPU s/1k e2e", "peak RSS MiB"}, rightAligned(11, 2), rows)
}

// pct formats a ratio as a percentage, or "–" when it was not measured.
func pct(v float64, ok bool) string {
	if !ok {
		return "–"
	}
	return fmt.Sprintf("%.0f %%", 100*v)
}

// rate formats a phase's rate, or "–" when it did not run.
func rate(p *phaseStats) string {
	if p == nil {
		return "–"
	}
	return thousands(p.Rate)
}

// roleCell is the CPU ms per message of a role's processes, or "–".
func roleCell(p *phaseStats, role string) string {
	v, ok := p.roleCPU(role)
	if !ok {
		return "–"
	}
	return fmt.Sprintf("%.3f", v)
}

// rssCell is the largest peak RSS of a role's processes, or "–".
func rssCell(p *phaseStats, role string) string {
	v, ok := 0.0, false
	for _, ps := range p.Processes {
		if ps.Role == role && ps.PeakRSSMiB > 0 {
			v, ok = max(v, ps.PeakRSSMiB), true
		}
	}
	if !ok {
		return "–"
	}
	return fmt.Sprintf("%.0f", v)
}

// printThroughputProcesses is the tables of the process topology: rates
// and ratios, then CPU and memory per process and phase.
func printThroughputProcesses(w io.Writer, rep *benchReport) {
	var rows [][]string
	for _, r := range rep.Throughput {
		m := r.Median
		rows = append(rows, []string{sizeLabel(r.Size, r.WireBytes), r.Durability,
			thousands(m.Direct.Rate), rate(m.SMTPSource), thousands(m.EndToEnd.Rate),
			pct(m.Ratio, true), pct(m.RatioSMTPSource, m.SMTPSource != nil),
			ms(m.EndToEnd.Latency.P50), ms(m.EndToEnd.Latency.P99),
			rate(m.Relay), func() string {
				if m.Relay == nil {
					return "–"
				}
				return fmt.Sprintf("%.1f×", m.RatioRelay)
			}()})
	}
	mdTable(w, []string{"size", "durability", "direct msg/s", "smtp-source msg/s", "end-to-end msg/s",
		"e2e / direct", "e2e / smtp-source", "p50 ms", "p99 ms", "Postfix relay msg/s", "e2e / relay"}, rightAligned(11, 2), rows)

	fmt.Fprintf(w, "\nCPU ms per message and peak RSS MiB, by process:\n\n")
	rows = nil
	for _, r := range rep.Throughput {
		m := r.Median
		for _, ph := range []struct {
			name string
			p    *phaseStats
		}{{"direct", &m.Direct}, {"smtp-source", m.SMTPSource}, {"end-to-end", &m.EndToEnd}, {"Postfix relay", m.Relay}} {
			if ph.p == nil {
				continue
			}
			other := "–"
			for _, role := range []string{"smtp-source", "postfix"} {
				if v, ok := ph.p.roleCPU(role); ok {
					if other == "–" {
						other = ""
					} else {
						other += " + "
					}
					other += fmt.Sprintf("%s %.3f", role, v)
				}
			}
			rows = append(rows, []string{r.Size, r.Durability, ph.name,
				roleCell(ph.p, "server"), roleCell(ph.p, "worker"), roleCell(ph.p, "sink"), roleCell(ph.p, "bench"), other,
				fmt.Sprintf("%.3f", ph.p.CPUPer1000),
				rssCell(ph.p, "server"), rssCell(ph.p, "worker"), rssCell(ph.p, "sink"), rssCell(ph.p, "bench"),
				ph.p.machineCell()})
		}
	}
	mdTable(w, []string{"size", "durability", "phase", "server", "worker(s)", "sink", "bench", "other", "total",
		"RSS server", "RSS worker", "RSS sink", "RSS bench", "others / irq / steal (cores)"}, rightAligned(14, 3), rows)
	for _, r := range rep.Throughput {
		var each []string
		for _, ps := range r.Median.EndToEnd.Processes {
			if ps.Role == "worker" {
				each = append(each, fmt.Sprintf("%s %.3f", ps.Name, ps.CPUMsPerMsg))
			}
		}
		if len(each) > 1 {
			fmt.Fprintf(w, "\n%s %s end-to-end, each worker: %s ms/msg", r.Size, r.Durability, strings.Join(each, ", "))
		}
	}
}

// printCeiling is the table of the ceiling mode.
func printCeiling(w io.Writer, rep *benchReport) {
	fmt.Fprintf(w, "\n### Ceiling: one request stream without SMTP, %s messages per run (publish, pull, acknowledge)\n\n",
		thousands(float64(rep.Settings.Messages)))
	var rows [][]string
	for _, r := range rep.Ceiling {
		m := r.Median
		var leader, followers []string
		var rss []string
		total := 0.0
		for _, ps := range m.Processes {
			if ps.Role != "server" {
				continue
			}
			total += ps.CPUMsPerMsg
			rss = append(rss, fmt.Sprintf("%.0f", ps.PeakRSSMiB))
			if strings.HasPrefix(ps.Name, "follower") {
				followers = append(followers, fmt.Sprintf("%.3f", ps.CPUMsPerMsg))
			} else {
				leader = append(leader, fmt.Sprintf("%.3f", ps.CPUMsPerMsg))
			}
		}
		bench := "–"
		if v, ok := m.roleCPU("bench"); ok {
			bench = fmt.Sprintf("%.3f", v)
		}
		f := "–"
		if len(followers) > 0 {
			f = strings.Join(followers, " / ")
		}
		rows = append(rows, []string{sizeLabel(r.Size, r.WireBytes), r.Durability, fmt.Sprintf("R%d", r.Replicas),
			thousands(m.Rate), strings.Join(leader, " / "), f, fmt.Sprintf("%.3f", total), bench, strings.Join(rss, " / "),
			m.machineCell()})
	}
	mdTable(w, []string{"size", "durability", "stream", "msg/s", "leader ms/msg", "followers ms/msg", "all nodes ms/msg",
		"bench ms/msg", "peak RSS MiB per node", "others / irq / steal (cores)"}, rightAligned(10, 3), rows)
	fmt.Fprintln(w, "\nThe stream and the consumer are the workers' (config.Streams); the bench publishes asynchronously and pulls")
	fmt.Fprintf(w, "%d at a time, acknowledging each message as a worker does. All nodes and the bench share this machine's %d CPUs.\n", ceilingPull, rep.Machine.CPUs)
}

// printCapacity turns CPU per message into a capacity model: what one
// core of a worker and of a NATS server carries, and how many workers one
// stream feeds.
func printCapacity(w io.Writer, rep *benchReport) {
	var lines []string
	for _, r := range rep.Throughput {
		e := r.Median.EndToEnd
		wk, okW := e.roleCPU("worker")
		sv, okS := e.roleCPU("server")
		if !okW || !okS || wk <= 0 || sv <= 0 {
			continue
		}
		lines = append(lines, fmt.Sprintf("- %s %s: a worker uses %.3f ms of CPU per message (%s msg/s per core), the NATS server %.3f ms "+
			"(%s msg/s per core, all six JetStream operations of a message): one NATS core per %.1f worker cores.",
			r.Size, r.Durability, wk, thousands(1000/wk), sv, thousands(1000/sv), wk/sv))
		for _, c := range rep.Ceiling {
			if c.Size == r.Size && c.Durability == r.Durability {
				lines = append(lines, fmt.Sprintf("  - one R%d request stream's ceiling, %s msg/s, feeds about %.1f one-core workers of this kind.",
					c.Replicas, thousands(c.Median.Rate), c.Median.Rate/(1000/wk)))
			}
		}
	}
	if len(lines) == 0 {
		return
	}
	fmt.Fprintln(w, "\n### Capacity model (CPU per message on this machine)")
	fmt.Fprintln(w)
	for _, l := range lines {
		fmt.Fprintln(w, l)
	}
}

func verdict(ok bool) string {
	if ok {
		return "(met)"
	}
	return "(NOT met)"
}
