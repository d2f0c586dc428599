package bench

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/jetmail/jetmail/internal/jstest"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// TestMain builds the jetmail binary, for the backlog mode's worker
// process.
func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "jetmail-bench-test-")
	if err != nil {
		panic(err)
	}
	binary = filepath.Join(dir, "jetmail")
	build := exec.Command("go", "build", "-o", binary, "github.com/jetmail/jetmail/cmd/jetmail")
	build.Stdout, build.Stderr = os.Stderr, os.Stderr
	if err := build.Run(); err != nil {
		panic(err)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// binary is the jetmail binary TestMain built.
var binary string

// benchRun runs a bench with the defaults changed by mod, with JSON
// output, and decodes the report. It fails the test unless Run succeeds.
func benchRun(t *testing.T, mod func(*Options)) *benchReport {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	o := DefaultOptions()
	o.JSON, o.WorkerBinary, o.Command = true, binary, "jetmail bench (test)"
	mod(&o)
	var out, log bytes.Buffer
	if err := Run(ctx, o, &out, &log); err != nil {
		t.Fatalf("bench: %v\n%s", err, log.String())
	}
	var rep benchReport
	if err := json.Unmarshal(out.Bytes(), &rep); err != nil {
		t.Fatalf("bench JSON output is not JSON: %v\n%s", err, out.String())
	}
	if len(rep.Problems) > 0 {
		t.Errorf("problems: %q", rep.Problems)
	}
	return &rep
}

// checkTable renders rep as tables and checks that they have a row per
// size and durability.
func checkTable(t *testing.T, rep *benchReport, heading string, rows int) {
	t.Helper()
	var out bytes.Buffer
	printBenchReport(&out, rep)
	s := out.String()
	t.Logf("\n%s", s)
	if !strings.Contains(s, heading) {
		t.Errorf("no %q in the report", heading)
	}
	if got := strings.Count(s, "| 2KB (2,"); got != rows {
		t.Errorf("%d table rows of 2KB, want %d", got, rows)
	}
	if !strings.Contains(s, "Reproduce: jetmail bench (test)") {
		t.Errorf("no reproducing command line")
	}
}

func checkPhase(t *testing.T, what string, p phaseStats, n int) {
	t.Helper()
	if p.Messages != n || p.SinkCount != int64(n) {
		t.Errorf("%s: %d messages, the sink counted %d, want %d", what, p.Messages, p.SinkCount, n)
	}
	if !(p.Rate > 0 && p.Seconds > 0 && p.CPUSeconds > 0 && p.CPUPer1000 > 0) {
		t.Errorf("%s: rate %g, seconds %g, CPU %g s, %g s/1000: want all positive", what, p.Rate, p.Seconds, p.CPUSeconds, p.CPUPer1000)
	}
	if p.PeakRSSMiB < 1 || p.PeakRSSMiB > 4096 {
		t.Errorf("%s: peak RSS %g MiB", what, p.PeakRSSMiB)
	}
}

func checkLatency(t *testing.T, what string, l latencyStats) {
	t.Helper()
	if !(0 < l.P50 && l.P50 <= l.P90 && l.P90 <= l.P99 && l.P99 <= l.Max && l.Max < 60_000) {
		t.Errorf("%s: latencies %+v are not 0 < p50 ≤ p90 ≤ p99 ≤ max < 60 s", what, l)
	}
}

func TestBenchThroughput(t *testing.T) {
	rep := benchRun(t, func(o *Options) {
		o.Mode, o.Messages, o.Runs, o.Durability, o.Concurrency, o.PoolSize = "throughput", 200, 1, "both", 4, 2
	})
	if len(rep.Throughput) != 2 || rep.Throughput[0].Durability != "default" || rep.Throughput[1].Durability != "always" {
		t.Fatalf("throughput rows %+v, want default and always", rep.Throughput)
	}
	for _, row := range rep.Throughput {
		if len(row.Runs) != 1 {
			t.Fatalf("%d runs, want 1", len(row.Runs))
		}
		r := row.Runs[0]
		checkPhase(t, "direct", r.Direct, 200)
		checkPhase(t, "end-to-end", r.EndToEnd, 200)
		if r.EndToEnd.Latency == nil {
			t.Fatal("no end-to-end latency")
		}
		checkLatency(t, "end-to-end", *r.EndToEnd.Latency)
		if !(r.Ratio > 0) || r.Ratio != row.Median.Ratio {
			t.Errorf("ratio %g, median %g", r.Ratio, row.Median.Ratio)
		}
		if row.WireBytes < 1900 || row.WireBytes > 2200 {
			t.Errorf("a 2KB message is %d bytes on the wire", row.WireBytes)
		}
	}
	checkTable(t, rep, "### Throughput: 200 messages per run", 2)
}

func TestBenchLatency(t *testing.T) {
	rep := benchRun(t, func(o *Options) { o.Mode, o.Rate, o.Duration, o.Runs = "latency", 200, time.Second, 1 })
	if len(rep.Latency) != 1 || len(rep.Latency[0].Runs) != 1 {
		t.Fatalf("latency rows %+v", rep.Latency)
	}
	r := rep.Latency[0].Runs[0]
	if r.Messages != 200 || r.SinkCount != 200 {
		t.Errorf("%d messages, the sink counted %d, want 200", r.Messages, r.SinkCount)
	}
	if r.PublishRate < 100 || r.PublishRate > 250 {
		t.Errorf("published at %g msg/s, want about 200", r.PublishRate)
	}
	checkLatency(t, "latency", r.Latency)
	checkTable(t, rep, "### Latency: 200 msg/s for 1s", 1)
}

func TestBenchBacklog(t *testing.T) {
	rep := benchRun(t, func(o *Options) { o.Mode, o.Backlog, o.Runs = "backlog", 200, 1 })
	if len(rep.Backlog) != 1 || len(rep.Backlog[0].Runs) != 1 {
		t.Fatalf("backlog rows %+v", rep.Backlog)
	}
	r := rep.Backlog[0].Runs[0]
	if r.Messages != 200 || r.SinkCount != 200 {
		t.Errorf("%d messages, the sink counted %d, want 200", r.Messages, r.SinkCount)
	}
	if !(r.PublishRate > 0 && r.DrainRate > 0 && r.WorkerCPUPer1000 > 0) {
		t.Errorf("rates and CPU must be positive: %+v", r)
	}
	// The worker process alone: more than the Go runtime, far less than
	// this test process with its servers.
	if r.WorkerPeakRSSMiB < 5 || r.WorkerPeakRSSMiB > 200 {
		t.Errorf("worker peak RSS %g MiB", r.WorkerPeakRSSMiB)
	}
	checkTable(t, rep, "### Backlog", 1)
}

// TestBenchExternalServer uses a NATS server of its own: the bench uses
// streams of its own there and deletes them afterwards.
func TestBenchExternalServer(t *testing.T) {
	url := jstest.Start(t).URL()
	rep := benchRun(t, func(o *Options) { o.NATSURL, o.Messages, o.Runs = url, 100, 1 })
	if len(rep.Throughput) != 1 || rep.Throughput[0].Durability != "server" {
		t.Fatalf("rows %+v", rep.Throughput)
	}
	checkPhase(t, "end-to-end", rep.Throughput[0].Runs[0].EndToEnd, 100)
	nc, err := nats.Connect(url)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, _ := jetstream.New(nc)
	names := js.StreamNames(context.Background())
	var left []string
	for n := range names.Name() {
		left = append(left, n)
	}
	if len(left) > 0 {
		t.Errorf("streams left behind: %v", left)
	}
}

func TestBenchPostfixSink(t *testing.T) {
	if _, err := findSMTPSink(); err != nil {
		t.Skip(err)
	}
	rep := benchRun(t, func(o *Options) { o.Sink, o.Messages, o.Runs = "postfix", 200, 1 })
	r := rep.Throughput[0].Runs[0]
	checkPhase(t, "direct", r.Direct, 200)
	checkPhase(t, "end-to-end", r.EndToEnd, 200)
}

func TestParseSize(t *testing.T) {
	t.Parallel()
	for in, want := range map[string]int{"2KB": 2048, "100kb": 102400, "1MB": 1 << 20, "4096": 4096, " 2K ": 2048, "3KiB": 3072} {
		if got, err := parseSize(in); err != nil || got != want {
			t.Errorf("parseSize(%q) = %d, %v; want %d", in, got, err, want)
		}
	}
	for _, in := range []string{"", "KB", "-2KB", "2GB", "100", "1.5KB"} {
		if _, err := parseSize(in); err == nil {
			t.Errorf("parseSize(%q) succeeded", in)
		}
	}
}

func TestMakeBenchMessage(t *testing.T) {
	t.Parallel()
	for _, size := range []int{2048, 100 << 10} {
		m, err := makeBenchMessage(size)
		if err != nil {
			t.Fatal(err)
		}
		if d := m.wireBytes - size; d < -64 || d > 64 {
			t.Errorf("message for %d bytes is %d bytes", size, m.wireBytes)
		}
		if (size > 16<<10) != (len(m.req.Attachments) == 1) {
			t.Errorf("%d bytes: %d attachments", size, len(m.req.Attachments))
		}
	}
}

func TestPercentiles(t *testing.T) {
	t.Parallel()
	ns := make([]int64, 100)
	for i := range ns {
		ns[i] = int64(100-i) * 1e6 // 100 ms down to 1 ms
	}
	got := percentiles(ns)
	if got != (latencyStats{P50: 50, P90: 90, P99: 99, Max: 100}) {
		t.Errorf("percentiles = %+v", got)
	}
	if median([]float64{3, 1, 2}, func(v float64) float64 { return v }) != 2 ||
		median([]float64{4, 1, 2, 3}, func(v float64) float64 { return v }) != 2.5 {
		t.Error("median")
	}
	if thousands(1234567.4) != "1,234,567" || thousands(999) != "999" {
		t.Error("thousands")
	}
}

// TestOptionsUsage checks that bad options are usage errors.
func TestOptionsUsage(t *testing.T) {
	t.Parallel()
	for name, mod := range map[string]func(*Options){
		"mode":                     func(o *Options) { o.Mode = "fast" },
		"size unit":                func(o *Options) { o.Sizes = "2XB" },
		"size too small":           func(o *Options) { o.Sizes = "10" },
		"durability":               func(o *Options) { o.Durability = "sometimes" },
		"sync-always contradicts":  func(o *Options) { o.SyncAlways, o.Durability, o.DurabilitySet = true, "default", true },
		"durability with NATS URL": func(o *Options) { o.NATSURL, o.Durability, o.DurabilitySet = "nats://127.0.0.1:1", "both", true },
		"backlog with NATS URL":    func(o *Options) { o.NATSURL, o.Mode = "nats://127.0.0.1:1", "backlog" },
		"no messages":              func(o *Options) { o.Messages = 0 },
		"sink":                     func(o *Options) { o.Sink = "exim" },
		"rate":                     func(o *Options) { o.Rate = 0 },
	} {
		o := DefaultOptions()
		mod(&o)
		var ue *UsageError
		if err := Run(t.Context(), o, io.Discard, io.Discard); !errors.As(err, &ue) {
			t.Errorf("%s: %v, want a usage error", name, err)
		}
	}
}
