package bench

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"
)

// The process topology: `jetmail server`, `jetmail worker` and `jetmail
// sink` processes started from the jetmail binary.

// startTimeout bounds how long a process may take to start.
const startTimeout = 30 * time.Second

// binary is the jetmail binary the processes run: --jetmail-binary, or
// this executable.
func (b *bencher) binary() (string, error) {
	if b.f.Binary != "" {
		return b.f.Binary, nil
	}
	exe, err := os.Executable()
	if err != nil {
		return "", fmt.Errorf("the jetmail binary to run: %w", err)
	}
	if strings.HasSuffix(exe, ".test") {
		return "", errors.New("this is a Go test binary, not jetmail: set Options.Binary (--jetmail-binary) or use --topology inprocess")
	}
	return exe, nil
}

// serverProc is a `jetmail server` process.
type serverProc struct {
	*child
	url     string
	dataDir string
}

// startServerProcs starts nodes `jetmail server` processes, each with a
// data folder of its own in a temporary folder: one stand-alone server, or
// a loopback cluster. cleanup stops them (recording a problem unless each
// exits 0) and removes the folder.
func (b *bencher) startServerProcs(ctx context.Context, durability string, nodes int) ([]*serverProc, func(), error) {
	bin, err := b.binary()
	if err != nil {
		return nil, nil, err
	}
	dir, err := os.MkdirTemp("", "jetmail-bench-")
	if err != nil {
		return nil, nil, err
	}
	if durability == "always" && onTmpfs(dir) {
		b.logf("warning: %s is on tmpfs, where fsync costs nothing; set TMPDIR to a folder on a disk", dir)
	}
	var procs []*serverProc
	stopAll := func(record bool) {
		for _, p := range procs {
			if err := p.stop(15 * time.Second); err != nil && record {
				b.problem("server %s: %v\n%s", p.name, err, p.logs.String())
			}
		}
		for _, p := range procs {
			b.noteWarnings(p.child)
		}
		procs = nil
	}
	cleanup := func() {
		stopAll(true)
		os.RemoveAll(dir)
	}
	// A cluster's route ports must be known before its nodes start; one
	// taken meanwhile makes a node fail, and then the cluster is started
	// again on other ports.
	for attempt := 1; ; attempt++ {
		procs, err = b.tryServerProcs(ctx, bin, dir, durability, nodes, attempt)
		if err == nil {
			return procs, cleanup, nil
		}
		stopAll(false)
		if attempt == 3 || ctx.Err() != nil {
			os.RemoveAll(dir)
			return nil, nil, err
		}
		b.logf("starting %d server(s) failed, trying again: %v", nodes, err)
	}
}

func (b *bencher) tryServerProcs(ctx context.Context, bin, dir, durability string, nodes, attempt int) ([]*serverProc, error) {
	var routes []string
	var clusterPorts []int
	if nodes > 1 {
		for range nodes {
			port, err := freePort()
			if err != nil {
				return nil, err
			}
			clusterPorts = append(clusterPorts, port)
			routes = append(routes, "nats://127.0.0.1:"+strconv.Itoa(port))
		}
	}
	var procs []*serverProc
	for i := range nodes {
		name := "server"
		if nodes > 1 {
			name = "n" + strconv.Itoa(i+1)
		}
		data := filepath.Join(dir, fmt.Sprintf("%s-%d", name, attempt))
		args := []string{"server", "--addr", "127.0.0.1:0", "--data-dir", data, "--log-format", "json", "--log-level", "info"}
		if durability == "always" {
			args = append(args, "--sync-always")
		}
		args = append(args, b.f.ServerArgs...)
		if nodes > 1 {
			args = append(args, "--server-name", name, "--cluster-name", "jmbench",
				"--cluster-addr", "127.0.0.1:"+strconv.Itoa(clusterPorts[i]), "--routes", strings.Join(routes, ","))
		}
		c, err := startChild(name, bin, args, nil, nil)
		if err != nil {
			return procs, err
		}
		procs = append(procs, &serverProc{child: c, dataDir: data})
	}
	for _, p := range procs {
		rec, err := p.waitFor(ctx, "NATS server started", startTimeout)
		if err != nil {
			return procs, err
		}
		url, _ := rec["url"].(string)
		if url == "" {
			return procs, fmt.Errorf("%s logged no url: %v", p.name, rec)
		}
		p.url = url
	}
	return procs, nil
}

// noteWarnings records the warnings a process logged, as a note.
func (b *bencher) noteWarnings(c *child) {
	if w := c.logs.warnings(); len(w) > 0 {
		b.note("%s logged %d line(s) at warn or above; the first: %s", c.name, len(w), w[0])
	}
}

// workerArgs are the flags of every `jetmail worker` process of a run.
func (b *bencher) workerArgs(natsURL, smtpURL string) []string {
	args := []string{"worker", "--nats-url", natsURL, "--smtp-url", smtpURL, "--http-addr", "127.0.0.1:0",
		"--concurrency", strconv.Itoa(b.f.Concurrency), "--smtp-pool-size", strconv.Itoa(b.f.PoolSize),
		"--prefetch", strconv.Itoa(b.plan.prefetch), "--grace-period", "10s",
		"--log-format", "json", "--log-level", "info", "--index-dir", filepath.Join(b.tmp, "index-"+strconv.Itoa(int(b.workerSeq.Add(1))))}
	return append(args, b.f.WorkerArgs...)
}

// startWorkerProcs starts --workers `jetmail worker` processes and waits
// until each consumes. stop sends them SIGTERM and waits (recording a
// problem unless each exits 0); it is idempotent.
func (b *bencher) startWorkerProcs(ctx context.Context, srv *benchServer, smtpURL string) ([]*child, func(), error) {
	bin, err := b.binary()
	if err != nil {
		return nil, nil, err
	}
	var procs []*child
	var once sync.Once
	stop := func() {
		once.Do(func() {
			var wg sync.WaitGroup
			for _, p := range procs {
				wg.Go(func() {
					if err := p.stop(30 * time.Second); err != nil {
						b.problem("%s: %v\n%s", p.name, err, p.logs.String())
					}
				})
			}
			wg.Wait()
			for _, p := range procs {
				b.noteWarnings(p)
			}
		})
	}
	for i := range b.f.Workers {
		c, err := startChild(fmt.Sprintf("worker-%d", i+1), bin, b.workerArgs(srv.url, smtpURL), nil, nil)
		if err != nil {
			stop()
			return nil, nil, err
		}
		procs = append(procs, c)
	}
	for _, p := range procs {
		if _, err := p.waitFor(ctx, "worker started", startTimeout); err != nil {
			for _, p := range procs {
				p.kill()
			}
			return nil, nil, err
		}
	}
	return procs, stop, nil
}

// sinkProc is a `jetmail sink --control` process: a line on its stdin
// makes it print its counters on stdout.
type sinkProc struct {
	c    *child
	addr string
	mu   sync.Mutex
	in   io.WriteCloser
	outF *os.File
	out  *bufio.Reader
	last int64
}

// startSinkProc starts `jetmail sink` on a free loopback port.
func startSinkProc(bin string) (*sinkProc, error) {
	inR, inW, err := os.Pipe()
	if err != nil {
		return nil, err
	}
	outR, outW, err := os.Pipe()
	if err != nil {
		inR.Close()
		inW.Close()
		return nil, err
	}
	c, err := startChild("sink", bin, []string{"sink", "--addr", "127.0.0.1:0", "--control"}, inR, outW)
	inR.Close()
	outW.Close()
	if err != nil {
		inW.Close()
		outR.Close()
		return nil, err
	}
	s := &sinkProc{c: c, in: inW, outF: outR, out: bufio.NewReader(outR)}
	type result struct {
		line string
		err  error
	}
	first := make(chan result, 1)
	go func() {
		line, err := s.out.ReadString('\n')
		first <- result{line, err}
	}()
	select {
	case r := <-first:
		addr, ok := strings.CutPrefix(strings.TrimSpace(r.line), "listening ")
		if r.err != nil {
			s.Close()
			return nil, fmt.Errorf("sink process: %w: %s", r.err, c.describe())
		}
		if !ok {
			s.Close()
			return nil, fmt.Errorf("sink process printed %q, not \"listening ADDR\": %s", r.line, c.describe())
		}
		s.addr = addr
	case <-time.After(startTimeout):
		s.Close()
		return nil, fmt.Errorf("sink process not listening after %s: %s", startTimeout, c.describe())
	}
	return s, nil
}

// URL returns the sink's smtp URL.
func (s *sinkProc) URL() string { return "smtp://" + s.addr + "?tls=none" }

// Addr returns the sink's address.
func (s *sinkProc) Addr() string { return s.addr }

// Messages asks the sink process for its count (the last one known if it
// does not answer).
func (s *sinkProc) Messages() int64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, err := io.WriteString(s.in, "\n"); err != nil {
		return s.last
	}
	_ = s.outF.SetReadDeadline(time.Now().Add(10 * time.Second))
	line, err := s.out.ReadString('\n')
	if err != nil {
		return s.last
	}
	for _, f := range strings.Fields(line) {
		if v, ok := strings.CutPrefix(f, "messages="); ok {
			if n, err := strconv.ParseInt(v, 10, 64); err == nil {
				s.last = n
			}
		}
	}
	return s.last
}

func (s *sinkProc) measured() *measured { return measureChild("sink", s.c) }

// Close ends the sink's input, which stops it, and waits for it.
func (s *sinkProc) Close() {
	s.mu.Lock()
	s.in.Close()
	s.mu.Unlock()
	select {
	case <-s.c.done:
	case <-time.After(5 * time.Second):
		s.c.kill()
	}
	s.outF.Close()
}
