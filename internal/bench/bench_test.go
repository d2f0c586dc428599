package bench

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/jetmail/jetmail/internal/jstest"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// TestMain builds the jetmail binary, for the server, worker and sink
// processes. Afterwards it fails the tests if any process they started is
// still running (and kills it).
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
	if left := leftBehind(); len(left) > 0 {
		fmt.Fprintf(os.Stderr, "FAIL: processes left behind by the tests (now killed):\n%s\n", strings.Join(left, "\n"))
		code = 1
	}
	os.RemoveAll(dir)
	os.Exit(code)
}

// leftBehind kills and lists the processes that run the test binary's
// jetmail, are children of this process, or are a Postfix instance of the
// bench's (a config folder named jetmail-bench-postfix-…).
func leftBehind() []string {
	var left []string
	for range 50 { // processes may still be exiting
		left = nil
		ents, _ := os.ReadDir("/proc")
		for _, e := range ents {
			pid, err := strconv.Atoi(e.Name())
			if err != nil || pid == os.Getpid() {
				continue
			}
			cmdline, err := os.ReadFile("/proc/" + e.Name() + "/cmdline")
			if err != nil {
				continue
			}
			cmd := strings.ReplaceAll(string(cmdline), "\x00", " ")
			env, _ := os.ReadFile("/proc/" + e.Name() + "/environ") // Postfix's MAIL_CONFIG
			st, err := procStat(pid)
			if err != nil || st[0] == "Z" {
				continue
			}
			if strings.Contains(cmd, binary) || st[1] == strconv.Itoa(os.Getpid()) || bytes.Contains(env, []byte("jetmail-bench-postfix-")) {
				left = append(left, fmt.Sprintf("%d %s", pid, cmd))
			}
		}
		if len(left) == 0 {
			return nil
		}
		time.Sleep(100 * time.Millisecond)
	}
	for _, l := range left {
		pid, _ := strconv.Atoi(strings.Fields(l)[0])
		_ = syscall.Kill(pid, syscall.SIGKILL)
	}
	return left
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
	o.JSON, o.Binary, o.Command, o.Postfix = true, binary, "jetmail bench (test)", "off"
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
	if _, bench := p.roleCPU("bench"); bench && (p.PeakRSSMiB < 1 || p.PeakRSSMiB > 4096) {
		t.Errorf("%s: peak RSS %g MiB", what, p.PeakRSSMiB)
	}
}

func checkLatency(t *testing.T, what string, l latencyStats) {
	t.Helper()
	if !(0 < l.P50 && l.P50 <= l.P90 && l.P90 <= l.P99 && l.P99 <= l.Max && l.Max < 60_000) {
		t.Errorf("%s: latencies %+v are not 0 < p50 ≤ p90 ≤ p99 ≤ max < 60 s", what, l)
	}
}

// checkProcs checks that each role ran in a process of its own and used
// CPU during the phase, and that those with a peak RSS have a plausible
// one.
func checkProcs(t *testing.T, what string, p phaseStats, roles ...string) {
	t.Helper()
	for _, role := range roles {
		v, ok := p.roleCPU(role)
		if !ok || !(v > 0) {
			t.Errorf("%s: %s CPU %g ms/msg (measured: %v), want > 0", what, role, v, ok)
		}
	}
	for _, ps := range p.Processes {
		if ps.Role != "smtp-source" && ps.Role != "postfix" && (ps.PeakRSSMiB < 1 || ps.PeakRSSMiB > 4096) {
			t.Errorf("%s: %s peak RSS %g MiB", what, ps.Name, ps.PeakRSSMiB)
		}
	}
}

// TestBenchThroughput runs the default, process topology: a jetmail
// server, worker and sink process each, and smtp-source when Postfix is
// installed.
func TestBenchThroughput(t *testing.T) {
	_, srcErr := findPostfixTool("smtp-source")
	rep := benchRun(t, func(o *Options) {
		o.Messages, o.Runs, o.Postfix = 300, 1, "auto"
	})
	if rep.Settings.Topology != "processes" || len(rep.Throughput) != 1 || len(rep.Throughput[0].Runs) != 1 {
		t.Fatalf("topology %s, rows %+v", rep.Settings.Topology, rep.Throughput)
	}
	row := rep.Throughput[0]
	r := row.Runs[0]
	checkPhase(t, "direct", r.Direct, 300)
	checkPhase(t, "end-to-end", r.EndToEnd, 300)
	checkProcs(t, "direct", r.Direct, "sink", "bench")
	checkProcs(t, "end-to-end", r.EndToEnd, "server", "worker", "sink", "bench")
	if r.EndToEnd.Latency == nil {
		t.Fatal("no end-to-end latency")
	}
	checkLatency(t, "end-to-end", *r.EndToEnd.Latency)
	if srcErr != nil {
		t.Logf("smtp-source not measured: %v", srcErr)
		if r.SMTPSource != nil || !strings.Contains(strings.Join(rep.Notes, " "), "no smtp-source") {
			t.Errorf("smtp-source %+v without Postfix; notes %q", r.SMTPSource, rep.Notes)
		}
	} else {
		if r.SMTPSource == nil {
			t.Fatal("Postfix is installed, but no smtp-source phase")
		}
		checkPhase(t, "smtp-source", *r.SMTPSource, 300)
		checkProcs(t, "smtp-source", *r.SMTPSource, "sink", "smtp-source")
		if !(r.RatioSMTPSource > 0) {
			t.Errorf("ratio to smtp-source %g", r.RatioSMTPSource)
		}
	}
	if r.Relay != nil {
		t.Error("a Postfix relay with durability default")
	}
	checkTable(t, rep, "### Throughput: 300 messages per run", 1)
	var out bytes.Buffer
	printBenchReport(&out, rep)
	for _, want := range []string{"| e2e / direct |", "| e2e / smtp-source |", "CPU ms per message and peak RSS MiB, by process:",
		"| end-to-end ", "### Capacity model"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("no %q in the report", want)
		}
	}
}

// TestBenchInProcess runs the earlier topology, everything in this
// process, with both durabilities.
func TestBenchInProcess(t *testing.T) {
	rep := benchRun(t, func(o *Options) {
		o.Topology, o.Messages, o.Runs, o.Durability, o.Concurrency, o.PoolSize = "inprocess", 200, 1, "both", 4, 2
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
		if len(r.EndToEnd.Processes) != 1 || r.EndToEnd.Processes[0].Role != "bench" {
			t.Errorf("in process, processes %+v, want the bench alone", r.EndToEnd.Processes)
		}
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
	checkProcs(t, "latency", phaseStats{Processes: r.Processes}, "server", "worker", "sink", "bench")
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
	checkProcs(t, "backlog", phaseStats{Processes: r.Processes}, "server", "worker", "sink")
	checkTable(t, rep, "### Backlog", 1)
}

// TestBenchCeiling measures one stream on one jetmail server and on a
// loopback cluster of three.
func TestBenchCeiling(t *testing.T) {
	rep := benchRun(t, func(o *Options) { o.Mode, o.Messages, o.Runs = "ceiling", 300, 1 })
	if len(rep.Ceiling) != 2 || rep.Ceiling[0].Replicas != 1 || rep.Ceiling[1].Replicas != 3 {
		t.Fatalf("ceiling rows %+v, want R1 and R3", rep.Ceiling)
	}
	for _, row := range rep.Ceiling {
		r := row.Runs[0]
		if r.Messages != 300 || !(r.Rate > 0) {
			t.Errorf("R%d: %d messages at %g msg/s", row.Replicas, r.Messages, r.Rate)
		}
		var nodes []string
		for _, ps := range r.Processes {
			if ps.Role == "server" {
				nodes = append(nodes, ps.Name)
				if !(ps.CPUMsPerMsg > 0) {
					t.Errorf("R%d: %s (%s) used no CPU", row.Replicas, ps.Name, ps.Node)
				}
			}
		}
		want := []string{"server"}
		if row.Replicas == 3 {
			want = []string{"follower 1", "follower 2", "leader"}
		}
		if strings.Join(nodes, ",") != strings.Join(want, ",") {
			t.Errorf("R%d: server processes %q, want %q", row.Replicas, nodes, want)
		}
	}
	checkTable(t, rep, "### Ceiling", 2)
}

// TestBenchPostfixRelay runs durability always with Postfix: smtp-source
// into the sink and a throwaway Postfix relay, which must be gone after.
func TestBenchPostfixRelay(t *testing.T) {
	if _, err := findPostfixTool("postfix"); err != nil {
		t.Skipf("Postfix is not installed, so no Postfix relay to measure: %v", err)
	}
	if _, err := findPostfixTool("smtp-source"); err != nil {
		t.Skipf("Postfix's smtp-source is not installed: %v", err)
	}
	if os.Geteuid() != 0 {
		t.Skip("a Postfix instance is started by root (postfix start); these tests do not run as root")
	}
	rep := benchRun(t, func(o *Options) {
		o.Messages, o.Runs, o.Durability, o.Postfix = 300, 1, "always", "require"
	})
	r := rep.Throughput[0].Runs[0]
	if r.SMTPSource == nil || r.Relay == nil {
		t.Fatalf("smtp-source %v, relay %v: want both; notes %q", r.SMTPSource, r.Relay, rep.Notes)
	}
	checkPhase(t, "Postfix relay", *r.Relay, 300)
	checkProcs(t, "Postfix relay", *r.Relay, "postfix", "sink", "smtp-source")
	if !(r.RatioRelay > 0) {
		t.Errorf("ratio to the relay %g", r.RatioRelay)
	}
	var out bytes.Buffer
	printBenchReport(&out, rep)
	if !strings.Contains(out.String(), "| Postfix relay ") || !strings.Contains(out.String(), "the Postfix relay") {
		t.Errorf("no Postfix relay in the report:\n%s", out.String())
	}
	if left := leftBehind(); len(left) > 0 {
		t.Errorf("left behind: %q", left)
	}
	if m, _ := filepath.Glob(filepath.Join(os.TempDir(), "jetmail-bench-postfix-*")); len(m) > 0 {
		t.Errorf("the relay's folders are left: %q", m)
	}
}

// TestServerCommand runs `jetmail server` as a process: it serves
// JetStream (and monitoring), exits 0 on SIGTERM and frees its port, and
// leaves the CPU profile that --cpu-profile (what `jetmail bench
// --server-arg` passes) asks for.
func TestServerCommand(t *testing.T) {
	port, err := freePort()
	if err != nil {
		t.Fatal(err)
	}
	addr := "127.0.0.1:" + strconv.Itoa(port)
	profile := filepath.Join(t.TempDir(), "server.prof")
	c, err := startChild("server", binary, []string{"server", "--addr", addr, "--data-dir", t.TempDir(),
		"--http-addr", "127.0.0.1:0", "--log-format", "json", "--cpu-profile", profile}, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.kill)
	ctx := t.Context()
	rec, err := c.waitFor(ctx, "NATS server started", 20*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if rec["url"] != "nats://"+addr {
		t.Errorf("logged url %v, want nats://%s", rec["url"], addr)
	}
	mon, _ := rec["monitoring_url"].(string)
	if res, err := http.Get(mon + "/jsz"); err != nil || res.StatusCode != 200 {
		t.Errorf("monitoring %q: %v %v", mon, res, err)
	} else {
		res.Body.Close()
	}
	nc, err := nats.Connect("nats://" + addr)
	if err != nil {
		t.Fatal(err)
	}
	js, _ := jetstream.New(nc)
	if _, err := js.CreateStream(ctx, jetstream.StreamConfig{Name: "T", Subjects: []string{"t"}}); err != nil {
		t.Fatalf("JetStream: %v", err)
	}
	if _, err := js.Publish(ctx, "t", []byte("x")); err != nil {
		t.Fatal(err)
	}
	nc.Close()
	if err := c.stop(15 * time.Second); err != nil {
		t.Fatalf("after SIGTERM: %v\n%s", err, c.logs.String())
	}
	if _, err := c.waitFor(ctx, "NATS server stopped", time.Second); err != nil {
		t.Error(err)
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatalf("port not free after the server stopped: %v", err)
	}
	ln.Close()
	// A pprof profile is gzip-compressed protobuf.
	if data, err := os.ReadFile(profile); err != nil || len(data) < 2 || data[0] != 0x1f || data[1] != 0x8b {
		t.Errorf("CPU profile %s: %d bytes, %v; want a gzip-compressed pprof profile", profile, len(data), err)
	}
}

// TestServerCommandUsage checks that contradictory cluster flags are usage
// errors (exit 2) and a taken port a runtime error (exit 1), both at once.
func TestServerCommandUsage(t *testing.T) {
	t.Parallel()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	for _, tc := range []struct {
		args []string
		code int
	}{
		{[]string{"--routes", "nats://127.0.0.1:6222"}, 2},
		{[]string{"--cluster-addr", "127.0.0.1:0", "--routes", "127.0.0.1:6222"}, 2},
		{[]string{"--addr", "localhost"}, 2},
		{[]string{"--max-payload", "0"}, 2},
		{[]string{"--addr", ln.Addr().String()}, 1},
	} {
		cmd := exec.Command(binary, append([]string{"server", "--data-dir", t.TempDir()}, tc.args...)...)
		out, _ := cmd.CombinedOutput()
		if cmd.ProcessState.ExitCode() != tc.code {
			t.Errorf("server %q: exit %d, want %d\n%s", tc.args, cmd.ProcessState.ExitCode(), tc.code, out)
		}
	}
}

// TestBenchExternalServer uses a NATS server of its own: the bench uses
// streams of its own there and deletes them afterwards.
func TestBenchExternalServer(t *testing.T) {
	url := jstest.Start(t).URL()
	rep := benchRun(t, func(o *Options) { o.NATSURL, o.Messages, o.Runs = url, 100, 1 })
	if len(rep.Throughput) != 1 || rep.Throughput[0].Durability != "server" || rep.Settings.Topology != "inprocess" {
		t.Fatalf("topology %s, rows %+v", rep.Settings.Topology, rep.Throughput)
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
		t.Skipf("Postfix's smtp-sink is not installed, so --sink postfix cannot run: %v", err)
	}
	rep := benchRun(t, func(o *Options) { o.Sink, o.Messages, o.Runs = "postfix", 200, 1 })
	r := rep.Throughput[0].Runs[0]
	checkPhase(t, "direct", r.Direct, 200)
	checkPhase(t, "end-to-end", r.EndToEnd, 200)
	checkProcs(t, "end-to-end", r.EndToEnd, "server", "worker", "sink", "bench")
}

// TestCPUReading checks the precision rule: fine when it agrees with
// coarse, coarse when threads ended in between.
func TestCPUReading(t *testing.T) {
	t.Parallel()
	a := cpuReading{coarse: 100 * time.Millisecond, fine: 104 * time.Millisecond, fineOK: true}
	b := cpuReading{coarse: 110 * time.Millisecond, fine: 109 * time.Millisecond, fineOK: true}
	if got := a.until(b); got != 5*time.Millisecond {
		t.Errorf("until = %s, want the fine 5ms", got)
	}
	b.fine = 50 * time.Millisecond // a thread ended
	if got := a.until(b); got != 10*time.Millisecond {
		t.Errorf("until = %s, want the coarse 10ms", got)
	}
	self := readCPU(os.Getpid())
	if !self.fineOK || self.fine <= 0 {
		t.Errorf("readCPU(self) = %+v", self)
	}
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
		"ceiling with NATS URL":    func(o *Options) { o.NATSURL, o.Mode = "nats://127.0.0.1:1", "ceiling" },
		"processes with NATS URL":  func(o *Options) { o.NATSURL, o.Topology, o.TopologySet = "nats://127.0.0.1:1", "processes", true },
		"topology":                 func(o *Options) { o.Topology = "threads" },
		"ceiling replicas":         func(o *Options) { o.CeilingReplicas = "1,7" },
		"postfix":                  func(o *Options) { o.Postfix = "maybe" },
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

// TestBenchLanes runs the lanes mode small: every lane's messages are sent
// once, urgent and normal ones arrive while bulk drains, and each lane has
// its delays.
func TestBenchLanes(t *testing.T) {
	rep := benchRun(t, func(o *Options) {
		o.Mode, o.LanesBacklog, o.UrgentRate, o.NormalRate, o.Duration, o.Runs = "lanes", 1500, 20, 50, time.Second, 1
	})
	if len(rep.Lanes) != 1 || len(rep.Lanes[0].Runs) != 1 {
		t.Fatalf("lanes rows %+v", rep.Lanes)
	}
	r := rep.Lanes[0].Runs[0]
	want := map[string]int{"urgent": 20, "normal": 50, "bulk": 1500}
	for _, l := range r.Lanes {
		if l.Messages != want[l.Lane] {
			t.Errorf("%s: %d messages, want %d", l.Lane, l.Messages, want[l.Lane])
		}
		checkLatency(t, "lanes "+l.Lane, l.Latency)
		if l.Lane != "bulk" && l.DuringWin == 0 {
			t.Errorf("%s: nothing sent during the window", l.Lane)
		}
	}
	if r.WindowSeconds < 0.9 || r.BulkShare <= 0 || r.BulkShare > 1 {
		t.Errorf("window %.2f s, bulk share %g", r.WindowSeconds, r.BulkShare)
	}
	checkTable(t, rep, "### Lanes:", 3)
}
