package cli

import (
	"context"
	"strings"
	"testing"
	"time"
)

// TestBenchTable runs the default mode as a user would (the jetmail
// binary as the server, worker and sink processes) and checks the tables
// it prints.
func TestBenchTable(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	r := jetmail(t, ctx, "", "bench", "-n", "200", "--runs", "1", "--size", "2KB,100KB", "--postfix", "off", "--jetmail-binary", binary)
	if r.code != 0 {
		t.Fatalf("exit %d\n%s", r.code, r.stderr)
	}
	for _, want := range []string{"topology processes", "| size ", "| direct msg/s |", "| end-to-end msg/s |", "| e2e / direct |", "| p99 ms |",
		"| worker(s) |", "| RSS worker |", "| 2KB (2,", "| 100KB (10", "Reproduce: jetmail bench --messages 200 --runs 1 --size 2KB,100KB --postfix off"} {
		if !strings.Contains(r.stdout, want) {
			t.Errorf("no %q in\n%s", want, r.stdout)
		}
	}
	// The earlier layout: everything in this process.
	r = jetmail(t, ctx, "", "bench", "-n", "200", "--runs", "1", "--topology", "inprocess", "--postfix", "off")
	if r.code != 0 {
		t.Fatalf("exit %d\n%s", r.code, r.stderr)
	}
	for _, want := range []string{"topology inprocess", "| ratio |", "| CPU s/1k e2e |", "| peak RSS MiB |"} {
		if !strings.Contains(r.stdout, want) {
			t.Errorf("no %q in\n%s", want, r.stdout)
		}
	}
}

func TestBenchUsage(t *testing.T) {
	t.Parallel()
	for _, args := range [][]string{
		{"--mode", "fast"},
		{"--size", "2XB"},
		{"--size", "10"},
		{"--durability", "sometimes"},
		{"--sync-always", "--durability", "default"},
		{"--nats-url", "nats://127.0.0.1:1", "--durability", "both"},
		{"--nats-url", "nats://127.0.0.1:1", "--mode", "backlog"},
		{"-n", "0"},
		{"--sink", "exim"},
		{"--rate", "0"},
		{"--topology", "threads"},
		{"--nats-url", "nats://127.0.0.1:1", "--topology", "processes"},
		{"--mode", "ceiling", "--ceiling-replicas", "2,9"},
		{"--postfix", "maybe"},
	} {
		r := jetmail(t, testCtx(t), "", append([]string{"bench"}, args...)...)
		if r.code != exitUsage {
			t.Errorf("bench %q: exit %d, want %d", args, r.code, exitUsage)
		}
	}
}
