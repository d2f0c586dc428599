package bench

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"net"
	"os"
	"os/exec"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// ---- child processes ----

// child is a process the bench started: `jetmail server`, `jetmail
// worker`, `jetmail sink`, or one of Postfix's programs. It runs in a
// process group of its own (so that a ^C reaches the bench only, which
// then stops it in order) and is killed by the kernel if the bench dies
// (Pdeathsig), so that none outlives the bench.
type child struct {
	name string
	cmd  *exec.Cmd
	logs *lineLog // stderr
	done chan struct{}
	err  error // of Wait; read after done
}

// childEnv is this process's environment without the JETMAIL_* variables:
// the children get the bench's settings on the command line, not the
// user's.
func childEnv() []string {
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "JETMAIL_") {
			env = append(env, kv)
		}
	}
	return env
}

// startChild starts path with args. stdin and stdout may be nil; stderr
// is kept in the child's lineLog.
func startChild(name, path string, args []string, stdin io.Reader, stdout io.Writer) (*child, error) {
	c := &child{name: name, cmd: exec.Command(path, args...), logs: newLineLog(), done: make(chan struct{})}
	c.cmd.Env = childEnv()
	c.cmd.Stdin, c.cmd.Stdout, c.cmd.Stderr = stdin, stdout, c.logs
	c.cmd.SysProcAttr = childAttr()
	if err := c.cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s (%s): %w", name, path, err)
	}
	go func() { c.err = c.cmd.Wait(); close(c.done) }()
	return c, nil
}

// childAttr puts a child in a process group of its own and has the
// kernel kill it when the bench dies.
func childAttr() *syscall.SysProcAttr {
	a := &syscall.SysProcAttr{Setpgid: true}
	if runtime.GOOS == "linux" {
		a.Pdeathsig = syscall.SIGKILL
	}
	return a
}

func (c *child) pid() int { return c.cmd.Process.Pid }

// exited reports whether the process has ended.
func (c *child) exited() bool {
	select {
	case <-c.done:
		return true
	default:
		return false
	}
}

// describe is the exit status and the start of the standard error of an
// ended process, for error messages.
func (c *child) describe() string {
	st := "still running"
	if c.exited() {
		st = c.cmd.ProcessState.String()
	}
	return fmt.Sprintf("%s (pid %d) %s; its stderr:\n%s", c.name, c.pid(), st, strings.TrimSpace(c.logs.String()))
}

// stop sends SIGTERM and waits up to grace for the process to end, then
// kills its process group. It returns an error unless the process exited
// 0 within grace.
func (c *child) stop(grace time.Duration) error {
	if c.exited() {
		return c.exitError()
	}
	_ = c.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-c.done:
		return c.exitError()
	case <-time.After(grace):
		c.kill()
		return fmt.Errorf("%s (pid %d) still running %s after SIGTERM; killed", c.name, c.pid(), grace)
	}
}

func (c *child) exitError() error {
	if c.err != nil {
		return fmt.Errorf("%s (pid %d) exited with %w", c.name, c.pid(), c.err)
	}
	return nil
}

// kill kills the process group and waits for the process.
func (c *child) kill() {
	if c.exited() {
		return
	}
	_ = syscall.Kill(-c.pid(), syscall.SIGKILL)
	_ = c.cmd.Process.Kill()
	<-c.done
}

// lineLog keeps what a child writes to stderr: the first 64 KiB as text,
// and the lines that are JSON log records (the jetmail commands run with
// --log-format json), which callers can wait for.
type lineLog struct {
	mu      sync.Mutex
	text    bytes.Buffer
	partial []byte
	records []map[string]any
	changed chan struct{} // closed and replaced on every record
}

func newLineLog() *lineLog { return &lineLog{changed: make(chan struct{})} }

// Write keeps p.
func (l *lineLog) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if room := 64<<10 - l.text.Len(); room > 0 {
		l.text.Write(p[:min(len(p), room)])
	}
	l.partial = append(l.partial, p...)
	for {
		i := bytes.IndexByte(l.partial, '\n')
		if i < 0 {
			break
		}
		line := bytes.TrimSpace(l.partial[:i])
		l.partial = l.partial[i+1:]
		var rec map[string]any
		if len(line) > 0 && line[0] == '{' && json.Unmarshal(line, &rec) == nil && len(l.records) < 10000 {
			l.records = append(l.records, rec)
			close(l.changed)
			l.changed = make(chan struct{})
		}
	}
	if len(l.partial) > 1<<20 { // a line without end: not a log record
		l.partial = l.partial[:0]
	}
	return len(p), nil
}

// String returns the start of what was written.
func (l *lineLog) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.text.String()
}

// waitFor waits until a record has msg as its "msg", and returns it. It
// gives up when the process ends, ctx ends or timeout passes.
func (c *child) waitFor(ctx context.Context, msg string, timeout time.Duration) (map[string]any, error) {
	deadline := time.After(timeout)
	for seen := 0; ; {
		c.logs.mu.Lock()
		recs, changed := c.logs.records[seen:], c.logs.changed
		seen = len(c.logs.records)
		c.logs.mu.Unlock()
		for _, r := range recs {
			if r["msg"] == msg {
				return r, nil
			}
		}
		select {
		case <-changed:
		case <-c.done:
			return nil, fmt.Errorf("%s ended before logging %q: %s", c.name, msg, c.describe())
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-deadline:
			return nil, fmt.Errorf("%s did not log %q within %s: %s", c.name, msg, timeout, c.describe())
		}
	}
}

// benignWarnings are what the nodes of a cluster log while it forms
// (before the others listen, before a meta leader is elected) and when
// they stop (the meta snapshot): not worth a note.
var benignWarnings = []string{"Error trying to connect to route", "Waiting for routing to be established",
	"JetStream has not established contact with a meta leader", "Metalayer blocking snapshot"}

// warnings returns the records at level WARN or ERROR, but for
// benignWarnings.
func (l *lineLog) warnings() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []string
	for _, r := range l.records {
		msg, _ := r["msg"].(string)
		if slices.ContainsFunc(benignWarnings, func(b string) bool { return strings.Contains(msg, b) }) {
			continue
		}
		if lvl, _ := r["level"].(string); lvl == "WARN" || lvl == "ERROR" {
			// Level, message and attributes; not the time, so that the
			// same warning in every run makes one note.
			line := lvl + " " + msg
			for _, k := range slices.Sorted(maps.Keys(r)) {
				if k != "time" && k != "level" && k != "msg" {
					v, _ := json.Marshal(r[k])
					line += " " + k + "=" + string(v)
				}
			}
			out = append(out, line)
		}
	}
	return out
}

// freePort returns a loopback port that was free a moment ago (for the
// addresses that must be known before a process starts, such as cluster
// routes; the other processes pick their own and log them).
func freePort() (int, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, fmt.Errorf("find a free port: %w", err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port, nil
}

// portFree reports whether nothing listens on addr.
func portFree(addr string) bool {
	c, err := net.DialTimeout("tcp", addr, 200*time.Millisecond)
	if err != nil {
		return true
	}
	c.Close()
	return false
}

// ---- CPU and memory of processes ----

// clockTick is the unit of utime and stime in /proc/<pid>/stat (USER_HZ,
// 100 on every Linux architecture Go supports).
const clockTick = 10 * time.Millisecond

// cpuReading is the CPU time a process has used so far: coarse from
// utime+stime of /proc/<pid>/stat (in clock ticks, so truncated to 10 ms
// twice, but including threads that have ended), fine from the sum of
// the threads' /proc/<pid>/task/*/schedstat (nanoseconds, live threads
// only). Go processes never end threads, so fine is exact for them.
type cpuReading struct {
	coarse, fine time.Duration
	fineOK       bool
}

// until returns the CPU used between r and a later reading: the fine
// difference when it agrees with the coarse one within the latter's
// precision, else the coarse one.
func (r cpuReading) until(later cpuReading) time.Duration {
	dc := later.coarse - r.coarse
	if r.fineOK && later.fineOK {
		df := later.fine - r.fine
		if df >= 0 && df > dc-3*clockTick && df < dc+3*clockTick {
			return df
		}
	}
	return max(dc, 0)
}

// procStat reads the fields of /proc/<pid>/stat after the command name
// (field 3, the state, is index 0).
func procStat(pid int) ([]string, error) {
	data, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return nil, err
	}
	i := bytes.LastIndexByte(data, ')')
	if i < 0 {
		return nil, fmt.Errorf("/proc/%d/stat: no command name", pid)
	}
	return strings.Fields(string(data[i+1:])), nil
}

// ticks adds the clock-tick fields of stat (utime is field 14, index 11).
func ticks(stat []string, fields ...int) time.Duration {
	var t time.Duration
	for _, f := range fields {
		if i := f - 3; i < len(stat) {
			v, _ := strconv.ParseInt(stat[i], 10, 64)
			t += time.Duration(v) * clockTick
		}
	}
	return t
}

// readCPU reads the CPU time of process pid.
func readCPU(pid int) cpuReading {
	var r cpuReading
	if st, err := procStat(pid); err == nil {
		r.coarse = ticks(st, 14, 15)
	}
	dir := "/proc/" + strconv.Itoa(pid) + "/task"
	tasks, err := os.ReadDir(dir)
	if err != nil {
		return r
	}
	r.fineOK = true
	for _, t := range tasks {
		data, err := os.ReadFile(dir + "/" + t.Name() + "/schedstat")
		if err != nil {
			r.fineOK = false
			break
		}
		f := strings.Fields(string(data))
		if len(f) == 0 {
			r.fineOK = false
			break
		}
		ns, err := strconv.ParseInt(f[0], 10, 64)
		if err != nil {
			r.fineOK = false
			break
		}
		r.fine += time.Duration(ns)
	}
	return r
}

// sessionCPU is the CPU time of every process of session sid (a daemon
// such as Postfix's master and its children), with what the leader has
// reaped from children that ended (cutime and cstime): the CPU of a
// service whose processes come and go.
func sessionCPU(sid int) cpuReading {
	var r cpuReading
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return r
	}
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		st, err := procStat(pid)
		if err != nil || len(st) < 15 || st[3] != strconv.Itoa(sid) { // field 6: session
			continue
		}
		r.coarse += ticks(st, 14, 15)
		if pid == sid {
			r.coarse += ticks(st, 16, 17)
		}
	}
	return r
}

// sessionAlive returns the processes of session sid that have not ended.
func sessionAlive(sid int) []int {
	var out []int
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if st, err := procStat(pid); err == nil && len(st) > 3 && st[3] == strconv.Itoa(sid) && st[0] != "Z" {
			out = append(out, pid)
		}
	}
	return out
}

// selfCPU is the CPU time of this process (getrusage, microseconds).
func selfCPU() cpuReading {
	c := cpuTime()
	return cpuReading{coarse: c, fine: c, fineOK: true}
}

// resetPeakRSSOf resets VmHWM of process pid to its current RSS.
func resetPeakRSSOf(pid int) {
	_ = os.WriteFile("/proc/"+strconv.Itoa(pid)+"/clear_refs", []byte("5"), 0)
}

// measured is a process whose CPU and memory a phase reports.
type measured struct {
	name string // server, n2, worker-1, sink, bench, smtp-source, postfix
	role string // server, worker, sink, bench, smtp-source or postfix
	cpu  func() cpuReading
	// resetPeak resets the peak RSS at the start of a phase; peak reads
	// it in MiB at the end (0: not known).
	resetPeak func()
	peak      func() float64
	node      string // the cluster node (ceiling mode), when name is its part
}

// measurePID measures child process pid.
func measurePID(name, role string, pid int) *measured {
	p := strconv.Itoa(pid)
	return &measured{name: name, role: role, cpu: func() cpuReading { return readCPU(pid) },
		resetPeak: func() { resetPeakRSSOf(pid) }, peak: func() float64 { return peakRSSMiB(p) }}
}

// measureChild measures a child process.
func measureChild(role string, c *child) *measured { return measurePID(c.name, role, c.pid()) }

// measureSelf measures this process: the publisher and the result reader
// (and, in-process, everything).
func measureSelf() *measured {
	return &measured{name: "bench", role: "bench", cpu: selfCPU, resetPeak: func() { resetPeakRSS() },
		peak: func() float64 { return peakRSSMiB("self") }}
}

// measureExited measures a short-lived child (smtp-source) by what its
// wait status reports once it has ended: nothing before.
func measureExited(name, role string, cmd *exec.Cmd) *measured {
	usage := func() *syscall.Rusage {
		if cmd.ProcessState == nil {
			return nil
		}
		ru, _ := cmd.ProcessState.SysUsage().(*syscall.Rusage)
		return ru
	}
	return &measured{name: name, role: role,
		cpu: func() cpuReading {
			var d time.Duration
			if cmd.ProcessState != nil {
				d = cmd.ProcessState.UserTime() + cmd.ProcessState.SystemTime()
			}
			return cpuReading{coarse: d, fine: d, fineOK: true}
		},
		resetPeak: func() {},
		peak: func() float64 {
			if ru := usage(); ru != nil {
				return float64(ru.Maxrss) / 1024
			}
			return 0
		}}
}

// procStats is what one process used during a phase.
type procStats struct {
	Name        string  `json:"name"`
	Role        string  `json:"role"`
	CPUSeconds  float64 `json:"cpu_s"`
	CPUMsPerMsg float64 `json:"cpu_ms_per_msg"`
	PeakRSSMiB  float64 `json:"peak_rss_mib,omitempty"`
	Node        string  `json:"node,omitempty"`
}

// machineTimes is the first line of /proc/stat: the CPU time of all
// processors so far, in three parts.
type machineTimes struct {
	tasks time.Duration // user, nice, system: processes
	irq   time.Duration // irq, softirq: the kernel's, such as loopback packets
	steal time.Duration // taken by the hypervisor for other machines
	ok    bool
}

func machineCPU() machineTimes {
	data, err := os.ReadFile("/proc/stat")
	if err != nil {
		return machineTimes{}
	}
	line, _, _ := strings.Cut(string(data), "\n")
	f := strings.Fields(line)
	if len(f) < 9 || f[0] != "cpu" {
		return machineTimes{}
	}
	sum := func(fields ...int) time.Duration {
		var d time.Duration
		for _, i := range fields {
			v, _ := strconv.ParseInt(f[i], 10, 64)
			d += time.Duration(v) * clockTick
		}
		return d
	}
	return machineTimes{tasks: sum(1, 2, 3), irq: sum(6, 7), steal: sum(8), ok: true}
}

// meter measures wall time and the CPU and peak RSS of processes over a
// phase, and how busy the machine was with other processes.
type meter struct {
	start   time.Time
	procs   []*measured
	before  []cpuReading
	machine machineTimes
}

// startMeter resets the peak RSS of procs and reads their CPU time, then
// starts the clock.
func startMeter(procs ...*measured) *meter {
	m := &meter{}
	for _, p := range procs {
		if p != nil {
			m.procs = append(m.procs, p)
		}
	}
	for _, p := range m.procs {
		p.resetPeak()
		m.before = append(m.before, p.cpu())
	}
	m.machine = machineCPU()
	m.start = time.Now()
	return m
}

// add measures a process started during the phase from its start: all its
// CPU time, and its peak RSS since it started.
func (m *meter) add(p *measured) {
	m.procs = append(m.procs, p)
	m.before = append(m.before, cpuReading{fineOK: true})
}

// stats fills the time, rate, CPU and RSS of a phase that handled n
// messages and ended at end. CPUSeconds is the sum over the processes;
// PeakRSSMiB is the bench process's.
func (m *meter) stats(n int, end time.Time) phaseStats {
	secs := end.Sub(m.start).Seconds()
	st := phaseStats{Messages: n, Seconds: secs, Rate: float64(n) / secs}
	for i, p := range m.procs {
		cpu := m.before[i].until(p.cpu()).Seconds()
		ps := procStats{Name: p.name, Role: p.role, CPUSeconds: cpu, CPUMsPerMsg: cpu / float64(n) * 1000,
			PeakRSSMiB: p.peak(), Node: p.node}
		st.Processes = append(st.Processes, ps)
		st.CPUSeconds += cpu
		if p.role == "bench" {
			st.PeakRSSMiB = ps.PeakRSSMiB
		}
	}
	st.CPUPer1000 = st.CPUSeconds / float64(n) * 1000
	if now := machineCPU(); now.ok && m.machine.ok {
		// What the phase's processes did not use: other programs, the
		// kernel's interrupts, the hypervisor.
		wall := time.Since(m.start).Seconds()
		st.OtherCores = max(0, ((now.tasks-m.machine.tasks).Seconds()-st.CPUSeconds)/wall)
		st.IRQCores = (now.irq - m.machine.irq).Seconds() / wall
		st.StealCores = (now.steal - m.machine.steal).Seconds() / wall
	}
	return st
}

// errNoProc says the process topology cannot run here.
var errNoProc = errors.New("the process topology reads /proc: it needs Linux")
