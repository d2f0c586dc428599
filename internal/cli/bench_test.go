package cli

import (
	"context"
	"strings"
	"testing"
	"time"
)

// TestBenchTable runs the default mode as a user would and checks the
// table it prints.
func TestBenchTable(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	r := jetmail(t, ctx, "", "bench", "-n", "200", "--runs", "1", "--size", "2KB,100KB")
	if r.code != 0 {
		t.Fatalf("exit %d\n%s", r.code, r.stderr)
	}
	for _, want := range []string{"| size ", "| direct msg/s |", "| end-to-end msg/s |", "| ratio |", "| p99 ms |",
		"| CPU s/1k e2e |", "| peak RSS MiB |", "| 2KB (2,", "| 100KB (10", "Reproduce: jetmail bench --messages 200 --runs 1 --size 2KB,100KB"} {
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
	} {
		r := jetmail(t, testCtx(t), "", append([]string{"bench"}, args...)...)
		if r.code != exitUsage {
			t.Errorf("bench %q: exit %d, want %d", args, r.code, exitUsage)
		}
	}
}
